# Sourced by the other scripts: create or reuse the virtual environment of the chosen ROS 2
# distribution and install its pinned dependencies. A second run only compares a hash and
# installs nothing.
#
#   ROS_DISTRO unset or kilted  .venv        Python 3.11  requirements.txt        (the default)
#   ROS_DISTRO=jazzy            .venv-jazzy  Python 3.12  requirements-jazzy.txt
#
# SEG_ROS_DISTRO, when set, wins over ROS_DISTRO; SEG_VENV and PYTHON override the folder and the
# interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SEG_DISTRO="${SEG_ROS_DISTRO:-${ROS_DISTRO:-kilted}}"
case "$SEG_DISTRO" in
  kilted) PY_VERSION=3.11; REQUIREMENTS="$ROOT/requirements.txt"; DEFAULT_VENV="$ROOT/.venv" ;;
  jazzy) PY_VERSION=3.12; REQUIREMENTS="$ROOT/requirements-jazzy.txt"; DEFAULT_VENV="$ROOT/.venv-jazzy" ;;
  *)
    from=ROS_DISTRO
    [ -z "${SEG_ROS_DISTRO:-}" ] || from=SEG_ROS_DISTRO
    echo "seg_perception's pip route supports ROS 2 kilted (default) and jazzy, not" \
      "$from=$SEG_DISTRO; set SEG_ROS_DISTRO=kilted or jazzy" >&2
    exit 2 ;;
esac
VENV="${SEG_VENV:-$DEFAULT_VENV}"

# the first interpreter of the wanted version that runs (a pyenv shim of a version that is not
# selected exists but does not run)
find_python() {
  local want="$1" cand candidates
  if [ -n "${PYTHON:-}" ]; then
    candidates=("$PYTHON")
  else
    candidates=("python$want" "$(command -v pyenv >/dev/null && pyenv root)/versions/$want"*/bin/"python$want"
      "/usr/local/bin/python$want" "/usr/bin/python$want" python3)
  fi
  for cand in "${candidates[@]}"; do
    if "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}
if [ ! -x "$VENV/bin/python" ]; then
  if ! PYTHON_BIN="$(find_python "$PY_VERSION")"; then
    why="none found that runs"
    [ -z "${PYTHON:-}" ] || why="PYTHON=$PYTHON is another version or does not run"
    echo "seg_perception on ROS 2 $SEG_DISTRO needs Python $PY_VERSION ($why); set PYTHON=..." >&2
    exit 2
  fi
  echo "[setup] creating virtual environment $VENV (ROS 2 $SEG_DISTRO, $("$PYTHON_BIN" --version 2>&1))"
  "$PYTHON_BIN" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PY_VERSION'.split('.'))))"; then
  echo "$VENV runs $("$VENV/bin/python" --version 2>&1), ROS 2 $SEG_DISTRO needs Python $PY_VERSION: remove it" >&2
  exit 2
fi
STAMP="$(cat "$REQUIREMENTS" "$ROOT/setup.py" "$ROOT/setup.cfg" "$ROOT/package.xml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.seg_stamp" 2>/dev/null || true)" != "$STAMP" ]; then
  echo "[setup] installing pinned dependencies into $VENV (first run: several minutes, ~6 GB)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  # type stubs only: the real tensorrt wheel needs NVIDIA's index and a GPU
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "tensorrt-stubs==10.13.0.35.1"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  echo "$STAMP" > "$VENV/.seg_stamp"
fi
export PATH="$VENV/bin:$PATH"
export SEG_ROS_DISTRO="$SEG_DISTRO"
# DDS traffic of demos and tests stays on this machine unless the caller chose otherwise
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
cd "$ROOT"
