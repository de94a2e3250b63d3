"""Start seg_node with a parameter file (default: the installed config/seg.yaml).

ros2 launch seg_perception seg.launch.py [params_file:=FILE] [namespace:=NS] [image_topic:=TOPIC]
    [model:=gun|shelfnet] [weights:=FILE] [engine_file:=FILE] [allow_random_weights:=true]
    [backend:=...] [precision:=...] [device:=...] [cameras:=front,left] [panoptic_enabled:=false]
    [input_qos:=sensor_data|reliable] [input_queue_depth:=N]
    [use_sim_time:=true] [log_level:=debug] [rviz:=true]   (`ros2 launch -s` lists them all)

The parameter file goes to the node as it is (sections keyed ``/**/seg_node:`` reach it under
any namespace); an override left empty keeps the file's value, a set one is passed after the
file, so it wins. Everything is decided by launch substitutions and conditions.
"""

from launch.actions import DeclareLaunchArgument, GroupAction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, NotEqualsSubstitution, PathJoinSubstitution
from launch_ros.actions import Node, SetParameter, SetParametersFromFile
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

#: launch argument -> (node parameter, description); "" (the default) keeps the file's value
OVERRIDES = {
    "cameras": (
        "cameras",
        "camera namespaces served by one node, comma separated (camera 'front' reads "
        "<namespace>/front/image; image_topic applies to '' only)",
    ),
    "model": ("model", "real-time network: gun | shelfnet"),
    "weights": ("weights", "weights file of the real-time network"),
    "engine_file": ("engine_file", "ready ONNX file or TensorRT plan of the real-time network"),
    "allow_random_weights": (
        "allow_random_weights",
        "true: start with random weights when a weights file is missing (demos/tests only)",
    ),
    "backend": ("backend", "torch | onnxruntime | tensorrt"),
    "precision": ("precision", "fp32 | bf16 | fp16 | int8"),
    "providers": ("providers", "onnxruntime execution providers in order, e.g. tensorrt,cuda,cpu"),
    "device": ("device", "torch device: cpu | cuda[:N] (its index is the TensorRT GPU)"),
    "engine_cache": ("engine_cache", "folder of exported ONNX files and built engines"),
    "threads": ("threads", "CPU threads for inference (0 = library default)"),
    "input_transport": ("input_transport", "raw (image) | compressed (image/compressed)"),
    "input_qos": (
        "input_qos",
        "sensor_data (best effort, default) | reliable (for a reliable camera driver whose large "
        "frames do not arrive over best effort)",
    ),
    "input_queue_depth": ("input_queue_depth", "history depth of the camera subscriptions"),
    "network_height": ("network_height", "real-time network input height (multiple of 32)"),
    "network_width": ("network_width", "real-time network input width (multiple of 32)"),
    "panoptic_enabled": ("panoptic.enabled", "true | false: run the panoptic ASP model"),
    "panoptic_mode": ("panoptic.mode", "sync | async"),
    "panoptic_weights": ("panoptic.weights", "weights file of the ASP model"),
    "panoptic_engine_file": (
        "panoptic.engine_file",
        "ready ONNX file or TensorRT plan of the ASP model",
    ),
    "use_sim_time": ("use_sim_time", "true: node clock from /clock (bag replay with --clock)"),
}


def _override(argument: str, parameter: str) -> SetParameter:
    value = LaunchConfiguration(argument)
    return SetParameter(
        name=parameter, value=value, condition=IfCondition(NotEqualsSubstitution(value, ""))
    )


def generate_launch_description():
    namespace = LaunchConfiguration("namespace")
    image_topic = LaunchConfiguration("image_topic")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("seg_perception"), "config", "seg.yaml"]
            ),
            description="ROS 2 parameter file for seg_node ('/**/seg_node:' sections reach it "
            "under any namespace)",
        ),
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="namespace of the node and its topics (one per camera)",
        ),
        DeclareLaunchArgument(
            "image_topic",
            default_value="image",
            description="camera topic the node's 'image' input is remapped to "
            "('image/compressed' follows as <image_topic>/compressed)",
        ),
        *(
            DeclareLaunchArgument(
                argument,
                default_value="",
                description=f"override '{parameter}': {text}; '' keeps the parameter file's value",
            )
            for argument, (parameter, text) in OVERRIDES.items()
        ),
        DeclareLaunchArgument(
            "log_level",
            default_value="info",
            description="node log level: debug | info | warn | error | fatal",
        ),
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            description="true: also start rviz2 (it must be installed) with config/seg.rviz",
        ),
    ]
    # file first, then the overrides set: the last value of a parameter wins; the group keeps
    # them to seg_node
    seg_node = GroupAction(
        scoped=True,
        actions=[
            SetParametersFromFile(LaunchConfiguration("params_file")),
            *(_override(a, p) for a, (p, _) in OVERRIDES.items()),
            Node(
                package="seg_perception",
                executable="seg_node",
                name="seg_node",
                namespace=namespace,
                remappings=[
                    ("image", image_topic),
                    ("image/compressed", [image_topic, "/compressed"]),
                ],
                ros_arguments=["--log-level", LaunchConfiguration("log_level")],
                output="screen",
                emulate_tty=True,
            ),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        namespace=namespace,  # config/seg.rviz uses relative topics
        arguments=[
            "-d",
            PathJoinSubstitution([FindPackageShare("seg_perception"), "config", "seg.rviz"]),
        ],
        remappings=[("image", image_topic)],
        output="screen",
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, seg_node, rviz])
