"""ros2 launch superseg_ros superseg.launch.py [model:=...] [config:=...] [namespace:=...]
    [image:=/camera/image_raw] [camera_info:=/camera/camera_info] [rviz:=true]

Starts superseg_node with config/superseg.yaml (or `config`), remapping its `image` and
`camera_info` inputs. `model` overrides the parameter file only when given. With a namespace,
RViz gets a copy of config/superseg.rviz showing the namespaced topics. superseg-launch does the
same without ros2 launch (both build on superseg_ros.ros.launch_plan.NodeLaunch).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from superseg_ros.ros.launch_plan import NodeLaunch

SHARE = get_package_share_directory("superseg_ros")
ARGUMENTS = {  # name: (default, description)
    "config": (os.path.join(SHARE, "config", "superseg.yaml"), "parameter file"),
    "model": ("", "checkpoint or 'random'; empty = the parameter file's model (else the bundled "
                  "one)"),
    "namespace": ("", "namespace of the node and its topics"),
    "image": ("image", "input image topic"),
    "camera_info": ("camera_info", "input CameraInfo topic"),
    "rviz": ("false", "also start RViz with config/superseg.rviz"),
}


def nodes(context):
    given = {name: context.launch_configurations.get(name, default)
             for name, (default, _) in ARGUMENTS.items()}
    plan = NodeLaunch(given["config"], given["model"], given["namespace"], given["image"],
                      given["camera_info"])
    actions = [Node(package="superseg_ros", executable="superseg_node", name="superseg_node",
                    namespace=plan.namespace_path or None, output="screen",
                    parameters=plan.parameters(), remappings=plan.remappings())]
    if given["rviz"].lower() in ("true", "1", "yes"):
        template = os.path.join(SHARE, "config", "superseg.rviz")
        actions.append(Node(package="rviz2", executable="rviz2", name="superseg_rviz",
                            namespace=plan.namespace_path or None,
                            arguments=["-d", str(plan.rviz_config(template))]))
    return actions


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=description)
            for name, (default, description) in ARGUMENTS.items()]
    return LaunchDescription(args + [OpaqueFunction(function=nodes)])
