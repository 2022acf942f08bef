#!/usr/bin/env bash
# import-linter needs the installed package layout (contracts/ → smolit/contracts/ ...). The repository root's own
# smolit/ folder shadows it, so lint a throwaway non-editable install from outside the checkout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"; rm -rf "$root/build"' EXIT
"$root/.venv/bin/python" -m pip install -q --no-deps --target "$tmp/site" "$root" 2>/dev/null
cd "$tmp" && PYTHONPATH="$tmp/site" "$root/.venv/bin/lint-imports" "$root/pyproject.toml"
