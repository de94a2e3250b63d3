#!/usr/bin/env bash
# The main job: synthetic bag -> seg_node (own process) -> recorded outputs + contact sheet.
# Extra arguments go to `seg-perception demo` (see --help).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec seg-perception demo "$@"
