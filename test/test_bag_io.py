"""Bag I/O: synthetic bags (mcap, sqlite3) read back with rosbags and rclpy, atomic writing,
clear errors for damaged bags, the output-bag writer and the ``synth`` command."""

import argparse
import re
import types
from collections import defaultdict

import cv2
import numpy as np
import pytest

from seg_perception.codec import ImageDecodeError, image_from_ros, stamp_ns
from seg_perception.commands.synth import add_synth_arguments, run_synth
from seg_perception.data.bag_io import (
    COMPRESSED_FORMAT,
    BagError,
    OutputBag,
    bag_topics,
    deserialize,
    image_msg,
    read_bag_messages,
    serialize_image,
    write_synth_bag,
)
from seg_perception.data.synth import SynthFrame

START = 1_700_000_000_000_000_000
TOPICS = {
    "/cam/image": "sensor_msgs/msg/Image",
    "/cam/image/compressed": "sensor_msgs/msg/CompressedImage",
    "/cam/gt/semantic": "sensor_msgs/msg/Image",
    "/cam/gt/instance": "sensor_msgs/msg/Image",
}


def _frames(n: int, h: int = 24, w: int = 40) -> list[SynthFrame]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2)
        sem = rng.integers(0, 19, (h, w), dtype=np.uint8)
        inst = rng.choice(np.array([7, 8, 26000, 26001, 33002], np.int32), (h, w))
        out.append(SynthFrame(img, sem, inst, sem.copy(), i))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synth_bag_round_trip_with_rosbags_and_rclpy(tmp_path, storage):
    ser = pytest.importorskip("rclpy.serialization")
    msgs = pytest.importorskip("sensor_msgs.msg")
    frames = _frames(3)
    out = write_synth_bag(
        tmp_path / "bag", iter(frames), storage=storage, fps=20.0, namespace="cam", frame_id="cam0"
    )
    assert out == tmp_path / "bag" and (out / "metadata.yaml").is_file()
    assert bag_topics(out) == TOPICS
    by_stamp = defaultdict(dict)
    for topic, msgtype, stamp, raw in read_bag_messages(out):
        assert TOPICS[topic] == msgtype
        cls = msgs.CompressedImage if msgtype.endswith("CompressedImage") else msgs.Image
        by_stamp[stamp][topic] = ser.deserialize_message(raw, cls)
    assert sorted(by_stamp) == [START + i * 50_000_000 for i in range(3)]
    for i, stamp in enumerate(sorted(by_stamp)):
        got = by_stamp[stamp]
        assert set(got) == set(TOPICS)
        for m in got.values():  # the four topics of a frame share one header = bag time
            assert m.header.frame_id == "cam0"
            assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == stamp
            assert stamp_ns(m.header) == stamp_ns(m.header.stamp) == stamp
        img = got["/cam/image"]
        assert img.encoding == "rgb8" and (img.height, img.width) == (24, 40)
        pixels = np.frombuffer(bytes(img.data), np.uint8).reshape(24, 40, 3)
        assert np.array_equal(pixels, frames[i].image)
        sem = got["/cam/gt/semantic"]
        assert sem.encoding == "mono8" and np.array_equal(image_from_ros(sem), frames[i].semantic)
        inst = got["/cam/gt/instance"]
        assert inst.encoding == "32SC1" and np.array_equal(image_from_ros(inst), frames[i].instance)
        jpg = got["/cam/image/compressed"]
        assert jpg.format == COMPRESSED_FORMAT
        bgr = cv2.imdecode(np.frombuffer(bytes(jpg.data), np.uint8), cv2.IMREAD_COLOR)
        err = np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - frames[i].image).mean()
        assert err < 6.0


def test_topic_filter_and_rosbags_deserialize(tmp_path):
    out = write_synth_bag(tmp_path / "b", _frames(2), compressed=False)
    got = list(read_bag_messages(out, topics=["/camera/gt/instance"]))
    assert [t for t, *_ in got] == ["/camera/gt/instance"] * 2
    assert "/camera/image/compressed" not in bag_topics(out)
    msg = deserialize(got[1][3], got[1][1])
    assert np.array_equal(image_from_ros(msg), _frames(2)[1].instance)


def test_image_from_ros_handles_padding_and_big_endian():
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    rows = [np.concatenate([r.astype(">i4").view(np.uint8), np.zeros(5, np.uint8)]) for r in a]
    msg = types.SimpleNamespace(
        encoding="32SC1", height=3, width=4, step=21, is_bigendian=1, data=np.concatenate(rows)
    )
    out = image_from_ros(msg)
    assert out.dtype == np.int32 and np.array_equal(out, a)
    with pytest.raises(ImageDecodeError, match="bayer_rggb8") as info:
        image_from_ros(types.SimpleNamespace(encoding="bayer_rggb8"))
    assert info.value.reason == "unsupported_encoding"


