"""Stream processors (faust): per-agent metrics windows and training examples. Filled in by the streams issue."""

__all__: list[str] = []
