"""superseg-launch: what `ros2 launch superseg_ros superseg.launch.py` does, without ros2 launch.

    superseg-launch [--config config/superseg.yaml] [--model PATH|random] [--namespace NS]
                    [--image /camera/image_raw] [--camera-info /camera/camera_info]
                    [--param name:=value ...]

Reads the same parameter file as the launch file, checks it before starting (an unknown key or
a wrong type exits 2 naming it), then runs superseg_node in this process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, read_parameters
from .parameters import NODE_NAME, flatten, node_settings


def default_config() -> Path:
    candidates = [Path(__file__).resolve().parents[2] / "config" / "superseg.yaml"]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("superseg_ros")) / "config"
                          / "superseg.yaml")
    except Exception:  # not installed in a ROS workspace
        pass
    return next((p for p in candidates if p.is_file()), candidates[0])


def ros_arguments(args) -> list[str]:
    ros_args = ["--ros-args", "--params-file", str(args.config)]
    if args.namespace:
        ros_args += ["-r", f"__ns:=/{args.namespace.strip('/')}"]
    for name, topic in (("image", args.image), ("camera_info", args.camera_info)):
        if topic:
            ros_args += ["-r", f"{name}:={topic}"]
            if name == "image":
                ros_args += ["-r", f"image/compressed:={topic}/compressed"]
    if args.model is not None:
        ros_args += ["-p", f"model:={args.model}"]
    for item in args.param:
        ros_args += ["-p", item]
    return ros_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="superseg-launch", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=default_config())
    p.add_argument("--model", help="checkpoint path or 'random' (overrides the config)")
    p.add_argument("--namespace", default="")
    p.add_argument("--image", help="remap the image input to this topic")
    p.add_argument("--camera-info", help="remap the camera_info input to this topic")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="override one parameter, e.g. extractor.max_keypoints:=500")
    args = p.parse_args(argv)
    try:
        given = flatten(read_parameters(args.config, NODE_NAME))
        if args.model is not None:
            given["model"] = args.model
        node_settings(given)
    except ConfigError as exc:
        print(f"superseg-launch: error: {exc}", file=sys.stderr)
        return 2
    from .node import main as node_main  # imports rclpy: only once the config is known good

    return node_main(sys.argv[:1] + ros_arguments(args))


if __name__ == "__main__":
    sys.exit(main())
