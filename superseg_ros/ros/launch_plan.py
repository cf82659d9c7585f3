"""What starting superseg_node means, in one place for `ros2 launch superseg_ros superseg.launch.py`
and `superseg-launch` (which runs the same node without ros2 launch), so the two cannot disagree.

No rclpy, launch or torch import here: the launch file turns a NodeLaunch into launch_ros actions, and
superseg-launch into the `--ros-args` that launch_ros would pass.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import absolute_namespace

NODE_NAME = "superseg_node"  # here, not in parameters.py: the launch file must not import torch

# The node's outputs that config/superseg.rviz displays (absolute there, for a node without
# namespace).
RVIZ_TOPIC = re.compile(r"^(\s*Value: )/(superseg/\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class NodeLaunch:
    config: str                 # parameter file
    model: str = ""             # "" = whatever the parameter file says (else the bundled model)
    namespace: str = ""         # "" = none
    image: str = "image"        # topic the `image` input is remapped to
    camera_info: str = "camera_info"

    @property
    def namespace_path(self) -> str:
        """'' or '/front' (what `-r __ns:=` needs)."""
        return absolute_namespace(self.namespace)

    def parameters(self) -> list:
        """The parameter file, then only what the user set: an unset `model` must not override
        the file's with ''."""
        return [self.config] + ([{"model": self.model}] if self.model else [])

    def remappings(self) -> list[tuple[str, str]]:
        return [("image", self.image), ("image/compressed", f"{self.image}/compressed"),
                ("camera_info", self.camera_info)]

    def ros_arguments(self) -> list[str]:
        """The command line launch_ros builds for this node (parameter dicts as `-p`)."""
        args = ["--ros-args", "-r", f"__node:={NODE_NAME}"]
        if self.namespace_path:
            args += ["-r", f"__ns:={self.namespace_path}"]
        for item in self.parameters():
            if isinstance(item, dict):
                args += [a for name, value in item.items() for a in ("-p", f"{name}:={value}")]
            else:
                args += ["--params-file", str(item)]
        for old, new in self.remappings():
            args += ["-r", f"{old}:={new}"]
        return args

    def rviz_config(self, template: str | Path) -> Path:
        """config/superseg.rviz as is without a namespace; else a copy (in the temp folder)
        whose displays show this node's namespaced topics."""
        if not self.namespace_path:
            return Path(template)
        text = RVIZ_TOPIC.sub(lambda m: f"{m[1]}{self.namespace_path}/{m[2]}",
                              Path(template).read_text())
        name = self.namespace_path.strip("/").replace("/", "_")
        with tempfile.NamedTemporaryFile("w", prefix=f"superseg_{name}_", suffix=".rviz",
                                         delete=False) as f:
            f.write(text)
        return Path(f.name)
