"""launch/superseg.launch.py and superseg-launch: loaded with the real launch API when it is
installed (a ROS distribution), else against a minimal stand-in of it (the PyPI wheels have no
`launch`); every executable and file it names must exist in the built workspace, and the launch
file must start the node exactly as superseg-launch does. Parameter files are matched to the node
the way rcl does (checked against rclpy itself)."""

import importlib.util
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ros_helpers
from superseg_ros.config import ConfigError, read_parameters
from superseg_ros.ros import launch_cli
from superseg_ros.ros.launch_plan import NodeLaunch
from superseg_ros.ros.parameters import NODE_NAME, flatten, node_settings, parameter_files

LAUNCH_FILE = ros_helpers.REPO / "launch" / "superseg.launch.py"


class Recorded:
    """Stands in for a launch action or substitution and remembers how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_in_launch_api(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": Recorded},
        "launch.actions": {"DeclareLaunchArgument": Recorded, "OpaqueFunction": Recorded},
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


class LaunchContext:
    """What OpaqueFunction's function reads: the launch arguments as the user gave them, over
    the declared defaults (what DeclareLaunchArgument puts there)."""

    def __init__(self, description, **given):
        defaults = {e.args[0]: e.kwargs["default_value"] for e in description.args[0]
                    if "default_value" in e.kwargs}
        self.launch_configurations = {**defaults, **given}


def launched_nodes(monkeypatch, **given) -> dict:
    """{executable: Recorded Node} that the launch file starts for these launch arguments."""
    stand_in_launch_api(monkeypatch)
    description = load_description()
    opaque = [e for e in description.args[0] if "function" in e.kwargs]
    assert len(opaque) == 1
    actions = opaque[0].kwargs["function"](LaunchContext(description, **given))
    return {a.kwargs["executable"]: a for a in actions}


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
    nodes = launched_nodes(monkeypatch, rviz="true")

    # the node: the executable `ros2 run` finds, with the parameter file it is given
    node = nodes["superseg_node"]
    assert node.kwargs["package"] == "superseg_ros"
    executable = Path(get_package_prefix("superseg_ros")) / "lib" / "superseg_ros" / "superseg_node"
    assert executable.is_file(), "setup.cfg must install console scripts to lib/superseg_ros"
    config = Path(arguments["config"])
    assert node.kwargs["parameters"] == [str(config)]
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


# --- the launch file and superseg-launch agree ------------------------------------------------


@pytest.mark.parametrize("given", [
    {},
    {"model": "random"},
    {"namespace": "front", "image": "/cam/image_raw", "camera_info": "/cam/camera_info"},
    {"config": "/tmp/my.yaml", "namespace": "/a/b/", "model": "/m/x.pt"},
])
def test_launch_file_starts_the_node_as_superseg_launch_does(monkeypatch, given):
    ros_helpers.require_workspace()
    node = launched_nodes(monkeypatch, **given)["superseg_node"]
    cli_args = [f"--{k.replace('_', '-')}={v}" for k, v in given.items()]
    plan = launch_cli.node_launch(launch_cli.parse_args(cli_args))
    if "config" not in given:  # each finds the installed (or source) config/superseg.yaml
        assert Path(node.kwargs["parameters"][0]).read_text() == Path(plan.config).read_text()
        plan = NodeLaunch(node.kwargs["parameters"][0], plan.model, plan.namespace, plan.image,
                          plan.camera_info)
    assert node.kwargs["parameters"] == plan.parameters()
    assert node.kwargs["remappings"] == plan.remappings()
    assert (node.kwargs["namespace"] or "") == plan.namespace_path
    assert node.kwargs["name"] == NODE_NAME


def test_model_overrides_the_parameter_file_only_when_given(monkeypatch):
    ros_helpers.require_workspace()
    unset = launched_nodes(monkeypatch)["superseg_node"].kwargs["parameters"]
    assert not any(isinstance(p, dict) for p in unset), "model:='' would override the file's"
    given = launched_nodes(monkeypatch, model="random")["superseg_node"].kwargs["parameters"]
    assert given[1:] == [{"model": "random"}]
    assert "model:=" not in " ".join(NodeLaunch("c.yaml").ros_arguments())
    assert NodeLaunch("c.yaml", model="random").ros_arguments()[-8:-6] == ["-p", "model:=random"]


def test_rviz_shows_the_namespaced_topics(monkeypatch):
    ros_helpers.require_workspace()
    plain = launched_nodes(monkeypatch, rviz="true")["rviz2"].kwargs["arguments"][1]
    assert "Value: /superseg/overlay" in Path(plain).read_text()
    rviz = launched_nodes(monkeypatch, rviz="true", namespace="front")["rviz2"]
    text = Path(rviz.kwargs["arguments"][1]).read_text()
    topics = re.findall(r"Value: (/\S*superseg/\S+)", text)
    assert sorted(topics) == ["/front/superseg/groups", "/front/superseg/mask",
                              "/front/superseg/overlay"]
    assert "rviz2" not in launched_nodes(monkeypatch)  # rviz:=false (default) starts none


def test_package_xml_declares_what_the_node_and_launch_file_use():
    root = ET.parse(ros_helpers.REPO / "package.xml").getroot()
    declared = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    sources = [*(ros_helpers.REPO / "superseg_ros").rglob("*.py"), LAUNCH_FILE]
    used = set()
    for path in sources:
        used |= set(re.findall(r"^\s*(?:from|import) (\w+_(?:msgs|interfaces))\b",
                               path.read_text(), re.MULTILINE))
    used |= set(re.findall(r'package="(\w+)"', LAUNCH_FILE.read_text()))
    rviz = (ros_helpers.REPO / "config" / "superseg.rviz").read_text()
    used |= set(re.findall(r"Class: (\w+)/", rviz))
    used |= {"rclpy", "builtin_interfaces", "std_msgs"}  # rclpy itself; message headers
    used.discard("superseg_ros")
    assert used <= declared, f"missing from package.xml: {sorted(used - declared)}"


# --- parameter files are matched to the node as rcl matches them ----------------------------

PARAMETER_FILE = """
/**:
  ros__parameters: {a: 1, b: 1}
superseg_node:
  ros__parameters: {b: 2, c: 2}
/**/superseg_node:
  ros__parameters: {d: 3, a: 3, g: {h: 3}}
