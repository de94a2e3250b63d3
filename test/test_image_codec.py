"""ROS image <-> numpy conversion: cv_bridge-identical passthrough, RGB decoding, compression."""

from __future__ import annotations

import array
import importlib.util
import types

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_perception import codec as ic
from seg_perception.codec import compressed as cc
from seg_perception.codec import image as raw_codec

# (dtype, channels) per encoding, written out from cv_bridge's getCvType table.
ENCODINGS: dict[str, tuple[type, int]] = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4), "mono8": (np.uint8, 1), "mono16": (np.uint16, 1),
    "rgb16": (np.uint16, 3), "bgra16": (np.uint16, 4),
    "bayer_rggb8": (np.uint8, 1), "bayer_bggr8": (np.uint8, 1),
    "bayer_gbrg8": (np.uint8, 1), "bayer_grbg8": (np.uint8, 1), "bayer_rggb16": (np.uint16, 1),
    "yuv422": (np.uint8, 2), "yuv422_yuy2": (np.uint8, 2), "uyvy": (np.uint8, 2),
    "16UC1": (np.uint16, 1), "32SC1": (np.int32, 1), "32FC1": (np.float32, 1),
    "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3), "16SC1": (np.int16, 1),
    "32FC3": (np.float32, 3), "64FC1": (np.float64, 1), "8SC2": (np.int8, 2), "16U": (np.uint16, 1),
}  # fmt: skip
WIDE = [e for e, (dt, _) in ENCODINGS.items() if np.dtype(dt).itemsize > 1]


def make_array(encoding: str, h: int = 3, w: int = 4, seed: int = 0) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(0, 1e3, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def raw_msg(arr: np.ndarray, encoding: str, *, pad: int = 0, big: bool = False) -> Image:
    """An Image built by hand: rows padded with garbage bytes, optionally big-endian."""
    wire = arr.astype(arr.dtype.newbyteorder(">")) if big else arr
    rows = wire.reshape(arr.shape[0], -1).view(np.uint8)
    garbage = np.full((arr.shape[0], pad), 0xA5, np.uint8)
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding)
    msg.step = rows.shape[1] + pad
    msg.is_bigendian = int(big)
    msg.data = array.array("B", np.hstack([rows, garbage]).tobytes())
    return msg


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ passthrough
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_and_fields(encoding: str) -> None:
    arr = make_array(encoding)
    header = Header(frame_id="cam0")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = ic.array_to_imgmsg(arr, encoding, header=header)
    dtype, channels = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (3, 4, encoding)
    assert msg.step == 4 * channels * np.dtype(dtype).itemsize
    assert msg.is_bigendian == 0
    assert bytes(msg.data) == arr.tobytes()
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == (
        "cam0",
        12,
        345,
    )
    assert_same(ic.imgmsg_to_array(msg), arr)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [1, 3, 8])
def test_padded_step_drops_garbage(encoding: str, pad: int) -> None:
    arr = make_array(encoding, h=4, w=3, seed=pad)
    out = ic.imgmsg_to_array(raw_msg(arr, encoding, pad=pad))
    assert_same(out, arr)
    assert out.flags.c_contiguous


@pytest.mark.parametrize("encoding", WIDE)
@pytest.mark.parametrize("pad", [0, 5])
def test_big_endian_data_decodes_to_values(encoding: str, pad: int) -> None:
    arr = make_array(encoding, seed=7)
    msg = raw_msg(arr, encoding, pad=pad, big=True)
    assert bytes(msg.data[: arr.dtype.itemsize]) != arr.reshape(-1)[:1].tobytes()  # really swapped
    assert_same(ic.imgmsg_to_array(msg), arr)


def test_big_endian_array_sets_flag_and_round_trips() -> None:
    arr = make_array("32FC1").astype(">f4")
    msg = ic.array_to_imgmsg(arr, "32FC1")
    assert msg.is_bigendian == 1 and bytes(msg.data) == arr.tobytes()
    assert_same(ic.imgmsg_to_array(msg), arr.astype(np.float32))