def test_image_from_ros_takes_rosbags_messages_by_the_ros_size_rule():
    """One rule with camera frames: data must be exactly step * height bytes."""
    a = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    msg = image_msg(a, encoding="mono16", stamp_ns=7, frame_id="c")  # a rosbags message
    out = image_from_ros(msg)
    assert out.dtype == np.uint16 and np.array_equal(out, a)
    assert stamp_ns(msg.header) == 7
    for data, reason in ((np.append(msg.data, np.uint8(0)), "data_too_long"),
                         (msg.data[:-1], "data_too_short")):  # fmt: skip
        bad = types.SimpleNamespace(**{**vars(msg), "data": data})
        with pytest.raises(ImageDecodeError) as info:
            image_from_ros(bad)
        assert info.value.reason == reason and isinstance(info.value, ValueError)


def test_failure_mid_way_leaves_no_bag(tmp_path):
    def broken():
        yield from _frames(2)
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="unplugged"):
        write_synth_bag(tmp_path / "bag", broken(), storage="sqlite3")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor a temporary directory


def test_existing_target_needs_overwrite(tmp_path):
    out = write_synth_bag(tmp_path / "bag", _frames(1))
    with pytest.raises(BagError, match="already exists"):
        write_synth_bag(out, _frames(2))
    write_synth_bag(out, _frames(2), overwrite=True)
    assert len(list(read_bag_messages(out))) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_missing_and_damaged_bags_raise_bag_error(tmp_path, storage):
    with pytest.raises(BagError, match="nope"):
        bag_topics(tmp_path / "nope")
    out = write_synth_bag(tmp_path / "bag", _frames(3), storage=storage)
    data = next(p for p in out.iterdir() if p.suffix in (".mcap", ".db3"))
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(BagError, match=re.escape(str(out))):
        list(read_bag_messages(out))
    (out / "metadata.yaml").write_text("not: [a, bag")
    with pytest.raises(BagError, match=re.escape(str(out))):
        bag_topics(out)


def test_output_bag_records_node_outputs(tmp_path):
    raw = serialize_image(np.full((4, 5), 9, np.uint8), encoding="mono8", stamp_ns=5, frame_id="c")
    with OutputBag(tmp_path / "out", storage="sqlite3") as bag:
        bag.add_connection("/seg/semantic", "sensor_msgs/msg/Image")
        bag.add_connection("/seg/semantic", "sensor_msgs/msg/Image")  # idempotent
        bag.write("/seg/semantic", 5, raw)
        with pytest.raises(BagError, match="/seg/other"):
            bag.write("/seg/other", 5, raw)
        with pytest.raises(BagError, match="no_such"):
            bag.add_connection("/x", "no_such/msg/Type")
    [(topic, msgtype, stamp, data)] = list(read_bag_messages(tmp_path / "out"))
    assert (topic, stamp, data) == ("/seg/semantic", 5, raw)
    assert image_from_ros(deserialize(data, msgtype)).tolist() == [[9] * 5] * 4
    with pytest.raises(ZeroDivisionError), OutputBag(tmp_path / "aborted") as bag:
        bag.add_connection("/a", "sensor_msgs/msg/Image")
        bag.write("/a", 1, raw)
        _ = 1 / 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_synth_command_writes_bag_and_cityscapes(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--frames", "2", "--out", str(tmp_path / "b"), "--camera", "32x64",
         "--storage", "sqlite3", "--seed", "2", "--quiet"]
    )  # fmt: skip
    assert run_synth(args) == 0
    assert set(bag_topics(tmp_path / "b")) == {
        "/camera/image", "/camera/image/compressed", "/camera/gt/semantic", "/camera/gt/instance"
    }  # fmt: skip
    args = parser.parse_args(
        ["--frames", "1", "--out", str(tmp_path / "cs"), "--format", "cityscapes",
         "--camera", "32x64", "--quiet"]
    )  # fmt: skip
    assert run_synth(args) == 0
    assert (tmp_path / "cs/gtFine/train/synth/synth_000000_000000_gtFine_labelIds.png").is_file()
    assert run_synth(parser.parse_args(["--frames", "0", "--out", str(tmp_path / "x")])) == 2
    assert "--frames" in capsys.readouterr().err


def test_synth_command_rejects_bad_cityscapes_names_before_writing(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser())
    base = ["--out", str(tmp_path / "cs"), "--format", "cityscapes", "--camera", "32x64"]
    bad_city = parser.parse_args([*base, "--frames", "1", "--city", "synth_1"])
    assert run_synth(bad_city) == 2
    err = capsys.readouterr().err
    assert "city name" in err and "'synth_1'" in err
    # the last frame's number would pass 999999: refused before the first frame is written
    too_far = parser.parse_args([*base, "--frames", "2", "--start", "999999"])
    assert run_synth(too_far) == 2
    assert "999999" in capsys.readouterr().err
    assert not (tmp_path / "cs" / "leftImg8bit").exists()
