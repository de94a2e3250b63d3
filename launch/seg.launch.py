"""Start seg_node with config/seg.yaml.

ros2 launch seg_perception seg.launch.py [config:=FILE] [namespace:=NS] [image_topic:=TOPIC]
                                         [model:=gun|shelfnet] [cameras:=front,left] [rviz:=true]
"""

from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
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
    cameras = LaunchConfiguration("cameras").perform(context)
    if cameras:  # camera 'front' reads <namespace>/front/image (image_topic applies to '' only)
        parameters["cameras"] = cameras
    namespace = LaunchConfiguration("namespace")
    actions = [
        Node(
            package="seg_perception",
            executable="seg_node",
            name="seg_node",
            namespace=namespace,
            parameters=[parameters],
            remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")],
            output="screen",
            emulate_tty=True,
        )
    ]
    if LaunchConfiguration("rviz").perform(context).lower() in ("true", "1", "yes"):
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        try:
            get_package_share_directory("rviz2")
        except PackageNotFoundError:
            return [*actions, LogInfo(msg="rviz:=true but rviz2 is not installed; skipping RViz")]
        rviz_config = PathJoinSubstitution(
            [FindPackageShare("seg_perception"), "config", "seg.rviz"]
        )
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                namespace=namespace,  # config/seg.rviz uses relative topics
                arguments=["-d", rviz_config],
                remappings=[("image", image_topic)],
                output="screen",
            )
        )
    return actions


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
            DeclareLaunchArgument(
                "cameras",
                default_value="",
                description="override the config's cameras: comma-separated camera namespaces "
                "served by one node, batched into one engine call",
            ),
            DeclareLaunchArgument(
                "rviz",
                default_value="false",
                description="also start RViz with config/seg.rviz (where rviz2 is installed)",
            ),
            OpaqueFunction(function=_node),
        ]
    )
