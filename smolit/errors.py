"""Errors the CLI turns into one clear line and a non-zero exit code (no traceback)."""


class SetupError(RuntimeError):
    """Something the user must fix: an unreachable address, a missing setting, a port in use."""
