"""ros2 launch superseg_ros superseg.launch.py [model:=...] [config:=...] [namespace:=...]
    [image:=/camera/image_raw] [camera_info:=/camera/camera_info] [rviz:=true]

Starts superseg_node with config/superseg.yaml (or `config`), remapping its `image` and
`camera_info` inputs; `superseg-launch` does the same without ros2 launch.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("superseg_ros")
    args = [
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config",
                                                                    "superseg.yaml")),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint; empty = the bundled model"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("image", default_value="image"),
        DeclareLaunchArgument("camera_info", default_value="camera_info"),
        DeclareLaunchArgument("rviz", default_value="false"),
    ]
    node = Node(
        package="superseg_ros", executable="superseg_node", name="superseg_node",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[LaunchConfiguration("config"), {"model": LaunchConfiguration("model")}],
        remappings=[("image", LaunchConfiguration("image")),
                    ("image/compressed", [LaunchConfiguration("image"), "/compressed"]),
                    ("camera_info", LaunchConfiguration("camera_info"))])
    rviz = Node(package="rviz2", executable="rviz2", name="superseg_rviz",
                arguments=["-d", os.path.join(share, "config", "superseg.rviz")],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription(args + [node, rviz])
