"""Start seg_node with config/seg.yaml.

ros2 launch seg_perception seg.launch.py [config:=FILE] [namespace:=NS] [image_topic:=TOPIC]
                                         [model:=gun|shelfnet]
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _node(context, *args, **kwargs):
    from seg_perception.config import read_params_file

    image_topic = LaunchConfiguration("image_topic").perform(context)
    model = LaunchConfiguration("model").perform(context)
    # The file's 'seg_node:' section only matches a node in the root namespace, so with
    # namespace:=NS rcl would silently ignore it: pass its parameters to the node directly.
    parameters = read_params_file(LaunchConfiguration("config").perform(context))
    if model:
        parameters["model"] = model
    return [
        Node(
            package="seg_perception",
            executable="seg_node",
            name="seg_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[parameters],
            remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_config = PathJoinSubstitution(
        [FindPackageShare("seg_perception"), "config", "seg.yaml"]
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=default_config,
                description="ROS 2 parameter file for seg_node",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="namespace of the node and its topics (one per camera)",
            ),
            DeclareLaunchArgument(
                "image_topic",
                default_value="image",
                description="camera topic the node's 'image' input is remapped to",
            ),
            DeclareLaunchArgument(
                "model",
                default_value="",
                description="override the config's model (gun | shelfnet)",
            ),
            OpaqueFunction(function=_node),
        ]
    )
