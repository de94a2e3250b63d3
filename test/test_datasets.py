"""Data: the Cityscapes-format reader, synthetic and bag datasets, augmentation, batch keys."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg_perception.data.cityscapes import (
    CityscapesDataset,
    DataError,
    DataWarning,
    find_cityscapes_frames,
    instance_targets,
)
from seg_perception.data.datasets import AugmentedDataset, BagDataset, SyntheticDataset, collate
from seg_perception.data.synth import generate_frame
from seg_perception.data.transforms import (
    AugmentConfig,
    augment,
    color_jitter,
    crop,
    hflip,
    lighting_jitter,
    rotate,
)
from seg_perception.labels import CITYSCAPES
from seg_perception.train.distributed import batch_keys, iterations_per_epoch

torch.set_num_threads(1)
H, W = 16, 32


def _hand_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame with road, two car instances, a person, a crowd of cars and unlabeled pixels."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label_ids = np.full((H, W), 7, np.uint8)  # road
    label_ids[:2] = 0  # unlabeled -> void
    label_ids[4:8, 2:6] = 26  # car #0
    label_ids[9:12, 20:30] = 26  # car #1
    label_ids[5:15, 10:12] = 24  # person #0
    label_ids[13:16, 25:32] = 26  # cars without instance ids (a crowd)
    inst = label_ids.astype(np.int32)
    inst[4:8, 2:6] = 26000
    inst[9:12, 20:30] = 26001
    inst[5:15, 10:12] = 24000
    return image, label_ids, inst


def _write_frame(root: Path, name: str, split: str, annotation: str, frame: tuple) -> None:
    image, label_ids, inst = frame
    city = name.split("_")[0]
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / annotation / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_dir / f"{name}_leftImg8bit.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(gt_dir / f"{name}_{annotation}_labelIds.png"), label_ids)
    cv2.imwrite(str(gt_dir / f"{name}_{annotation}_instanceIds.png"), inst.astype(np.uint16))


# ---------------------------------------------------------------------------------- Cityscapes
@pytest.mark.parametrize("annotation", ["gtFine", "gtCoarse"])
def test_cityscapes_reader_official_layout(tmp_path: Path, annotation: str) -> None:
    frame = _hand_frame()
    _write_frame(tmp_path, "aachen_000000_000019", "train", annotation, frame)
    _write_frame(tmp_path, "bremen_000001_000002", "train", annotation, frame)
    ds = CityscapesDataset(tmp_path, "train", annotation=annotation)
    assert [f.name for f in ds.frames] == ["aachen_000000_000019", "bremen_000001_000002"]
    s = ds[0]
    image, _, inst = frame
    assert np.array_equal(s["image"], image)  # RGB, not OpenCV's BGR
    assert s["semantic"].dtype == np.uint8
    assert s["semantic"][3, 0] == 0 and s["semantic"][0, 0] == 255  # road -> 0, unlabeled -> void
    assert s["semantic"][5, 3] == 13 and s["semantic"][6, 10] == 11  # car, person trainIds
    assert np.array_equal(s["instance"], inst)
    t = instance_targets(s["instance"])
    assert t["labels"].tolist() == [11, 13, 13]  # person 24000, car 26000, car 26001; no crowd
    assert t["boxes"].tolist() == [[10, 5, 12, 15], [2, 4, 6, 8], [20, 9, 30, 12]]
    assert t["masks"].shape == (3, H, W) and t["masks"].dtype == torch.uint8
    assert np.array_equal(t["masks"][1].numpy().astype(bool), inst == 26000)


def test_cityscapes_reader_on_synthetic_folder(tmp_path: Path) -> None:
    from seg_perception.data.cityscapes_io import write_cityscapes_folder

    frames = [generate_frame(seed=2, index=i, height=48, width=96) for i in range(2)]
    write_cityscapes_folder(tmp_path, frames, split="val")
    ds = CityscapesDataset(tmp_path, "val")
    for f, s in zip(frames, (ds[0], ds[1]), strict=True):
        assert np.array_equal(s["semantic"], f.semantic)
        assert np.array_equal(s["instance"], f.instance)
        assert np.array_equal(s["image"], f.image)


def test_missing_and_corrupt_files_warn_or_fail_in_strict_mode(tmp_path: Path) -> None:
    frame = _hand_frame()
    for name in ("a_000000_000000", "a_000000_000001", "a_000000_000002"):
        _write_frame(tmp_path, name, "train", "gtFine", frame)
    missing = tmp_path / "gtFine/train/a/a_000000_000001_gtFine_labelIds.png"
    missing.unlink()
    with pytest.warns(DataWarning, match="a_000000_000001_gtFine_labelIds.png"):
        ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 2
    with pytest.raises(DataError, match="a_000000_000001_gtFine_labelIds.png"):
        find_cityscapes_frames(tmp_path, "train", strict=True)
    corrupt = tmp_path / "leftImg8bit/train/a/a_000000_000000_leftImg8bit.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(DataWarning, match="a_000000_000000_leftImg8bit.png"):
        s = ds[0]  # replaced by the next readable frame
    assert s["name"] == "a_000000_000002"
    with pytest.warns(DataWarning):
        strict = CityscapesDataset(tmp_path, "train", strict=False)
    strict.strict = True
    with pytest.raises(DataError, match="a_000000_000000_leftImg8bit.png"):
        strict[0]


def test_empty_split_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="leftImg8bit"):
        CityscapesDataset(tmp_path, "train")


# ---------------------------------------------------------------------------------- synth / bag
def test_synthetic_dataset_is_the_generator() -> None:
    ds = SyntheticDataset(frames=3, seed=5, height=32, width=64)
    f = generate_frame(seed=5, index=2, height=32, width=64)
    s = ds[2]
    assert np.array_equal(s["image"], f.image) and np.array_equal(s["semantic"], f.semantic)
    with pytest.raises(IndexError):
        ds[3]


def _same_arrays(a: dict, b: dict) -> bool:
    return all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
        for k in ("image", "semantic", "instance")
    )


def test_synth_cache_reads_back_the_rendered_frames(tmp_path: Path) -> None:
    plain = SyntheticDataset(frames=6, seed=4, height=48, width=96)
    cached = SyntheticDataset(frames=6, seed=4, height=48, width=96, cache_dir=tmp_path)
    first = [cached[i] for i in range(6)]  # rendered and written
    assert cached.cache is not None
    files = sorted(p.name for p in cached.cache.dir.iterdir())
    assert len(files) == 18 and not any(n.startswith(".") for n in files)  # no temporary left
    again = SyntheticDataset(frames=6, seed=4, height=48, width=96, cache_dir=tmp_path)
    for i in range(6):
        assert again.cache is not None and again.cache.load(i) is not None
        s = again[i]  # read from the cache
        assert _same_arrays(s, plain[i]) and _same_arrays(first[i], plain[i])
        assert int(s["instance"].max()) >= 1000  # thing instance ids survive the 16-bit PNG
    # another size, seed or generator is another folder
    other = SyntheticDataset(frames=6, seed=5, height=48, width=96, cache_dir=tmp_path)
    assert other.cache is not None and other.cache.dir != again.cache.dir


def test_synth_cache_limits_and_switches(tmp_path: Path, monkeypatch) -> None:
    from seg_perception.data.datasets import DatasetSpec, build_dataset
    from seg_perception.data.synth_cache import SYNTH_CACHE_ENV

    ds = SyntheticDataset(frames=4, seed=1, height=32, width=64, cache_dir=tmp_path, cache_frames=2)
    for i in range(4):
        ds[i]
    assert ds.cache is not None
    assert sorted({p.name[:7] for p in ds.cache.dir.iterdir()}) == ["0000000", "0000001"]
    monkeypatch.setenv(SYNTH_CACHE_ENV, str(tmp_path / "env"))
    spec = DatasetSpec(kind="synth", seed=1, frames=2, height=32, width=64)
    built = build_dataset(spec)
    assert built.cache is not None and built.cache.dir.parent == tmp_path / "env"
    assert build_dataset(DatasetSpec(kind="synth", frames=2, cache=False)).cache is None
    monkeypatch.setenv(SYNTH_CACHE_ENV, "off")
    assert build_dataset(spec).cache is None


def test_synth_cache_writes_atomically(tmp_path: Path, monkeypatch) -> None:
    """A write that dies half-way leaves no frame behind (the next reader renders it)."""
    from seg_perception import atomic

    ds = SyntheticDataset(frames=2, seed=2, height=32, width=64, cache_dir=tmp_path)
    assert ds.cache is not None
    real = atomic.os.replace
    calls = []

    def dying_replace(src, dst):  # the process "dies" while renaming the second file
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        ds[0]
    monkeypatch.setattr(atomic.os, "replace", real)
    names = [p.name for p in ds.cache.dir.iterdir()]
    assert names == ["0000000_instance.png"]  # one whole file, no partial or temporary file
    assert ds.cache.load(0) is None  # no image yet: the frame counts as absent
    fresh = generate_frame(seed=2, index=0, height=32, width=64)
    assert np.array_equal(ds[0]["image"], fresh.image)  # rendered again and now complete
    assert ds.cache.load(0) is not None
    (ds.cache.path(0, "semantic")).write_bytes(b"not a png")  # damaged on disk
    assert ds.cache.load(0) is None and np.array_equal(ds[0]["semantic"], fresh.semantic)


def test_bag_dataset_reads_ground_truth_topics(tmp_path: Path) -> None:
    from seg_perception.data.bag_io import write_synth_bag

    frames = [generate_frame(seed=4, index=i, height=32, width=64) for i in range(3)]
    bag = write_synth_bag(tmp_path / "b", frames, storage="mcap", compressed=False)
    ds = BagDataset(
        bag,
        image_topic="/camera/image",
        semantic_topic="/camera/gt/semantic",
        instance_topic="/camera/gt/instance",
    )
    assert len(ds) == 3
    for i, f in enumerate(frames):
        s = ds[i]
        assert np.array_equal(s["image"], f.image)
        assert np.array_equal(s["semantic"], f.semantic)
        assert np.array_equal(s["instance"], f.instance)
    with pytest.raises(DataError, match="not found"):
        BagDataset(tmp_path / "nope", image_topic="a", semantic_topic="b")


# ---------------------------------------------------------------------------------- transforms
def _sample() -> dict:
    image, label_ids, inst = _hand_frame()
    return {"image": image, "semantic": CITYSCAPES.to_train_ids(label_ids), "instance": inst}


def test_crop_pads_with_ignore_label() -> None:
    s = crop(_sample(), (20, 40), np.random.default_rng(0))
    assert s["image"].shape == (20, 40, 3)
    assert (s["semantic"][16:] == 255).all() and (s["semantic"][:, 32:] == 255).all()
    assert (s["image"][16:] == 0).all() and (s["instance"][:, 32:] == 0).all()


def test_flip_and_rotation_move_labels_with_the_image() -> None:
    s = _sample()
    f = hflip(s)
    assert np.array_equal(f["semantic"], s["semantic"][:, ::-1])
    assert np.array_equal(f["image"], s["image"][:, ::-1])
    r = rotate(s, 10.0)
    assert r["semantic"][0, -1] == 255 and r["instance"][0, -1] == 0  # corner rotated in: void
    assert r["semantic"][8, 16] == s["semantic"][8, 16]  # the centre stays put
    assert set(np.unique(r["instance"])) <= set(np.unique(s["instance"])) | {0}


def test_photometric_jitter_changes_the_image_only() -> None:
    s = _sample()
    rng = np.random.default_rng(1)
    cj = color_jitter(s["image"], 0.4, rng)
    lj = lighting_jitter(s["image"], 0.1, rng)
    assert cj.dtype == np.uint8 and not np.array_equal(cj, s["image"])
    diff = lj.astype(int) - s["image"].astype(int)
    inner = (s["image"] > 20) & (s["image"] < 235)  # away from clipping: one RGB offset
    for c in range(3):
        assert np.ptp(diff[..., c][inner[..., c]]) <= 1
    cfg = AugmentConfig(scale=(0.5, 2.0), rotate=10, flip=True, crop=(12, 12), color_jitter=0.3)
    a = augment(s, cfg, np.random.default_rng(7))
    b = augment(s, cfg, np.random.default_rng(7))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["semantic"], b["semantic"])
    assert a["image"].shape[:2] == a["semantic"].shape == (12, 12)
    assert set(np.unique(a["semantic"])) <= set(np.unique(s["semantic"])) | {255}


def test_random_scale_stays_in_range() -> None:
    s = _sample()
    for seed in range(10):
        out = augment(s, AugmentConfig(scale=(0.5, 2.0)), np.random.default_rng(seed))
        assert 8 <= out["image"].shape[0] <= 32 and out["semantic"].shape == out["image"].shape[:2]


def test_augmented_dataset_items_and_collate() -> None:
    base = SyntheticDataset(frames=2, seed=1, height=32, width=64)
    ds = AugmentedDataset(base, AugmentConfig(flip=True, crop=(32, 32)), with_instances=True)
    a, b = ds[(0, (1, 2))], ds[(0, (1, 2))]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 32, 32)
    assert a["image"].min() >= 0.0 and a["image"].max() <= 1.0
    t = a["targets"]
    assert set(t) == {"boxes", "labels", "masks", "semantic"}
    assert all(CITYSCAPES.is_thing(int(c)) for c in t["labels"])
    batch = collate([a, ds[(1, (3,))]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["semantic"].dtype == torch.int64
    assert len(batch["targets"]) == 2


# ---------------------------------------------------------------------------------- batch keys
def test_batch_keys_split_a_global_batch_between_ranks() -> None:
    kw = {"dataset_len": 10, "batch_size": 2, "seed": 3, "stage": 0}
    assert iterations_per_epoch(10, 2, 2) == 2
    for it in range(4):
        r0 = batch_keys(it, rank=0, world_size=2, **kw)
        r1 = batch_keys(it, rank=1, world_size=2, **kw)
        assert not {i for i, _ in r0} & {i for i, _ in r1}
        assert r0 == batch_keys(it, rank=0, world_size=2, **kw)  # pure function
    epoch0 = [
        i
        for it in range(2)
        for r in range(2)
        for i, _ in batch_keys(it, rank=r, world_size=2, **kw)
    ]
    assert len(set(epoch0)) == 8  # no repeats within an epoch
    tiny = batch_keys(0, dataset_len=3, batch_size=4, seed=0)  # smaller than a batch: repeated
    assert len(tiny) == 4 and {i for i, _ in tiny} == {0, 1, 2}
