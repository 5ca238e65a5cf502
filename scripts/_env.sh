# Sourced by scripts/serve and scripts/test: create or reuse .venv at the repo root and install only
# what changed since the last install (a stamp holds the hash of requirements.txt and pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.samlabel-install"
want="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[samlabel] creating $VENV (first install is large: ~8 GB, ~6 min)" >&2
  python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[samlabel] installing requirements into $VENV" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/requirements.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e "$ROOT"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"   # `monailabel` runs `python -m monailabel.main` with the python on PATH
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
cd "$ROOT"
