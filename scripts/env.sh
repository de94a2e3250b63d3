# Sourced by the other scripts: create or reuse .venv and install the pinned dependencies.
# A second run only compares a hash and installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEG_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "seg_perception needs Python 3.11 (found $("$PYTHON_BIN" --version 2>&1)); set PYTHON=..." >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$(cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.seg_stamp" 2>/dev/null || true)" != "$STAMP" ]; then
  echo "[setup] installing pinned dependencies into $VENV (first run: several minutes, ~6 GB)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
  # type stubs only: the real tensorrt wheel needs NVIDIA's index and a GPU
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs==10.13.0.35.1"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  echo "$STAMP" > "$VENV/.seg_stamp"
fi
export PATH="$VENV/bin:$PATH"
# DDS traffic of demos and tests stays on this machine unless the caller chose otherwise
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
cd "$ROOT"
