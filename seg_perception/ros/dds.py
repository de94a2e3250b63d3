"""DDS transport settings for camera-sized messages (no rclpy here: call before rclpy.init)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PROFILE = "config/fastdds_large_images.xml"
_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def large_image_transport(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the shipped large-image profile (32 MB shared-memory segments, see
    ``config/fastdds_large_images.xml``) in ``env`` (default ``os.environ``).

    Nothing changes when another RMW is selected, when a Fast DDS profile is already configured,
    or with ``SEG_PERCEPTION_DDS_PROFILE=0``. Returns the profile path set, else None.
    """
    from seg_perception.config import ConfigError, find_data_file

    env = os.environ if env is None else env
    if env.get("SEG_PERCEPTION_DDS_PROFILE", "1") == "0":
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    if any(env.get(v) for v in _PROFILE_VARS):
        return None
    try:
        path = str(find_data_file(PROFILE))
    except ConfigError:
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = path
    return path
