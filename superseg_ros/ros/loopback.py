"""Keep DDS on this machine: loopback discovery plus a Fast DDS profile limited to 127.0.0.1 + SHM.

Call `apply_loopback_environment()` before `rclpy.init()`; the RMW reads these variables when the
first participant is created. This module does not import rclpy, so it is safe to import first.
"""
import os
from collections.abc import Mapping
from pathlib import Path

PROFILE_PATH = Path(__file__).resolve().with_name("fastdds_loopback.xml")

RANGE_VAR = "ROS_AUTOMATIC_DISCOVERY_RANGE"
PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
RMW_VAR = "RMW_IMPLEMENTATION"


def loopback_environment(base: Mapping | None = None) -> dict:
    """A copy of `base` (default: os.environ) with the loopback-only DDS settings."""
    env = dict(os.environ if base is None else base)
    # ROS_LOCALHOST_ONLY is ignored on Kilted; the discovery range is what confines it.
    env[RANGE_VAR] = "LOCALHOST"
    env[PROFILE_VAR] = str(PROFILE_PATH)
    # The profile is a Fast DDS file, so default to Fast DDS but respect an explicit choice.
    env.setdefault(RMW_VAR, "rmw_fastrtps_cpp")
    return env


def apply_loopback_environment() -> None:
    """Set the loopback settings in os.environ (in place). Must run before rclpy.init()."""
    os.environ.update(loopback_environment())


def require_loopback(env: Mapping | None = None) -> None:
    """Raise RuntimeError unless `env` (default: os.environ) keeps DDS on loopback."""
    env = os.environ if env is None else env
    problems = []
    if env.get(RANGE_VAR) != "LOCALHOST":
        problems.append(f"{RANGE_VAR} is {env.get(RANGE_VAR)!r}, need 'LOCALHOST'")
    profile = env.get(PROFILE_VAR)
    if not profile:
        problems.append(f"{PROFILE_VAR} is not set")
    elif not Path(profile).is_file():
        problems.append(f"{PROFILE_VAR} points to a missing file: {profile}")
    if problems:
        raise RuntimeError(
            "refusing to start ROS: DDS traffic must stay on loopback (" + "; ".join(problems)
            + "). Call superseg_ros.ros.loopback.apply_loopback_environment() before "
            f"rclpy.init(), or export {RANGE_VAR}=LOCALHOST {PROFILE_VAR}={PROFILE_PATH}")
