"""launch/superseg.launch.py: loaded with the real launch API when it is installed (a ROS
distribution), else against a minimal stand-in of it (the PyPI wheels have no `launch`); either
way every executable and file it names must exist in the built workspace."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

import ros_helpers
from superseg_ros.config import read_parameters
from superseg_ros.ros.parameters import NODE_NAME, flatten, node_settings

LAUNCH_FILE = ros_helpers.REPO / "launch" / "superseg.launch.py"


class Recorded:
    """Stands in for a launch action or substitution and remembers how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_in_launch_api(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": Recorded},
        "launch.actions": {"DeclareLaunchArgument": Recorded},
        "launch.conditions": {"IfCondition": Recorded},
        "launch.substitutions": {"LaunchConfiguration": Recorded},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Recorded},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def load_description():
    spec = importlib.util.spec_from_file_location("superseg_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def test_launch_file_with_the_real_launch_api():
    pytest.importorskip("launch_ros", reason="ros2 launch is not installed (PyPI wheels)")
    from launch import LaunchDescription
    assert isinstance(load_description(), LaunchDescription)


def test_everything_the_launch_file_names_exists_in_the_workspace(monkeypatch):
    ros_helpers.require_workspace()
    stand_in_launch_api(monkeypatch)
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    entities = load_description().args[0]
    arguments = {e.args[0]: e.kwargs.get("default_value") for e in entities
                 if "default_value" in e.kwargs}
    nodes = {e.kwargs["executable"]: e for e in entities if "executable" in e.kwargs}

    # the node: the executable `ros2 run` finds, with the parameter file it is given
    node = nodes["superseg_node"]
    assert node.kwargs["package"] == "superseg_ros"
    executable = Path(get_package_prefix("superseg_ros")) / "lib" / "superseg_ros" / "superseg_node"
    assert executable.is_file(), "setup.cfg must install console scripts to lib/superseg_ros"
    config = Path(arguments["config"])
    assert config == Path(get_package_share_directory("superseg_ros")) / "config" / "superseg.yaml"
    assert config.is_file()
    node_settings(flatten(read_parameters(config, NODE_NAME)))  # the installed file is valid
    remapped = {pair[0] for pair in node.kwargs["remappings"]}
    assert {"image", "image/compressed", "camera_info"} <= remapped

    # RViz and its config, installed next to the parameter file
    rviz_config = Path(nodes["rviz2"].kwargs["arguments"][1])
    assert rviz_config.is_file() and rviz_config.parent == config.parent
    overlay_topics = {"/superseg/overlay", "/superseg/mask"}
    assert all(topic in rviz_config.read_text() for topic in overlay_topics)
