"""ament_python package setup for seg_perception (also installable with pip)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml"),
        ),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/models", [p for p in glob("models/*") if not p.endswith(".onnx")]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="seg_perception developers",
    maintainer_email="seg-perception@autodrive-lab.org",
    description="Real-time semantic and panoptic segmentation node for ROS 2 (GUN, ShelfNet, ASP).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "seg_node = seg_perception.ros.node:main",
            "seg-perception = seg_perception.cli:main",
        ],
    },
)
