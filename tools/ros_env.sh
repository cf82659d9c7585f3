#!/bin/sh
# Usage: tools/ros_env.sh CMD [ARGS...]
# Runs CMD in this repository's ROS 2 environment: .venv (the ROS wheels), the colcon workspace in
# install/ (`make build`), and DDS confined to loopback (the machine's network rule).
# No `set -e`: colcon's setup scripts are not written for it.
ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 2
VENV="$ROOT/.venv"
if [ ! -f "$ROOT/install/setup.sh" ]; then
    echo "tools/ros_env.sh: $ROOT/install/setup.sh is missing; run 'make build' first" >&2
    exit 2
fi

export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
# The ROS wheels live in the venv; colcon's setup.sh prepends the workspace but does not chain
# back to the venv, so it must already be on AMENT_PREFIX_PATH.
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VENV"
# colcon's setup.sh reads COLCON_CURRENT_PREFIX when sourced from POSIX sh (no way to find itself).
COLCON_CURRENT_PREFIX="$ROOT/install"
. "$ROOT/install/setup.sh" || exit 2
unset COLCON_CURRENT_PREFIX
# --symlink-install puts build/superseg_ros (a farm of symlinks) first on PYTHONPATH; put the
# source tree itself first so `superseg_ros.__file__` is the file you edit.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Loopback-only DDS (same values as superseg_ros.ros.loopback.loopback_environment()).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/superseg_ros/ros/fastdds_loopback.xml"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"

exec "$@"