/*/superseg_node:
  ros__parameters: {e: 4, g: {i: 4}}
/front/*:
  ros__parameters: {f: 5}
/front/other_node:
  ros__parameters: {f: 6}
"""


def rclpy_parameters(path, namespace) -> dict:
    """What rclpy itself gives a node named superseg_node in `namespace` from this file."""
    rclpy = ros_helpers.import_rclpy()
    from rclpy.node import Node

    context = rclpy.context.Context()
    args = ["test", "--ros-args", "--params-file", str(path)]
    rclpy.init(args=args + (["-r", f"__ns:={namespace}"] if namespace != "/" else []),
               context=context)
    try:
        node = Node(NODE_NAME, context=context,
                    automatically_declare_parameters_from_overrides=True)
        values = {k: p.value for k, p in node.get_parameters_by_prefix("").items()
                  if k not in ("use_sim_time", "start_type_description_service")}
        node.destroy_node()
        return values
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("namespace", ["/", "/front", "/a/b"])
def test_read_parameters_matches_rclpy(tmp_path, namespace):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMETER_FILE)
    expected = rclpy_parameters(path, namespace)
    assert flatten(read_parameters(path, NODE_NAME, namespace)) == expected
    assert expected  # the oracle saw something: the file is not silently ignored


def test_a_file_for_another_namespace_is_an_error_naming_the_fix(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("superseg_node:\n  ros__parameters: {extractor: {max_keypoints: 20}}\n")
    assert rclpy_parameters(path, "/front") == {}  # what ROS does: silently nothing
    assert read_parameters(path, NODE_NAME)["extractor"] == {"max_keypoints": 20}
    with pytest.raises(ConfigError, match=r"no parameters for /front/superseg_node.*"
                                          r"'/\*\*/superseg_node:'"):
        read_parameters(path, NODE_NAME, "front")
    assert launch_cli.main(["--config", str(path), "--namespace", "front"]) == 2


def test_the_shipped_parameter_file_applies_in_any_namespace():
    config = ros_helpers.REPO / "config" / "superseg.yaml"
    for namespace in ("/", "/front", "/robot1/cameras/left"):
        node_settings(flatten(read_parameters(config, NODE_NAME, namespace)))


def test_parameter_files_of_a_command_line():
    argv = ["node", "--params-file", "not_ros.yaml", "--ros-args", "--params-file", "a.yaml",
            "-p", "x:=1", "--params-file", "b.yaml", "--", "--params-file", "c.yaml",
            "--ros-args", "--params-file", "d.yaml"]
    assert parameter_files(argv) == ["a.yaml", "b.yaml", "d.yaml"]
