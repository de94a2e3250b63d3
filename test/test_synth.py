"""Synthetic street scenes: determinism, class coverage, ground truth, Cityscapes folder."""

import cv2
import numpy as np
import pytest

from seg_perception.data.cityscapes_io import (
    cityscapes_paths,
    list_cityscapes_frames,
    write_cityscapes_folder,
)
from seg_perception.data.synth import THING_CLASSES, SynthFrame, generate_frame, generate_frames
from seg_perception.labels import CITYSCAPES, Label, LabelTable

H, W = 128, 256


@pytest.fixture(scope="module")
def frames16() -> list[SynthFrame]:
    return list(generate_frames(16, seed=3, height=H, width=W, start=5))


def _same(a: SynthFrame, b: SynthFrame) -> bool:
    return all(
        np.array_equal(getattr(a, k), getattr(b, k))
        for k in ("image", "semantic", "instance", "label_ids")
    )


def test_shapes_and_dtypes(frames16):
    f = frames16[0]
    assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    assert f.semantic.shape == (H, W) and f.semantic.dtype == np.uint8
    assert f.instance.shape == (H, W) and f.instance.dtype == np.int32
    assert f.label_ids.shape == (H, W) and f.label_ids.dtype == np.uint8
    assert [g.index for g in frames16] == list(range(5, 21))


def test_same_seed_same_frames_in_any_order():
    a = [generate_frame(seed=11, index=i, height=64, width=128) for i in (0, 1, 2)]
    b = {i: generate_frame(seed=11, index=i, height=64, width=128) for i in (2, 0, 1)}
    assert all(_same(a[i], b[i]) for i in range(3))
    c = list(generate_frames(2, seed=11, height=64, width=128, start=1))
    assert _same(c[0], a[1]) and _same(c[1], a[2])


def test_different_seed_or_index_differs():
    a = generate_frame(seed=1, index=0, height=64, width=128)
    b = generate_frame(seed=2, index=0, height=64, width=128)
    c = generate_frame(seed=1, index=1, height=64, width=128)
    assert not np.array_equal(a.semantic, b.semantic)
    assert not np.array_equal(a.image, c.image)


def test_scene_is_the_same_at_every_resolution():
    small = generate_frame(seed=4, index=2, height=96, width=192)
    big = generate_frame(seed=4, index=2, height=192, width=384)
    down = cv2.resize(big.semantic, (192, 96), interpolation=cv2.INTER_NEAREST)
    assert np.mean(down == small.semantic) > 0.9


def test_any_8_consecutive_frames_show_every_thing_class(frames16):
    thing_ids = [CITYSCAPES.train_id(n) for n in THING_CLASSES]
    for s in range(len(frames16) - 7):
        seen = set()
        for f in frames16[s : s + 8]:
            seen |= set(np.unique(f.semantic).tolist())
        assert set(thing_ids) <= seen, f"window at {s} misses {set(thing_ids) - seen}"


def test_every_train_id_appears_in_16_frames(frames16):
    seen = set()
    for f in frames16:
        seen |= set(np.unique(f.semantic).tolist())
    assert set(range(CITYSCAPES.num_classes)) <= seen
    void = sum(int((f.semantic == 255).sum()) for f in frames16)
    assert void < 0.05 * 16 * H * W  # void is rare (an occasional ego-vehicle bonnet)


def test_instance_ids_consistent_with_semantic(frames16):
    thing_train = np.zeros(256, dtype=bool)
    thing_train[list(CITYSCAPES.thing_train_ids)] = True
    for f in frames16:
        valid = f.semantic != 255
        assert np.array_equal(f.label_ids[valid], CITYSCAPES.train_to_label[f.semantic[valid]])
        assert np.all(CITYSCAPES.label_to_train[f.label_ids[~valid]] == 255)
        thing = thing_train[f.semantic]
        assert np.array_equal(
            f.instance[thing] // 1000, CITYSCAPES.train_to_label[f.semantic[thing]].astype(np.int32)
        )
        assert np.array_equal(f.instance[~thing], f.label_ids[~thing].astype(np.int32))
        ids = np.unique(f.instance[thing])
        for iid in ids:
            assert len(np.unique(f.semantic[f.instance == iid])) == 1
        for lab in np.unique(ids // 1000):  # k = 0, 1, 2, ... per class, no gaps
            ks = np.sort(ids[ids // 1000 == lab] % 1000)
            assert ks.tolist() == list(range(len(ks)))


def test_no_objects_means_no_thing_pixels():
    f = generate_frame(seed=0, index=3, height=64, width=128, num_objects=(0, 0))
    assert f.instance.max() < 1000
    assert not np.isin(f.semantic, CITYSCAPES.thing_train_ids).any()


def test_odd_sizes_and_bad_arguments():
    f = generate_frame(seed=0, index=0, height=75, width=101)
    assert f.image.shape == (75, 101, 3)
    with pytest.raises(ValueError, match="seed"):
        generate_frame(seed=-1, index=0, height=64, width=128)
    with pytest.raises(ValueError, match="16x16"):
        generate_frame(seed=0, index=0, height=8, width=128)
    tiny = LabelTable((Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),), "tiny")
    with pytest.raises(ValueError, match="lacks classes"):
        generate_frame(seed=0, index=0, height=64, width=128, labels=tiny)


def test_cityscapes_folder_layout_and_encodings(tmp_path, frames16):
    frames = frames16[:2]
    names = write_cityscapes_folder(tmp_path, frames, split="val", city="synth", sequence=3)
    assert names == ["synth_000003_000005", "synth_000003_000006"]
    assert list_cityscapes_frames(tmp_path, "val") == names
    img_dir = tmp_path / "leftImg8bit" / "val" / "synth"
    gt_dir = tmp_path / "gtFine" / "val" / "synth"
    assert sorted(p.name for p in img_dir.iterdir()) == [f"{n}_leftImg8bit.png" for n in names]
    expected_gt = sorted(
        f"{n}_gtFine_{kind}.png" for n in names for kind in ("color", "instanceIds", "labelIds")
    )
    assert sorted(p.name for p in gt_dir.iterdir()) == expected_gt  # no temporary files left
    f = frames[0]
    paths = cityscapes_paths(tmp_path, "val", names[0])
    image = cv2.cvtColor(cv2.imread(str(paths.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(image, f.image)
    lab = cv2.imread(str(paths.label_ids), cv2.IMREAD_UNCHANGED)
    assert lab.dtype == np.uint8 and np.array_equal(lab, f.label_ids)
    road = f.semantic == CITYSCAPES.train_id("road")
    assert road.any() and np.all(lab[road] == 7)  # labelIds, not trainIds
    inst = cv2.imread(str(paths.instance_ids), cv2.IMREAD_UNCHANGED)
    assert inst.dtype == np.uint16 and np.array_equal(inst.astype(np.int32), f.instance)
    color = cv2.cvtColor(cv2.imread(str(paths.color), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.all(color[road] == (128, 64, 128))


def test_cityscapes_folder_bad_city_fails_before_the_first_frame(tmp_path):
    drawn = []

    def frames():
        drawn.append(1)
        yield generate_frame(seed=0, index=0, height=32, width=64)

    with pytest.raises(ValueError, match="city name"):
        write_cityscapes_folder(tmp_path, frames(), city="bad city")
    assert drawn == [] and not any(tmp_path.iterdir())
