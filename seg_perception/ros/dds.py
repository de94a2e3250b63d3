"""DDS transport settings for camera-sized messages (no rclpy here: call before rclpy.init), and
what to tell a user whose camera's frames never arrive.

Fast DDS reads its profile file from an environment variable whose name depends on its major
version: ``FASTRTPS_DEFAULT_PROFILES_FILE`` for Fast DDS 2.x (ROS 2 Jazzy and Humble: the other
name is ignored), ``FASTDDS_DEFAULT_PROFILES_FILE`` for Fast DDS 3.x (Kilted and later, whose RMW
still reads the old name but logs a deprecation warning in every process that has it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

PROFILE = "config/fastdds_large_images.xml"
DEFAULT_RMW = "rmw_fastrtps_cpp"
#: Fast DDS 3.x (Kilted and later), Fast DDS 2.x (Jazzy, Humble)
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
_SHIPPED = "the shipped large-image profile"
_FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
README_SECTION = "README, 'Large images over DDS'"


def dds_profile(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The Fast DDS profile file a process started with ``env`` runs with (``None``: none), and
    why. Reads ``env`` only; :func:`large_image_transport` applies the answer."""
    rmw = env.get("RMW_IMPLEMENTATION") or DEFAULT_RMW
    if rmw != DEFAULT_RMW:
        return None, f"the RMW is {rmw}, not Fast DDS"
    for var in PROFILE_VARS:
        if env.get(var):
            return env[var], f"configured in {var}"
    if env.get("SEG_PERCEPTION_DDS_PROFILE", "1") == "0":
        return None, "SEG_PERCEPTION_DDS_PROFILE=0 (Fast DDS defaults)"
    from seg_perception.config import ConfigError, find_data_file

    try:
        return str(find_data_file(PROFILE)), _SHIPPED
    except ConfigError:
        return None, f"{PROFILE} not found (Fast DDS defaults)"


def profile_variable(env: Mapping[str, str] | None = None) -> str:
    """The variable the installed Fast DDS reads its profile file from: by the Fast DDS wheel
    installed (pip route: ``ros-fastdds`` 3.x, ``ros-fastrtps`` 2.x), else by ``ROS_DISTRO``
    (a sourced ROS 2 installation)."""
    for dist, var in (("ros-fastdds", PROFILE_VARS[0]), ("ros-fastrtps", PROFILE_VARS[1])):
        try:
            version(dist)
        except PackageNotFoundError:
            continue
        return var
    distro = (os.environ if env is None else env).get("ROS_DISTRO", "")
    return PROFILE_VARS[1] if distro in _FAST_DDS_2_DISTROS else PROFILE_VARS[0]


def large_image_transport(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the shipped large-image profile (32 MB shared-memory segments, see
    ``config/fastdds_large_images.xml``) in ``env`` (default ``os.environ``), under the variable
    name the installed Fast DDS reads (:func:`profile_variable`).

    Nothing changes when another RMW is selected, when a Fast DDS profile is already configured,
    or with ``SEG_PERCEPTION_DDS_PROFILE=0``. Returns the profile path set, else None.
    """
    env = os.environ if env is None else env
    path, why = dds_profile(env)
    if path is None or why != _SHIPPED:
        return None
    env[profile_variable(env)] = path
    return path


def without_profile(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` in which Fast DDS runs with its defaults, as a camera driver started
    without the profile does (no profile variable, and no shipped profile for our tools)."""
    out = {k: v for k, v in env.items() if k not in PROFILE_VARS}
    out["SEG_PERCEPTION_DDS_PROFILE"] = "0"
    return out


@dataclass(frozen=True)
class PublisherInfo:
    """A publisher on a camera's input topic as the ROS graph reports it (see
    ``seg_perception.ros.compat.publishers_of``)."""

    node: str  # fully qualified node name
    gid: str  # endpoint GID, dotted hex as ``ros2 topic info -v`` prints it
    reliable: bool | None  # None: the graph did not say

    def describe(self) -> str:
        kind = {True: "reliable", False: "best effort", None: "reliability unknown"}
        return f"{self.node} (GID {self.gid}, {kind[self.reliable]})"


def profile_hint() -> str:
    """Where the large-image profile is, for a message to a user."""
    from seg_perception.config import ConfigError, find_data_file

    try:
        return str(find_data_file(PROFILE))
    except ConfigError:  # pragma: no cover - the package ships the file
        return f"<share>/seg_perception/{PROFILE}"


def silent_input_advice(
    topic: str,
    publishers: Sequence[PublisherInfo],
    *,
    seconds: float,
    input_qos: str,
) -> str:
    """The warning for a camera topic on which publishers are matched but no frame arrives: the
    topic, the publishers, the likely cause and the fix."""
    names = "; ".join(p.describe() for p in publishers) or "(not listed by the ROS graph)"
    return (
        f"no frame on {topic} for {seconds:.0f} s although {len(publishers) or 'a'} "
        f"publisher(s) are matched: {names}. {_cause_and_fix(publishers, input_qos)}"
    )


def lost_input_advice(
    topic: str,
    publishers: Sequence[PublisherInfo],
    *,
    lost: int,
    sent: int,
    input_qos: str,
) -> str:
    """The warning for a camera topic on which far fewer frames arrive than were sent (gaps in
    the publishers' sequence numbers)."""
    names = "; ".join(p.describe() for p in publishers) or "(not listed by the ROS graph)"
    return (
        f"{lost} of the last {sent} frames sent on {topic} never arrived (publisher sequence "
        f"numbers skipped them); publisher(s): {names}. {_cause_and_fix(publishers, input_qos)}"
    )


def _cause_and_fix(publishers: Sequence[PublisherInfo], input_qos: str) -> str:
    reliable_pub = any(p.reliable for p in publishers)
    text = (
        "Likely cause: the frames are too large for the publisher's DDS transport. With Fast "
        "DDS's default settings a sample larger than the 512 KB shared-memory segment goes over "
        "UDP in ~64 KB fragments, and one lost fragment loses the whole frame (for good under "
        "best effort). Fix: start the camera driver with the large-image profile, "
        f"FASTDDS_DEFAULT_PROFILES_FILE={profile_hint()} (Fast DDS 3, Kilted; "
        "FASTRTPS_DEFAULT_PROFILES_FILE for Fast DDS 2, Jazzy)"
    )
    if input_qos != "reliable" and reliable_pub:
        text += (
            ", or set this node's input_qos to 'reliable' (the publisher is reliable: lost "
            "fragments are then sent again)"
        )
    return text + f"; or publish compressed images or a lower resolution. See {README_SECTION}."
