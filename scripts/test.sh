#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU only, about 10 minutes on 2 cores).
# Extra arguments go to pytest (e.g. -k node, -x). The ROS 2 distribution is chosen as in
# scripts/env.sh (ROS_DISTRO=jazzy: .venv-jazzy, Python 3.12; default: Kilted, .venv).
# --ros-facing (first argument): only the tests that talk to ROS 2 (node, parameters, launch
# arguments, bags, play, live evaluation, fuzz and soak, colcon), as CI runs them on Jazzy.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ROS_FACING_TESTS=(
  test/test_node.py test/test_node_stress.py test/test_input_watch.py test/test_ros_params.py
  test/test_launch.py test/test_bag_io.py test/test_play.py test/test_eval_live.py
  test/test_stress.py test/test_image_codec.py test/test_colcon.py
)
if [ "${1:-}" = "--ros-facing" ]; then
  shift
  set -- "${ROS_FACING_TESTS[@]}" "$@"
fi
echo "[test] ROS 2 $SEG_ROS_DISTRO, $(python --version 2>&1), rclpy $(python -c 'from importlib.metadata import version; print(version("ros-rclpy"))')"
ruff check seg_perception test launch setup.py
exec python -m pytest "$@"