def test_eight_bit_ignores_is_bigendian() -> None:
    arr = make_array("rgb8")
    assert_same(ic.imgmsg_to_array(raw_msg(arr, "rgb8", big=True)), arr)


@pytest.mark.parametrize(
    ("arr", "name"),
    [(np.zeros((2, 3), np.uint8), "8UC1"), (np.zeros((2, 3), np.int32), "32SC1"),
     (np.zeros((2, 3, 3), np.float32), "32FC3"), (np.zeros((2, 3, 2), np.uint16), "16UC2")],
)  # fmt: skip
def test_passthrough_names_the_cv_type(arr: np.ndarray, name: str) -> None:
    msg = ic.array_to_imgmsg(arr)
    assert msg.encoding == name and msg.step == arr.strides[0]


def test_single_channel_3d_and_noncontiguous_arrays() -> None:
    arr = make_array("mono16")
    msg = ic.array_to_imgmsg(arr[:, :, None], "mono16")
    assert (msg.height, msg.width, msg.step) == (3, 4, 8)
    assert_same(ic.imgmsg_to_array(msg), arr)
    big = make_array("rgb8", h=6, w=8)
    view = big[::2, 1::2]
    assert_same(ic.imgmsg_to_array(ic.array_to_imgmsg(view, "rgb8")), np.ascontiguousarray(view))


@pytest.mark.parametrize(
    ("arr", "encoding", "exc", "reason"),
    [(np.zeros((2, 3), np.uint16), "rgb8", ic.ImageEncodeError, "incompatible_type"),
     (np.zeros((2, 3, 3), np.uint8), "mono8", ic.ImageEncodeError, "incompatible_type"),
     (np.zeros((2, 3), np.int64), "passthrough", ic.ImageEncodeError, "unsupported_dtype"),
     (np.zeros((2, 3), bool), "mono8", ic.ImageEncodeError, "unsupported_dtype"),
     (np.zeros(6, np.uint8), "mono8", ic.ImageEncodeError, "bad_shape"),
     (np.zeros((0, 3), np.uint8), "mono8", ic.ImageEncodeError, "empty"),
     (np.zeros((2, 3), np.uint8), "rgb9", ic.ImageEncodeError, "unknown_encoding")],
)  # fmt: skip
def test_encode_rejects_bad_arrays(arr, encoding, exc, reason) -> None:
    with pytest.raises(exc) as info:
        ic.array_to_imgmsg(arr, encoding)
    assert info.value.reason == reason
    with pytest.raises(TypeError):
        ic.array_to_imgmsg([[1, 2]], "mono8")


# ------------------------------------------------------------------------------ bad input
def _mutate(field: str, value):
    def apply(msg: Image) -> Image:
        setattr(msg, field, value)
        return msg

    return apply


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [(_mutate("height", 0), "empty"), (_mutate("width", 0), "empty"),
     (_mutate("step", 11), "step_too_small"),
     (_mutate("data", array.array("B", bytes(35))), "data_too_short"),
     (_mutate("data", array.array("B", bytes(37))), "data_too_long"),
     (_mutate("encoding", "rgb_8"), "unknown_encoding"),
     (_mutate("encoding", "8UC0"), "unknown_encoding"),
     (_mutate("encoding", "nv12"), "unsupported_encoding")],
)  # fmt: skip
def test_bad_messages_raise_with_reason(mutate, reason: str) -> None:
    msg = mutate(ic.array_to_imgmsg(make_array("rgb8"), "rgb8"))  # 3x4 rgb8, 36 bytes
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.imgmsg_to_array(msg)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    with pytest.raises(ic.ImageDecodeError):
        ic.msg_to_rgb8(msg)


def test_error_message_names_encoding_and_sizes() -> None:
    msg = ic.array_to_imgmsg(make_array("mono16"), "mono16")
    msg.data = array.array("B", bytes(20))
    with pytest.raises(ic.ImageDecodeError, match=r"'mono16'.*20 bytes.*expected.*= 24"):
        ic.imgmsg_to_array(msg)


class _Untouchable:
    """A data field that fails if anything reads it."""

    def __len__(self) -> int:
        raise AssertionError("data was touched")

    def __buffer__(self, flags: int):
        raise AssertionError("data was touched")


