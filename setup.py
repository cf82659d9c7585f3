from glob import glob

from setuptools import find_packages, setup

package_name = "superseg_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["superseg_ros", "superseg_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/models", glob("models/*.pt") + ["models/README.md"]),
    ],
    python_requires=">=3.10",
    # torch is deliberately unpinned here: GPU users install the CUDA build they need.
    install_requires=["setuptools", "numpy", "torch", "opencv-python-headless", "pyyaml", "tqdm"],
    extras_require={"onnx": ["onnx", "onnxruntime", "onnxscript"], "test": ["pytest"]},
    zip_safe=True,
    maintainer="superseg_ros maintainers",
    maintainer_email="maintainers@users.noreply.github.com",
    description="Semantically filtered, sub-pixel SuperPoint-style keypoints for VO/SLAM in ROS 2",
    license="BSD-3-Clause",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "superseg-extract = superseg_ros.cli.extract:main",
            "superseg-bench = superseg_ros.cli.bench:main",
            "superseg-export = superseg_ros.cli.export:main",
        ],
    },
)
