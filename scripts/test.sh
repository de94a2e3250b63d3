#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU only, about 10 minutes on 2 cores).
# Extra arguments go to pytest (e.g. -k node, -x).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check seg_perception test launch
exec python -m pytest "$@"
