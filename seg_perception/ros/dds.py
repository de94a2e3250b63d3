"""DDS transport settings for camera-sized messages (no rclpy here: call before rclpy.init)."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

PROFILE = "config/fastdds_large_images.xml"
DEFAULT_RMW = "rmw_fastrtps_cpp"
_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
_SHIPPED = "the shipped large-image profile"


def dds_profile(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The Fast DDS profile file a process started with ``env`` runs with (``None``: none), and
    why. Reads ``env`` only; :func:`large_image_transport` applies the answer."""
    rmw = env.get("RMW_IMPLEMENTATION") or DEFAULT_RMW
    if rmw != DEFAULT_RMW:
        return None, f"the RMW is {rmw}, not Fast DDS"
    for var in _PROFILE_VARS:
        if env.get(var):
            return env[var], f"configured in {var}"
    if env.get("SEG_PERCEPTION_DDS_PROFILE", "1") == "0":
        return None, "SEG_PERCEPTION_DDS_PROFILE=0 (Fast DDS defaults)"
    from seg_perception.config import ConfigError, find_data_file

    try:
        return str(find_data_file(PROFILE)), _SHIPPED
    except ConfigError:
        return None, f"{PROFILE} not found (Fast DDS defaults)"


def large_image_transport(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the shipped large-image profile (32 MB shared-memory segments, see
    ``config/fastdds_large_images.xml``) in ``env`` (default ``os.environ``).

    Nothing changes when another RMW is selected, when a Fast DDS profile is already configured,
    or with ``SEG_PERCEPTION_DDS_PROFILE=0``. Returns the profile path set, else None.
    """
    env = os.environ if env is None else env
    path, why = dds_profile(env)
    if path is None or why != _SHIPPED:
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = path
    return path