def test_validation_happens_before_touching_data() -> None:
    msg = types.SimpleNamespace(height=2, width=3, step=4, encoding="rgb8", is_bigendian=0,
                                data=_Untouchable())  # fmt: skip
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.imgmsg_to_array(msg)
    assert info.value.reason == "step_too_small"
    msg.step, msg.height = 9, 0
    with pytest.raises(ic.ImageDecodeError, match="empty"):
        ic.imgmsg_to_array(msg)


# ------------------------------------------------------------------------------ memory policy
def test_view_only_into_message_owned_or_immutable_buffers() -> None:
    arr = make_array("rgb8")
    msg = deserialize_message(serialize_message(ic.array_to_imgmsg(arr, "rgb8")), Image)
    out = ic.imgmsg_to_array(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))  # zero copy, like cv_bridge
    assert not np.shares_memory(ic.imgmsg_to_array(msg, copy=True), out)
    other = deserialize_message(serialize_message(msg), Image)
    assert not np.shares_memory(ic.imgmsg_to_array(other), out)
    buf = bytearray(arr.tobytes())  # a writable buffer the caller may reuse: copied
    foreign = types.SimpleNamespace(height=3, width=4, step=12, encoding="rgb8", is_bigendian=0,
                                    data=buf)  # fmt: skip
    got = ic.imgmsg_to_array(foreign)
    buf[:] = bytes(len(buf))
    assert_same(got, arr)
    assert_same(
        ic.imgmsg_to_array(types.SimpleNamespace(**{**vars(foreign), "data": list(arr.tobytes())})),
        arr,
    )


# ------------------------------------------------------------------------------ to_rgb8
def bayer_mosaic(pattern: str, rgb: tuple[int, int, int], h: int = 4, w: int = 4) -> np.ndarray:
    value = dict(zip("rgb", rgb, strict=True))
    m = np.empty((h, w), np.uint16)
    for i in range(h):
        for j in range(w):
            m[i, j] = value[pattern[(i % 2) * 2 + (j % 2)]]
    return m


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_constant_colour(pattern: str, bits: int) -> None:
    colour = (210, 90, 35)
    mosaic = bayer_mosaic(pattern, colour)
    mosaic = mosaic.astype(np.uint8) if bits == 8 else mosaic * 256 + 77
    msg = ic.array_to_imgmsg(mosaic, f"bayer_{pattern}{bits}")
    rgb = ic.msg_to_rgb8(msg)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[1:3, 1:3] == colour).all()


