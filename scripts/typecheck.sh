#!/usr/bin/env bash
# mypy on the modules listed in pyproject [tool.mypy]. Like lint-imports.sh it checks a throwaway non-editable install,
# because the repository's own folders (contracts/, infra/ ...) only become smolit.* once installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"; rm -rf "$root/build"' EXIT
"$root/.venv/bin/python" -m pip install -q --no-deps --target "$tmp/site" "$root" 2>/dev/null
mypy="$root/.venv/bin/mypy"
[ -x "$mypy" ] || mypy="$(command -v mypy)"
cd "$tmp/site" && "$mypy" --config-file "$root/pyproject.toml" --python-executable "$root/.venv/bin/python" \
  --cache-dir "$root/.mypy_cache"
