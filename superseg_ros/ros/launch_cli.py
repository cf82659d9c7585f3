"""superseg-launch: what `ros2 launch superseg_ros superseg.launch.py` does, without ros2 launch.

    superseg-launch [--config config/superseg.yaml] [--model PATH|random] [--namespace NS]
                    [--image /camera/image_raw] [--camera-info /camera/camera_info]
                    [--param name:=value ...]

Reads the same parameter file as the launch file, the way the node will (the sections that
match its namespace), checks it before starting (an unknown key, a wrong type or a file with no
section for the node exits 2 naming it), then runs superseg_node in this process with the
arguments launch_ros would give it (superseg_ros.ros.launch_plan).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, read_parameters
from .launch_plan import NodeLaunch
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="superseg-launch", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=default_config())
    p.add_argument("--model", help="checkpoint path or 'random' (overrides the config's)")
    p.add_argument("--namespace", default="")
    p.add_argument("--image", help="remap the image input to this topic")
    p.add_argument("--camera-info", help="remap the camera_info input to this topic")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="override one parameter, e.g. extractor.max_keypoints:=500")
    return p.parse_args(argv)


def node_launch(args) -> NodeLaunch:
    """What the launch file would start for the same arguments."""
    return NodeLaunch(str(args.config), args.model or "", args.namespace,
                      args.image or "image", args.camera_info or "camera_info")


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = node_launch(args)
    overrides = [a for item in args.param for a in ("-p", item)]
    try:
        given = flatten(read_parameters(args.config, NODE_NAME, args.namespace))
        if plan.model:
            given["model"] = plan.model
        node_settings(given)
    except ConfigError as exc:
        print(f"superseg-launch: error: {exc}", file=sys.stderr)
        return 2
    from .node import main as node_main  # imports rclpy: only once the config is known good

    return node_main(sys.argv[:1] + plan.ros_arguments() + overrides)


if __name__ == "__main__":
    sys.exit(main())