@pytest.mark.parametrize(
    ("encoding", "order"),
    [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")],
)
def test_yuv422_grey_gives_grey(encoding: str, order: str) -> None:
    ys = np.array([[40, 200, 120, 16], [235, 100, 60, 90]], np.uint8)
    packed = np.empty((2, 4, 2), np.uint8)
    chroma = np.tile(np.array([128, 128], np.uint8), (2, 2))  # U, V for each pixel pair
    luma_slot, chroma_slot = (1, 0) if order == "uyvy" else (0, 1)
    packed[..., luma_slot] = ys
    packed[..., chroma_slot] = chroma
    rgb = ic.to_rgb8(packed, encoding)
    assert rgb.shape == (2, 4, 3)
    assert (rgb.max(axis=2) == rgb.min(axis=2)).all()  # grey
    expected = np.clip((ys.astype(float) - 16) * 255 / 219, 0, 255)  # BT.601 studio range
    assert np.abs(rgb[..., 0] - expected).max() <= 1.5


def test_to_rgb8_colour_layouts() -> None:
    rgb = make_array("rgb8")
    alpha = np.full((*rgb.shape[:2], 1), 9, np.uint8)
    assert ic.to_rgb8(rgb, "rgb8") is rgb
    assert_same(ic.to_rgb8(rgb[..., ::-1].copy(), "bgr8"), rgb)
    assert_same(ic.to_rgb8(np.concatenate([rgb, alpha], 2), "rgba8"), rgb)
    assert_same(ic.to_rgb8(np.concatenate([rgb[..., ::-1], alpha], 2), "bgra8"), rgb)
    grey = rgb[..., 0]
    assert_same(ic.to_rgb8(grey, "mono8"), np.repeat(grey[..., None], 3, 2))
    wide = grey.astype(np.uint16) * 256 + 255
    assert_same(ic.to_rgb8(wide, "mono16"), np.repeat(grey[..., None], 3, 2))
    assert_same(ic.to_rgb8(rgb.astype(np.uint16) << 8, "rgb16"), rgb)


@pytest.mark.parametrize(
    ("arr", "encoding", "reason"),
    [(np.zeros((2, 4), np.uint16), "16UC1", "unsupported_encoding"),
     (np.zeros((2, 4), np.float32), "32FC1", "unsupported_encoding"),
     (np.zeros((2, 4, 3), np.uint8), "8UC3", "unsupported_encoding"),
     (np.zeros((2, 3, 2), np.uint8), "yuv422", "odd_width"),
     (np.zeros((2, 4), np.uint8), "rgb8", "incompatible_type"),
     (np.zeros((2, 4), np.uint16), "mono8", "incompatible_type"),
     (np.zeros((2, 4), np.uint8), "foo", "unknown_encoding")],
)  # fmt: skip
def test_to_rgb8_rejects(arr: np.ndarray, encoding: str, reason: str) -> None:
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.to_rgb8(arr, encoding)
    assert info.value.reason == reason


# ------------------------------------------------------------------------------ compressed
def smooth_rgb(h: int = 32, w: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8)


def test_jpeg_round_trip_within_tolerance() -> None:
    rgb = smooth_rgb()
    msg = cc.encode_compressed(rgb, fmt="jpeg", quality=95, header=Header(frame_id="f"))
    assert isinstance(msg, CompressedImage) and msg.header.frame_id == "f"
    assert msg.format == "rgb8; jpeg compressed bgr8" and bytes(msg.data[:2]) == b"\xff\xd8"
    back = cc.decode_compressed(deserialize_message(serialize_message(msg), CompressedImage))
    diff = np.abs(back.astype(int) - rgb)
    assert back.shape == rgb.shape and diff.mean() < 2 and diff.max() < 16


def test_png_round_trip_exact_and_mono() -> None:
    rgb = make_array("rgb8", h=5, w=7)
    msg = cc.encode_compressed(rgb, fmt="png")
    assert msg.format == "rgb8; png compressed bgr8"
    assert_same(ic.msg_to_rgb8(msg), rgb)
    grey = rgb[..., 1].copy()
    mono = cc.encode_compressed(grey, fmt="png")
    assert mono.format.startswith("mono8; png compressed")
    assert_same(cc.decode_compressed(mono), np.repeat(grey[..., None], 3, 2))


@pytest.mark.parametrize(
    ("fmt", "payload_order"),
    [("png", "bgr"), ("rgb8; png compressed bgr8", "bgr"), ("rgb8; png compressed rgb8", "rgb")],
)  # fmt: skip
def test_compressed_channel_order_follows_format(fmt: str, payload_order: str) -> None:
    rgb = make_array("rgb8", h=4, w=5, seed=3)
    payload = rgb[..., ::-1] if payload_order == "bgr" else rgb  # imencode writes array as BGR
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", cv2.imencode(".png", np.ascontiguousarray(payload))[1].tobytes())
    assert_same(cc.decode_compressed(msg), rgb)


def _compressed(data: bytes, fmt: str = "rgb8; jpeg compressed bgr8") -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", data)
    return msg


def test_compressed_bad_inputs() -> None:
    jpeg = bytes(cc.encode_compressed(smooth_rgb()).data)
    png = bytes(cc.encode_compressed(smooth_rgb(), fmt="png").data)
    noise = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    cases = [(b"", "empty"), (noise, "corrupt_compressed"),
             (jpeg[: len(jpeg) // 2], "corrupt_compressed"),
             (png[: len(png) // 2], "corrupt_compressed")]  # fmt: skip
    for data, reason in cases:
        with pytest.raises(ic.ImageDecodeError) as info:
            cc.decode_compressed(_compressed(data))
        assert info.value.reason == reason, (len(data), reason)
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.msg_to_rgb8(_compressed(png, "16UC1; compressedDepth png"))
    assert info.value.reason == "unsupported_encoding"
    with pytest.raises(ic.ImageEncodeError) as enc:
        cc.encode_compressed(smooth_rgb(), fmt="webp")
    assert enc.value.reason == "unsupported_format"


# ------------------------------------------------------------------------------ rclpy messages
@pytest.mark.parametrize(
    ("encoding", "pad", "big"),
    [("rgb8", 0, False), ("bgra8", 4, False), ("mono16", 2, True), ("32FC1", 0, True),
     ("yuv422", 6, False), ("32SC1", 3, False)],
)  # fmt: skip
def test_rclpy_serialized_messages_decode_identically(encoding: str, pad: int, big: bool) -> None:
    arr = make_array(encoding, h=5, w=6, seed=11)
    msg = raw_msg(arr, encoding, pad=pad, big=big)
    msg.header.frame_id = "camera"
    wire = deserialize_message(serialize_message(msg), Image)
    assert (wire.step, wire.is_bigendian, wire.encoding) == (msg.step, msg.is_bigendian, encoding)
    assert_same(ic.imgmsg_to_array(wire), ic.imgmsg_to_array(msg))
    assert_same(ic.imgmsg_to_array(wire), arr)


def test_msg_to_rgb8_dispatch() -> None:
    rgb = make_array("rgb8")
    raw = deserialize_message(
        serialize_message(ic.array_to_imgmsg(rgb[..., ::-1].copy(), "bgr8")), Image
    )
    assert_same(ic.msg_to_rgb8(raw), rgb)
    packed = deserialize_message(
        serialize_message(cc.encode_compressed(rgb, fmt="png")), CompressedImage
    )
    assert_same(ic.msg_to_rgb8(packed), rgb)
    with pytest.raises(TypeError):
        ic.msg_to_rgb8(object())


# ------------------------------------------------------------------------------ cv_bridge choice
def _fake_cv_bridge(*, broken: bool, calls: list | None = None) -> types.ModuleType:
    class CvBridge:
        def cv2_to_imgmsg(self, cvim, encoding="passthrough", header=None):
            msg = Image(height=cvim.shape[0], width=cvim.shape[1], encoding=encoding)
            msg.data = array.array("B", cvim.tobytes())
            msg.step = len(msg.data) // msg.height
            return msg

        def imgmsg_to_cv2(self, img_msg, desired_encoding="passthrough"):
            if calls is not None:
                calls.append(img_msg.encoding)
            if broken:  # what a NumPy-1-era build does on NumPy 2
                raise AttributeError("'numpy.ndarray' object has no attribute 'newbyteorder'")
            return raw_codec._own_imgmsg_to_array(img_msg, copy=False)

    module = types.ModuleType("cv_bridge")
    module.CvBridge = CvBridge
    return module


def test_cv_bridge_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEG_PERCEPTION_NO_CV_BRIDGE", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "cv_bridge", _fake_cv_bridge(broken=False))
    assert raw_codec._probe_cv_bridge() is not None
    monkeypatch.setenv("SEG_PERCEPTION_NO_CV_BRIDGE", "1")
    assert raw_codec._probe_cv_bridge() is None
    monkeypatch.delenv("SEG_PERCEPTION_NO_CV_BRIDGE")
    monkeypatch.setitem(__import__("sys").modules, "cv_bridge", _fake_cv_bridge(broken=True))
    assert raw_codec._probe_cv_bridge() is None
    monkeypatch.setitem(__import__("sys").modules, "cv_bridge", None)  # import fails
    assert raw_codec._probe_cv_bridge() is None
    if importlib.util.find_spec("cv_bridge") is None:
        assert ic.HAVE_CV_BRIDGE is False and ic.BACKEND == "numpy"
    assert (raw_codec._BRIDGE is not None) == ic.HAVE_CV_BRIDGE


def test_cv_bridge_used_only_where_it_is_right(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(raw_codec, "_BRIDGE", _fake_cv_bridge(broken=False, calls=calls).CvBridge())
    arr = make_array("mono16")
    assert_same(ic.imgmsg_to_array(raw_msg(arr, "mono16", pad=4)), arr)
    assert calls == ["mono16"]
    assert_same(ic.imgmsg_to_array(raw_msg(arr, "mono16", big=True)), arr)  # own code
    assert_same(ic.imgmsg_to_array(raw_msg(arr, "mono16", pad=3)), arr)  # own code
    bad = raw_msg(arr, "mono16")
    bad.step = 2
    with pytest.raises(ic.ImageDecodeError):
        ic.imgmsg_to_array(bad)
    assert calls == ["mono16"]


# ------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize("encoding", ic.GT_ENCODINGS)
def test_image_from_ros_decodes_ground_truth_like_camera_frames(encoding: str) -> None:
    dtype, channels = ic.encoding_info(encoding)
    rng = np.random.default_rng(3)
    shape = (3, 5) if channels == 1 else (3, 5, channels)
    arr = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    for pad, big in ((0, False), (3, True)):
        msg = raw_msg(arr, encoding, pad=pad, big=big)
        assert_same(ic.image_from_ros(msg), arr)
        assert_same(ic.image_from_ros(msg, copy=True), ic.imgmsg_to_array(msg))
    msg = raw_msg(arr, encoding)
    msg.data = array.array("B", bytes(msg.data) + b"\0")  # trailing byte: the one ROS rule
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.image_from_ros(msg)
    assert info.value.reason == "data_too_long"


def test_image_from_ros_refuses_camera_encodings() -> None:
    msg = ic.array_to_imgmsg(make_array("bgr8"), "bgr8")
    assert_same(ic.to_rgb8(ic.imgmsg_to_array(msg), "bgr8"), ic.msg_to_rgb8(msg))
    with pytest.raises(ic.ImageDecodeError, match="'bgr8'") as info:
        ic.image_from_ros(msg)
    assert info.value.reason == "unsupported_encoding" and isinstance(info.value, ValueError)


def test_check_image_fields_dispatches_on_message_type() -> None:
    msg = ic.array_to_imgmsg(make_array("rgb8"), "rgb8")  # 3x4
    ic.check_image_fields(msg, max_pixels=12)
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.check_image_fields(msg, max_pixels=11)
    assert info.value.reason == "too_large"
    ic.check_image_fields(cc.encode_compressed(make_array("rgb8"), fmt="png"))
    with pytest.raises(ic.ImageDecodeError) as info:
        ic.check_image_fields(_compressed(b""))
    assert info.value.reason == "empty"
    with pytest.raises(TypeError):
        ic.check_image_fields(Header())


# ------------------------------------------------------------------------------ stamps
def test_stamp_ns_of_headers_and_times() -> None:
    from builtin_interfaces.msg import Time

    header = Header(stamp=Time(sec=1_700_000_000, nanosec=999_999_999), frame_id="c")
    assert ic.stamp_ns(header) == ic.stamp_ns(header.stamp) == 1_700_000_000_999_999_999
    assert ic.stamp_ns(types.SimpleNamespace(sec=2, nanosec=5)) == 2_000_000_005  # rosbags-like
    with pytest.raises(TypeError, match="Header"):
        ic.stamp_ns(object())


# ------------------------------------------------------------------------------ layering
def test_codec_sits_below_every_other_layer() -> None:
    """The codec imports only itself, ``errors`` and ``choices`` from the package (function-level
    imports included), and importing it loads neither ROS nor torch."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    allowed = ("seg_perception.codec", "seg_perception.errors", "seg_perception.choices")
    package = Path(raw_codec.__file__).parent
    seen = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "seg_perception":
                    seen.append(name)
                    assert name.startswith(allowed), f"{path.name} imports {name}"
    assert "seg_perception.codec.encodings" in seen  # the walk did see the package's imports
    code = (
        "import sys, seg_perception.codec\n"
        "bad = [m for m in ('rclpy', 'sensor_msgs', 'torch', 'rosbags') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
