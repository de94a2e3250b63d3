"""``sensor_msgs`` messages <-> NumPy arrays: the one codec of the node, bags, calibration and
datasets, below every other layer (NumPy, OpenCV, the standard library and
:mod:`seg_perception.errors` only; message classes are imported on first use).

Modules, bottom up: :mod:`.encodings` (the encoding table and the codec's errors),
:mod:`.buffers` (message byte buffers), :mod:`.msg_types` (type names <-> message classes),
:mod:`.stamp` (header stamps -> nanoseconds), :mod:`.image` (Image <-> array, ground-truth images),
:mod:`.compressed` (CompressedImage <-> RGB) and :mod:`.frames` (either message -> RGB). The
names below are the public API, re-exported here.
"""

from __future__ import annotations

from seg_perception.codec.compressed import decode_compressed, encode_compressed
from seg_perception.codec.encodings import (
    ImageCodecError,
    ImageDecodeError,
    ImageEncodeError,
    encoding_info,
)
from seg_perception.codec.frames import check_image_fields, msg_to_rgb8
from seg_perception.codec.image import (
    BACKEND,
    GT_ENCODINGS,
    HAVE_CV_BRIDGE,
    array_to_imgmsg,
    image_from_ros,
    imgmsg_to_array,
    to_rgb8,
)
from seg_perception.codec.msg_types import ros_type, type_name
from seg_perception.codec.stamp import stamp_ns

__all__ = [
    "BACKEND", "GT_ENCODINGS", "HAVE_CV_BRIDGE", "ImageCodecError", "ImageDecodeError",
    "ImageEncodeError", "array_to_imgmsg", "check_image_fields", "decode_compressed",
    "encode_compressed", "encoding_info", "image_from_ros", "imgmsg_to_array", "msg_to_rgb8",
    "ros_type", "stamp_ns", "to_rgb8", "type_name",
]  # fmt: skip
