from glob import glob

from setuptools import find_packages, setup

package_name = "superseg_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["superseg_ros", "superseg_ros.*"]),
    # Loopback-only Fast DDS profile loaded by every ROS process (superseg_ros.ros.loopback).
    package_data={"superseg_ros.ros": ["fastdds_loopback.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/models", glob("models/*.pt") + ["models/README.md"]),
    ],
    python_requires=">=3.10",
    # torch is deliberately unpinned here: GPU users install the CUDA build they need.
    install_requires=["setuptools", "numpy", "torch", "opencv-python-headless", "pyyaml", "tqdm"],
    # backends (superseg_ros.backends): onnxruntime (GPU: onnxruntime-gpu instead), openvino
    extras_require={"onnx": ["onnx", "onnxruntime", "onnxscript"],
                    "openvino": ["onnx", "onnxruntime", "onnxscript", "openvino"],
                    "test": ["pytest"]},
    zip_safe=True,
    maintainer="superseg_ros maintainers",
    maintainer_email="maintainers@users.noreply.github.com",
    description="Semantically filtered, sub-pixel SuperPoint-style keypoints for VO/SLAM in ROS 2",
    license="BSD-3-Clause",
    entry_points={
        "console_scripts": [
            "superseg-extract = superseg_ros.cli.extract:main",
            "superseg-bench = superseg_ros.cli.bench:main",
            "superseg-bench-node = superseg_ros.cli.bench_node:main",
            "superseg-export = superseg_ros.cli.export:main",
            "superseg-make-bag = superseg_ros.cli.make_bag:main",
            "superseg-play = superseg_ros.cli.play:main",
            "superseg-record = superseg_ros.cli.record:main",
            "superseg-launch = superseg_ros.ros.launch_cli:main",
            "superseg-eval = superseg_ros.evaluation.cli:main",
            "superseg-train = superseg_ros.training.cli:main",
            "superseg-adapt = superseg_ros.training.adapt_cli:main",
            # `ros2 run superseg_ros superseg_node` (setup.cfg installs scripts to lib/<pkg>)
            "superseg_node = superseg_ros.ros.node:main",
        ],
    },
)
