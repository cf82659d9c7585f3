"""The node's parameters: one nested table of defaults, validated with clear errors.

ROS flattens nested YAML into dotted names (`extractor.max_keypoints`); the same table serves the
node, the YAML file in config/ and the `superseg-node` entry point. No rclpy import here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..config import ConfigError, flatten, merge_config, require_choice, set_dotted
from ..extractor import DEFAULT_EXTRACTOR_CONFIG
from .launch_plan import NODE_NAME  # noqa: F401  (re-exported)

NODE_DEFAULTS = {
    "model": "",              # checkpoint path; "" = the bundled model; "random" = untrained
    "device": "auto",         # auto | cpu | cuda
    "max_side": 0,            # run the network on a copy whose longer side is at most this (0 = off)
    "scale": 1.0,             # or on a copy scaled by this factor; keypoints come back at full size
    "use_compressed": False,  # subscribe to image/compressed (sensor_msgs/CompressedImage)
    "sync": {
        "queue_size": 10,             # per-input queue of the approximate-time synchroniser
        "slop": 0.05,                 # s; max stamp difference of a matched Image/CameraInfo pair
        "camera_info_timeout": 2.0,   # s of images without any CameraInfo before running without it
    },
    "publish": {
        "keypoints": True, "descriptors": True, "stability_mask": True,
        "mask_image": True, "group_image": True, "overlay": True,
    },
    "qos": {
        "profile": "sensor_data",  # input subscriptions: sensor_data (best effort) | reliable
        "depth": 5,
    },
    "diagnostics_period": 1.0,     # s between /diagnostics messages
    "extractor": dict(DEFAULT_EXTRACTOR_CONFIG),
}

# Safe to change while running: they only affect post-processing or what is published.
RUNTIME_PREFIXES = ("extractor.", "publish.", "max_side", "scale")


def unflatten(flat: Mapping[str, Any]) -> dict:
    nested: dict = {}
    for name, value in flat.items():
        set_dotted(nested, name, value, where=f"parameter '{name}'")
    return nested


def node_settings(given: Mapping[str, Any]) -> dict:
    """Dotted parameter values (or a nested mapping) -> validated nested settings."""
    nested = unflatten(given) if any("." in k for k in given) else dict(given)
    settings = merge_config(NODE_DEFAULTS, nested, where=NODE_NAME)
    values = flatten(settings)
    for name, default in flatten(NODE_DEFAULTS).items():
        # merge_config lets null through for any type; a number must be a finite number
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            value = values.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number (like {default!r}), "
                                  f"got {value!r}")
    require_choice(settings["device"], ("auto", "cpu", "cuda"), "device")
    require_choice(settings["qos"]["profile"], ("sensor_data", "reliable"), "qos.profile")
    for name in ("sync.queue_size", "qos.depth"):
        group, key = name.split(".")
        if settings[group][key] < 1:
            raise ConfigError(f"{name} must be >= 1, got {settings[group][key]}")
    for name in ("sync.slop", "sync.camera_info_timeout"):
        group, key = name.split(".")
        if settings[group][key] < 0:
            raise ConfigError(f"{name} must be >= 0, got {settings[group][key]}")
    if settings["diagnostics_period"] <= 0:
        raise ConfigError("diagnostics_period must be > 0")
    return settings


def runtime_changeable(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in RUNTIME_PREFIXES)


def ros_builtin_parameter(name: str) -> bool:
    """Parameters rclpy itself declares on every node (they vary by distribution)."""
    return name in ("use_sim_time", "start_type_description_service") or \
        name.startswith("qos_overrides.")


def parameter_files(argv) -> list[str]:
    """The `--params-file FILE` paths inside the `--ros-args ... [--]` sections of a command
    line, in order (rcl applies them in this order, later values winning)."""
    files, in_ros_args, argv = [], False, list(argv)
    for i, arg in enumerate(argv):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and i + 1 < len(argv):
            files.append(argv[i + 1])
    return files
