"""Panoptic fusion: one hand-built array per rule of the heuristic, the baseline, encodings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seg_perception.fusion import (
    FUSION_METHODS,
    Instances,
    colorize_panoptic,
    decode_panoptic,
    encode_panoptic,
    fuse,
    fuse_baseline,
    fuse_heuristic,
    fusion_method,
)
from seg_perception.labels import CITYSCAPES

ROAD, BUILDING, SKY = 0, 2, 10
PERSON, RIDER, CAR, TRUCK, BICYCLE = 11, 12, 13, 14, 18


def _inst(masks: list[np.ndarray], labels: list[int], scores: list[float]) -> Instances:
    return Instances(np.stack(masks).astype(bool), np.array(labels), np.array(scores))


def _box_mask(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_mask_pixel_on_other_category_deleted_same_category_kept() -> None:
    # Rows 1-3: car in cols 0-3, person in cols 4-6; road elsewhere. The car mask also covers
    # the person and road pixels of rows 0-4.
    sem = np.full((5, 8), ROAD, np.uint8)
    sem[1:4, 0:4] = CAR
    sem[1:4, 4:7] = PERSON
    mask = _box_mask(sem.shape, slice(0, 5), slice(0, 7))
    r = fuse_heuristic(sem, _inst([mask], [CAR], [0.9]), min_new_instance_area=10_000)
    assert (r.instance[1:4, 0:4] == 1).all()  # same category: kept
    assert (r.instance[1:4, 4:7] == 0).all()  # other category: deleted
    assert (r.semantic[1:4, 4:7] == PERSON).all()
    assert (r.instance[0] == 0).all() and (r.instance[4] == 0).all()  # background: deleted
    assert (r.semantic[0] == ROAD).all() and (r.semantic[4] == ROAD).all()


def test_same_category_other_class_is_kept_and_refined() -> None:
    # A car instance whose pixels the semantic map called truck (same category) becomes car.
    sem = np.full((6, 6), ROAD, np.uint8)
    sem[1:5, 1:5] = TRUCK
    sem[1:5, 1:3] = CAR
    mask = _box_mask(sem.shape, slice(1, 5), slice(1, 5))
    r = fuse_heuristic(sem, _inst([mask], [CAR], [0.8]))
    assert (r.instance[1:5, 1:5] == 1).all()
    assert (r.semantic[1:5, 1:5] == CAR).all()
    assert (r.semantic[0] == ROAD).all()


def test_region_growing_fills_gap_through_same_category() -> None:
    # One car region (cols 0-9); the mask covers only cols 0-2; the rest is filled.
    sem = np.full((3, 12), ROAD, np.uint8)
    sem[:, 0:10] = CAR
    sem[1, 5] = TRUCK  # same category: growing passes through and refines it
    mask = _box_mask(sem.shape, slice(0, 3), slice(0, 3))
    r = fuse_heuristic(sem, _inst([mask], [CAR], [0.9]), min_new_instance_area=10_000)
    assert (r.instance[:, 0:10] == 1).all()
    assert (r.semantic[:, 0:10] == CAR).all()
    assert (r.instance[:, 10:] == 0).all()


@pytest.mark.parametrize("barrier", [ROAD, PERSON])
def test_region_growing_does_not_cross_background_or_other_category(barrier: int) -> None:
    # Two car regions split by a column of `barrier`. Instance A holds cols 3-4 of the left
    # region, B cols 11-12 of the right one. Col 6 is closer to A (2 px, across the barrier)
    # than to B (5 px), but only B has a direct semantic path to it.
    sem = np.full((3, 13), CAR, np.uint8)
    sem[:, 5] = barrier
    a = _box_mask(sem.shape, slice(0, 3), slice(3, 5))
    b = _box_mask(sem.shape, slice(0, 3), slice(11, 13))
    r = fuse_heuristic(sem, _inst([a, b], [CAR, CAR], [0.9, 0.8]), min_new_instance_area=10_000)
    assert (r.instance[:, 0:5] == 1).all()
    assert (r.instance[:, 6:13] == 2).all()
    assert (r.instance[:, 5] == 0).all()
    assert (r.semantic[:, 5] == barrier).all()


@pytest.mark.parametrize("barrier", [ROAD, PERSON])
def test_region_growing_ignores_closer_seed_enclosed_by_barrier(barrier: int) -> None:
    # A ring of car pixels around a block of `barrier` that holds a one-pixel car island (A).
    # B holds one ring corner. Ring pixel (4, 1) is 3 px from A, 4.1 px from B: it must get B.
    sem = np.full((9, 9), CAR, np.uint8)
    sem[2:7, 2:7] = barrier
    sem[4, 4] = CAR
    a = _box_mask(sem.shape, slice(4, 5), slice(4, 5))
    b = _box_mask(sem.shape, slice(0, 1), slice(0, 1))
    r = fuse_heuristic(sem, _inst([a, b], [CAR, CAR], [0.9, 0.8]), min_new_instance_area=10_000)
    ring = sem == CAR
    ring[4, 4] = False
    assert (r.instance[ring] == 2).all()
    assert r.instance[4, 4] == 1


def test_region_growing_splits_between_two_instances_by_distance() -> None:
    sem = np.full((3, 12), CAR, np.uint8)
    a = _box_mask(sem.shape, slice(0, 3), slice(0, 2))
    b = _box_mask(sem.shape, slice(0, 3), slice(10, 12))
    r = fuse_heuristic(sem, _inst([a, b], [CAR, TRUCK], [0.9, 0.8]))
    assert (r.instance[:, 0:5] == 1).all() and (r.instance[:, 7:12] == 2).all()
    assert (r.semantic[:, 0:5] == CAR).all() and (r.semantic[:, 7:12] == TRUCK).all()


def test_region_growing_nearest_in_bfs_steps() -> None:
    # Pixel (3, 3) is 6 BFS steps (4-neighbourhood) from A at (0, 0) and 5 from B at (3, 8);
    # straight-line Euclidean distance would prefer A (4.2 < 5).
    sem = np.full((4, 9), CAR, np.uint8)
    a = _box_mask(sem.shape, slice(0, 1), slice(0, 1))
    b = _box_mask(sem.shape, slice(3, 4), slice(8, 9))
    r = fuse_heuristic(sem, _inst([a, b], [CAR, CAR], [0.9, 0.8]))
    assert r.instance[3, 3] == 2 and r.instance[0, 1] == 1
    assert (r.instance > 0).all()


def test_isolated_segment_new_instance_only_above_area_threshold() -> None:
    sem = np.full((20, 30), ROAD, np.uint8)
    sem[2:12, 2:12] = CAR  # 100 px, no detection
    sem[2:6, 20:24] = PERSON  # 16 px, no detection
    sem[14:18, 2:5] = TRUCK  # 12 px, no detection
    r = fuse_heuristic(sem, Instances.empty(20, 30), min_new_instance_area=50)
    assert (r.instance[2:12, 2:12] == 1).all()
    assert (r.instance[2:6, 20:24] == 0).all() and (r.instance[14:18, 2:5] == 0).all()
    assert (r.semantic[2:6, 20:24] == PERSON).all() and (r.semantic[14:18, 2:5] == TRUCK).all()
    new = [s for s in r.segments if s["instance"] == 1]
    assert new == [
        {
            "id": CAR * 1000 + 1,
            "train_id": CAR,
            "instance": 1,
            "is_thing": True,
            "area": 100,
            "score": None,
            "source": "semantic",
        }
    ]
    r2 = fuse_heuristic(sem, Instances.empty(20, 30), min_new_instance_area=101)
    assert r2.instance.max() == 0


def test_new_instance_takes_majority_class() -> None:
    sem = np.full((10, 10), ROAD, np.uint8)
    sem[0:6, 0:10] = TRUCK
    sem[0:2, 0:10] = CAR  # 20 car px vs 40 truck px, one vehicle segment
    r = fuse_heuristic(sem, Instances.empty(10, 10), min_new_instance_area=10)
    assert (r.instance[0:6] == 1).all() and (r.semantic[0:6] == TRUCK).all()


def test_overlapping_masks_resolved_by_score() -> None:
    sem = np.full((6, 10), CAR, np.uint8)
    a = _box_mask(sem.shape, slice(0, 6), slice(0, 6))
    b = _box_mask(sem.shape, slice(0, 6), slice(4, 10))
    # b scores higher: it owns the overlap (cols 4-5) and gets instance 1.
    r = fuse_heuristic(sem, _inst([a, b], [CAR, TRUCK], [0.6, 0.9]))
    assert (r.instance[:, 4:10] == 1).all() and (r.instance[:, 0:4] == 2).all()
    assert (r.semantic[:, 4:10] == TRUCK).all() and (r.semantic[:, 0:4] == CAR).all()


def test_equal_scores_are_deterministic() -> None:
    sem = np.full((6, 10), CAR, np.uint8)
    a = _box_mask(sem.shape, slice(0, 6), slice(0, 6))
    b = _box_mask(sem.shape, slice(0, 6), slice(4, 10))
    inst = _inst([a, b], [CAR, TRUCK], [0.7, 0.7])
    r1, r2 = fuse_heuristic(sem, inst), fuse_heuristic(sem, inst)
    # Ties go to the earlier detection.
    assert (r1.instance[:, 0:6] == 1).all() and (r1.instance[:, 6:] == 2).all()
    np.testing.assert_array_equal(r1.panoptic, r2.panoptic)
    assert r1.segments == r2.segments


def test_score_threshold_drops_weak_detections() -> None:
    sem = np.full((4, 4), CAR, np.uint8)
    mask = np.ones((4, 4), bool)
    r = fuse_heuristic(sem, _inst([mask], [CAR], [0.3]), min_new_instance_area=10_000)
    assert r.instance.max() == 0 and not any(s["source"] == "detection" for s in r.segments)


def test_segments_cover_every_non_void_pixel_once() -> None:
    sem = np.full((8, 8), SKY, np.uint8)
    sem[4:, :] = ROAD
    sem[3:7, 1:5] = CAR
    sem[0, 0] = 255
    mask = _box_mask(sem.shape, slice(3, 7), slice(1, 4))
    r = fuse_heuristic(sem, _inst([mask], [CAR], [0.9]))
    assert sum(s["area"] for s in r.segments) == 63
    ids = {s["id"] for s in r.segments}
    assert ids == set(np.unique(r.panoptic[sem != 255]).tolist())
    seg = next(s for s in r.segments if s["instance"] == 1)
    assert seg["area"] == 16 and seg["score"] == pytest.approx(0.9) and seg["source"] == "detection"


def test_heuristic_invariants_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        sem = rng.choice(np.array([ROAD, BUILDING, PERSON, RIDER, CAR, TRUCK]), size=(24, 32))
        sem = ndimage.median_filter(sem.astype(np.uint8), size=3)
        masks = rng.random((4, 24, 32)) < 0.5
        labels = rng.choice(np.array([PERSON, CAR, TRUCK, RIDER]), size=4)
        r = fuse_heuristic(
            sem,
            Instances(masks, labels, rng.random(4)),
            score_threshold=0.0,
            min_new_instance_area=10**6,
        )
        cat = np.array([CITYSCAPES.train_category[c] if c < 19 else "void" for c in range(256)])
        thing = np.isin(sem, CITYSCAPES.thing_train_ids)
        # Background untouched, instance pixels keep their semantic category.
        np.testing.assert_array_equal(r.semantic[~thing], sem[~thing])
        assert (r.instance[~thing] == 0).all()
        assert (cat[r.semantic] == cat[sem]).all()
        # A foreground pixel gets an instance exactly when its same-category component holds a
        # detection pixel (reference: scipy labelling per category).
        seedable = np.zeros(sem.shape, bool)
        for m, c in zip(masks, labels, strict=True):
            seedable |= m & (cat[sem] == cat[c])
        for name in ("human", "vehicle"):
            lab, _ = ndimage.label(cat[sem] == name)
            expect = np.isin(lab, lab[seedable & (lab > 0)]) & (lab > 0)
            np.testing.assert_array_equal(r.instance[lab > 0] > 0, expect[lab > 0])


def test_panoptic_encoding_round_trips() -> None:
    rng = np.random.default_rng(1)
    sem = rng.integers(0, 19, size=(5, 7)).astype(np.uint8)
    sem[0, 0] = 255
    inst = rng.integers(0, 1000, size=(5, 7)).astype(np.uint16)
    pan = encode_panoptic(sem, inst)
    assert pan.dtype == np.int32 and pan[0, 0] == 255_000 + int(inst[0, 0])
    s2, i2 = decode_panoptic(pan)
    np.testing.assert_array_equal(s2, sem)
    np.testing.assert_array_equal(i2, inst)
    with pytest.raises(ValueError, match="instance index"):
        encode_panoptic(sem, np.full((5, 7), 1000, np.uint16))


def test_colorize_panoptic_stuff_colour_and_distinct_instance_shades() -> None:
    sem = np.array([[ROAD, CAR, CAR, CAR]], np.uint8)
    inst = np.array([[0, 0, 1, 2]], np.uint16)
    rgb = colorize_panoptic(encode_panoptic(sem, inst))
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], CITYSCAPES.train_colors[ROAD])
    np.testing.assert_array_equal(rgb[0, 1], CITYSCAPES.train_colors[CAR])
    assert len({tuple(rgb[0, j]) for j in range(1, 4)}) == 3
    # A shade stays near its class colour and is the same on every call.
    assert np.abs(rgb[0, 2].astype(int) - CITYSCAPES.train_colors[CAR]).max() <= 60
    np.testing.assert_array_equal(rgb, colorize_panoptic(encode_panoptic(sem, inst)))


def test_baseline_skips_overlapping_and_voids_unclaimed_things() -> None:
    sem = np.full((10, 10), ROAD, np.uint8)
    sem[0:2] = SKY  # 20 px of sky: below the stuff threshold
    sem[5:10, 0:3] = PERSON  # thing pixels no instance claims
    a = _box_mask(sem.shape, slice(2, 6), slice(2, 8))  # 24 px
    b = _box_mask(sem.shape, slice(2, 6), slice(3, 8))  # 20 px, all inside a
    c = _box_mask(sem.shape, slice(5, 7), slice(6, 10))  # 8 px, 2 overlap a (25 %)
    inst = _inst([a, b, c], [CAR, CAR, TRUCK], [0.9, 0.8, 0.7])
    r = fuse_baseline(sem, inst, overlap_threshold=0.5, stuff_area_threshold=25)
    assert (r.instance[a] == 1).all()
    assert r.instance.max() == 2  # b skipped (100 % overlap), c kept as instance 2
    assert (r.instance[6, 6:10] == 2).all() and (r.instance[5, 8:10] == 2).all()
    assert (r.semantic[a] == CAR).all() and (r.semantic[6, 6:10] == TRUCK).all()
    assert (r.semantic[0:2] == 255).all()  # small stuff -> void
    free_person = (sem == PERSON) & (r.instance == 0)
    assert free_person.any() and (r.semantic[free_person] == 255).all()
    assert (r.semantic[8:10, 5:10] == ROAD).all()


def test_fuse_dispatch_and_errors() -> None:
    sem = np.full((4, 4), CAR, np.uint8)
    inst = _inst([np.ones((4, 4), bool)], [CAR], [0.9])
    assert set(FUSION_METHODS) == {"heuristic", "baseline"}
    np.testing.assert_array_equal(fuse("heuristic", sem, inst).panoptic, 13001)
    np.testing.assert_array_equal(fuse("baseline", sem, inst).panoptic, 13001)
    with pytest.raises(ValueError, match="baseline, heuristic"):
        fuse("nearest", sem, inst)
    with pytest.raises(ValueError, match="overlap_threshold"):
        fuse("heuristic", sem, inst, overlap_threshold=0.5)
    r = fuse("heuristic", sem, inst, score_threshold=0.95)
    assert r.instance.max() == 0
    # resolved once (the pipeline binds it at construction): the same bound options every call
    strict = fusion_method("heuristic", score_threshold=0.95)
    for _ in range(2):
        np.testing.assert_array_equal(strict(sem, inst).panoptic, r.panoptic)
    with pytest.raises(ValueError, match="unknown option"):
        fusion_method("baseline", min_new_instance_area=4)
    with pytest.raises(ValueError, match="not thing trainIds"):
        fuse_heuristic(sem, _inst([np.ones((4, 4), bool)], [ROAD], [0.9]))
    with pytest.raises(ValueError, match="masks are"):
        fuse_heuristic(sem, _inst([np.ones((4, 5), bool)], [CAR], [0.9]))
    with pytest.raises(ValueError, match="one K"):
        Instances(np.ones((2, 4, 4), bool), np.array([CAR]), np.array([0.9]))
