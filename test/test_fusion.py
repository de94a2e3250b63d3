"""Panoptic fusion: one hand-built array per rule of the heuristic, the baseline, encodings."""

from __future__ import annotations

from collections import deque

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
from seg_perception.metrics import PanopticQuality

ROAD, BUILDING, SKY = 0, 2, 10
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 11, 12, 13, 14, 15, 18


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


def _reference_growth(sem: np.ndarray, inst: Instances, connectivity: int) -> np.ndarray:
    """The paper's steps 3 and 4 written plainly: matching, then per instance a breadth-first
    search from its pixels through unlabelled pixels of its category; each unlabelled pixel
    goes to the instance with the fewest steps, ties to the stronger one (0: none reaches)."""
    cat = np.array([CITYSCAPES.train_category[c] if c < 19 else "" for c in range(256)])
    thing = np.isin(sem, CITYSCAPES.thing_train_ids)
    out = np.zeros(sem.shape, np.int64)
    order = []  # detections that keep pixels, strongest first: instances 1, 2, ...
    for i in np.argsort(-inst.scores, kind="stable"):
        keep = inst.masks[i] & thing & (cat[sem] == cat[inst.labels[i]]) & (out == 0)
        if keep.any():
            order.append(i)
            out[keep] = len(order)
    unl = thing & (out == 0)
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    h, w = sem.shape
    best = np.full(sem.shape, np.inf)
    grown = out.copy()
    for n, i in enumerate(order, start=1):
        dist = np.full(sem.shape, np.inf)
        queue = deque()
        for y, x in zip(*np.nonzero(out == n), strict=True):
            dist[y, x] = 0
            queue.append((y, x))
        while queue:
            y, x = queue.popleft()
            for dy, dx in steps:
                v, u = y + dy, x + dx
                if not (0 <= v < h and 0 <= u < w) or dist[v, u] < np.inf:
                    continue
                if unl[v, u] and cat[sem[v, u]] == cat[inst.labels[i]]:
                    dist[v, u] = dist[y, x] + 1
                    queue.append((v, u))
        closer = unl & (dist < best)  # strictly: an equal later (weaker) one does not win
        grown[closer] = n
        best = np.minimum(best, dist)
    return grown


def test_region_growing_follows_paths_around_a_barrier() -> None:
    # The case: a 7x12 car map, a road barrier (column 5, rows 0-5) between two seeds.
    # A holds column 4 rows 0-2, B column 11 rows 0-2. Pixel (0, 6) is 2 px from A in a straight
    # line but 12 steps around the barrier, and 5 from B: no pixel may go across the barrier.
    sem = np.full((7, 12), CAR, np.uint8)
    sem[0:6, 5] = ROAD
    a = _box_mask(sem.shape, slice(0, 3), slice(4, 5))
    b = _box_mask(sem.shape, slice(0, 3), slice(11, 12))
    inst = _inst([a, b], [CAR, CAR], [0.9, 0.8])
    r = fuse_heuristic(sem, inst, min_new_instance_area=10_000)
    assert (r.instance[0:5, 6:] == 2).all()  # beyond the barrier: B's paths are the short ones
    assert (r.instance[:, 0:5] == 1).all()
    assert r.instance[5, 6] == 1  # just past the gap: 7 steps from A, 8 from B
    np.testing.assert_array_equal(r.instance, _reference_growth(sem, inst, 4))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_region_growing_thin_pole_between_two_cars(connectivity: int) -> None:
    # Two touching cars, a pole (1 px wide, rows 0-8 of 10) standing in front of their joint.
    # A's mask stops 1 px left of the pole, B's 4 px right of it: pixel (0, 8) is 3 px from A
    # in a straight line, 21 steps around the pole's foot, and 4 from B.
    pole = 5  # trainId of "pole"
    sem = np.full((10, 16), CAR, np.uint8)
    sem[0:9, 7] = pole
    a = _box_mask(sem.shape, slice(0, 10), slice(0, 6))
    b = _box_mask(sem.shape, slice(0, 10), slice(12, 16))
    inst = _inst([a, b], [CAR, CAR], [0.9, 0.8])
    r = fuse_heuristic(sem, inst, min_new_instance_area=10_000, connectivity=connectivity)
    assert (r.instance[0:5, 8:12] == 2).all()  # right of the pole: B
    assert (r.instance[0:9, 6] == 1).all()  # left of it: A
    assert (r.instance[sem == pole] == 0).all() and (r.semantic[sem == pole] == pole).all()
    np.testing.assert_array_equal(r.instance, _reference_growth(sem, inst, connectivity))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_region_growing_equals_plain_bfs_on_random_maps(connectivity: int) -> None:
    rng = np.random.default_rng(7 + connectivity)
    for _ in range(8):
        sem = rng.choice(np.array([ROAD, BUILDING, PERSON, RIDER, CAR, TRUCK]), size=(20, 28))
        sem = ndimage.median_filter(sem.astype(np.uint8), size=3)
        sem[rng.random(sem.shape) < 0.08] = ROAD  # scattered barriers
        k = int(rng.integers(2, 6))
        masks = np.zeros((k, 20, 28), bool)
        for j in range(k):  # small blobs: most foreground is left to region growing
            y, x = rng.integers(0, 18), rng.integers(0, 26)
            masks[j, y : y + 3, x : x + 3] = True
        labels = rng.choice(np.array([PERSON, RIDER, CAR, TRUCK]), size=k)
        inst = Instances(masks, labels, rng.choice([0.6, 0.7, 0.8], size=k))  # with ties
        r = fuse_heuristic(
            sem, inst, score_threshold=0.0, min_new_instance_area=10**6, connectivity=connectivity
        )
        np.testing.assert_array_equal(r.instance, _reference_growth(sem, inst, connectivity))


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


def test_new_instances_are_formed_per_class() -> None:
    # Paper: isolated segments get "the semantic subcategory label from semantic segmentation"
    # and a new instance ID: one vehicle segment of car and truck pixels is a car and a truck.
    sem = np.full((10, 10), ROAD, np.uint8)
    sem[0:6, 0:10] = TRUCK
    sem[0:2, 0:10] = CAR  # 20 car px above 40 truck px, one vehicle segment
    r = fuse_heuristic(sem, Instances.empty(10, 10), min_new_instance_area=10)
    assert (r.instance[0:2] == 1).all() and (r.instance[2:6] == 2).all()
    np.testing.assert_array_equal(r.semantic, sem)  # each keeps its own class
    assert [(s["train_id"], s["instance"], s["area"]) for s in r.segments if s["is_thing"]] == [
        (CAR, 1, 20),
        (TRUCK, 2, 40),
    ]


def test_adjacent_person_and_rider_become_two_instances() -> None:
    # A person standing next to a rider, neither detected: one human segment, two classes.
    sem = np.full((12, 16), ROAD, np.uint8)
    sem[2:10, 2:7] = PERSON  # 40 px
    sem[2:10, 7:13] = RIDER  # 48 px, touching the person along a column
    sem[10:12, 7:9] = RIDER  # 4 more rider px
    r = fuse_heuristic(sem, Instances.empty(12, 16), min_new_instance_area=30)
    person, rider = sem == PERSON, sem == RIDER
    assert len(np.unique(r.instance[person])) == 1 and r.instance[person][0] > 0
    assert len(np.unique(r.instance[rider])) == 1 and r.instance[rider][0] > 0
    assert r.instance[person][0] != r.instance[rider][0]
    np.testing.assert_array_equal(r.semantic, sem)
    classes = {s["instance"]: s["train_id"] for s in r.segments if s["is_thing"]}
    assert classes == {int(r.instance[person][0]): PERSON, int(r.instance[rider][0]): RIDER}


def test_new_instance_threshold_applies_per_class_segment() -> None:
    # Two person pieces joined only through rider pixels are two segments of the person class:
    # each is below the threshold, so neither becomes an instance, while the rider does.
    sem = np.full((10, 20), ROAD, np.uint8)
    sem[2:8, 2:6] = PERSON  # 24 px
    sem[2:8, 6:14] = RIDER  # 48 px
    sem[2:8, 14:18] = PERSON  # 24 px
    r = fuse_heuristic(sem, Instances.empty(10, 20), min_new_instance_area=30)
    assert (r.instance[sem == PERSON] == 0).all()
    assert (r.instance[sem == RIDER] == 1).all()
    assert r.instance.max() == 1


def test_new_instance_spans_tiles_and_scattered_noise_stays_void() -> None:
    # A missed car of 100x150 px is one new instance, however many 64x64 tiles it covers; 40
    # scattered car blobs of 9 px are 360 px together but each far below the threshold.
    sem = np.full((300, 400), ROAD, np.uint8)
    sem[100:200, 120:270] = CAR
    rng = np.random.default_rng(3)
    noise = np.zeros(sem.shape, bool)
    for y, x in zip(rng.integers(0, 290, 40), rng.integers(0, 110, 40), strict=True):
        noise[y : y + 3, x : x + 3] = True
    sem[noise] = CAR
    car = np.zeros(sem.shape, bool)
    car[100:200, 120:270] = True
    r = fuse_heuristic(sem, Instances.empty(300, 400), min_new_instance_area=200)
    assert (r.instance[car] == 1).all() and r.instance.max() == 1
    assert (r.instance[noise] == 0).all() and (r.panoptic[noise] == 255 * 1000).all()


def test_results_do_not_share_memory_between_calls() -> None:
    # The fusion keeps frame-sized work buffers between calls; its results are its own.
    sem = np.full((8, 8), CAR, np.uint8)
    first = fuse_heuristic(sem, _inst([np.ones((8, 8), bool)], [CAR], [0.9]))
    kept = (first.semantic.copy(), first.instance.copy(), first.panoptic.copy())
    fuse_heuristic(
        np.full((8, 8), PERSON, np.uint8), _inst([np.ones((8, 8), bool)], [PERSON], [0.9])
    )
    for a, b in zip((first.semantic, first.instance, first.panoptic), kept, strict=True):
        np.testing.assert_array_equal(a, b)


def test_small_leftover_thing_pixels_are_void_in_panoptic_and_segments() -> None:
    # Paper: the size threshold is there "to avoid the instance labeling of small foreground
    # noise segments". Such pixels keep their class in the semantic map, have no instance, and
    # are void in the panoptic map and the segments, as PQ scores them.
    sem = np.full((10, 10), ROAD, np.uint8)
    sem[1:3, 1:3] = CAR  # 4 px of noise, no detection
    sem[5:9, 5:9] = PERSON  # 16 px, detected
    det = _box_mask(sem.shape, slice(5, 9), slice(5, 9))
    r = fuse_heuristic(sem, _inst([det], [PERSON], [0.9]), min_new_instance_area=10)
    noise = sem == CAR
    assert (r.semantic[noise] == CAR).all() and (r.instance[noise] == 0).all()
    assert (r.panoptic[noise] == 255 * 1000).all()
    assert not any(s["train_id"] == CAR for s in r.segments)
    # Segments and panoptic map describe the same segments, void apart.
    ids = set(np.unique(r.panoptic).tolist()) - {255 * 1000}
    assert {s["id"] for s in r.segments} == ids
    for seg in r.segments:
        assert seg["area"] == int((r.panoptic == seg["id"]).sum())
    # PQ against a ground truth where the noise is road: no car segment is predicted, so no
    # car false positive, as the fusion's segments say; the noise pixels only cost road IoU.
    gt = np.full(sem.shape, ROAD * 1000, np.int32)
    gt[5:9, 5:9] = PERSON * 1000 + 1
    pq = PanopticQuality(labels=CITYSCAPES)
    pq.update(r.panoptic, gt)
    per = pq.compute()["per_class"]
    assert per["car"]["fp"] == 0 and per["person"]["tp"] == 1 and per["road"]["tp"] == 1
    predicted = {CITYSCAPES.train_names[s["train_id"]] for s in r.segments}
    counted = {n for n, v in per.items() if v["tp"] + v["fp"] > 0}
    assert counted == predicted


def test_overlapping_masks_resolved_by_score() -> None:
    # The semantic map says bus in the overlap: neither detection is of that subcategory.
    sem = np.full((6, 10), CAR, np.uint8)
    sem[:, 4:6] = BUS
    a = _box_mask(sem.shape, slice(0, 6), slice(0, 6))
    b = _box_mask(sem.shape, slice(0, 6), slice(4, 10))
    # b scores higher: it owns the overlap (cols 4-5) and gets instance 1.
    r = fuse_heuristic(sem, _inst([a, b], [CAR, TRUCK], [0.6, 0.9]))
    assert (r.instance[:, 4:10] == 1).all() and (r.instance[:, 0:4] == 2).all()
    assert (r.semantic[:, 4:10] == TRUCK).all() and (r.semantic[:, 0:4] == CAR).all()


@pytest.mark.parametrize("overlap_class", [CAR, TRUCK])
def test_overlap_goes_first_to_the_detection_of_the_pixels_subcategory(overlap_class: int) -> None:
    # A strong truck mask spills over a car that has its own, weaker detection: the pixels the
    # semantic map calls car go to the car, those it calls truck to the truck, whatever the
    # scores; numbering stays by score (truck 1, car 2).
    sem = np.full((6, 12), TRUCK, np.uint8)
    sem[:, 0:4] = CAR
    sem[:, 4:6] = overlap_class
    car = _box_mask(sem.shape, slice(0, 6), slice(0, 6))
    truck = _box_mask(sem.shape, slice(0, 6), slice(2, 12))
    r = fuse_heuristic(sem, _inst([car, truck], [CAR, TRUCK], [0.7, 0.95]))
    owner = 2 if overlap_class == CAR else 1
    assert (r.instance[:, 0:4] == 2).all() and (r.instance[:, 6:] == 1).all()
    assert (r.instance[:, 4:6] == owner).all()
    assert (r.semantic[:, 4:6] == overlap_class).all()
    assert [s["train_id"] for s in r.segments if s["is_thing"]] == [TRUCK, CAR]


def test_detection_with_only_category_pixels_left_is_numbered_by_score() -> None:
    # The strong car detection keeps no car pixel in pass 1 (all its pixels are truck in the
    # semantic map and the weaker truck detection takes them); in pass 2 it takes the truck
    # pixels outside the truck mask. It still gets instance 1.
    sem = np.full((4, 10), TRUCK, np.uint8)
    car = _box_mask(sem.shape, slice(0, 4), slice(0, 10))
    truck = _box_mask(sem.shape, slice(0, 4), slice(0, 5))
    r = fuse_heuristic(sem, _inst([truck, car], [TRUCK, CAR], [0.6, 0.9]))
    assert (r.instance[:, 5:] == 1).all() and (r.semantic[:, 5:] == CAR).all()
    assert (r.instance[:, :5] == 2).all() and (r.semantic[:, :5] == TRUCK).all()
    assert [(s["instance"], s["train_id"]) for s in r.segments if s["is_thing"]] == [
        (1, CAR),
        (2, TRUCK),
    ]


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


def test_fusion_bench_runs_each_method_first_and_second_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whichever fusion touches a fresh frame first pays for bringing it into the caches; the
    # two take turns at going first, so neither always pays.
    from seg_perception.eval import fusion_bench

    calls: list[str] = []

    def recording(name: str, fn):
        def run(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(fusion_bench, "fuse_heuristic", recording("h", fuse_heuristic))
    monkeypatch.setattr(fusion_bench, "fuse_baseline", recording("b", fuse_baseline))
    r = fusion_bench.run_fusion_bench(counts=(3,), frames=3, height=96, width=192, progress=False)
    assert calls == ["h", "b", "b", "h", "h", "b"]
    assert r["fusion_ms"]["3"] > 0 and r["baseline_ms"]["3"] > 0
    assert 0 <= r["pq"]["3"]["fusion"] <= 1 and 0 <= r["miou"]["3"]["fusion"] <= 1


def test_interleaved_category_classes_and_tables_without_things() -> None:
    # A table whose categories' thing classes are not consecutive trainIds (and a stuff class
    # between them) takes the table-lookup paths; a table without thing classes has no
    # foreground at all.
    from seg_perception.labels import Label, LabelTable

    rows = [
        Label("ground", 0, 0, "flat", 1, False, False, (1, 1, 1)),
        Label("cat", 1, 1, "animal", 2, True, False, (2, 2, 2)),
        Label("van", 2, 2, "vehicle", 3, True, False, (3, 3, 3)),
        Label("dog", 3, 3, "animal", 2, True, False, (4, 4, 4)),
        Label("wall", 4, 4, "construction", 4, False, False, (5, 5, 5)),
        Label("bus", 5, 5, "vehicle", 3, True, False, (6, 6, 6)),
    ]
    table = LabelTable(tuple(rows), "pets")
    sem = np.zeros((6, 12), np.uint8)
    sem[1:5, 1:5] = 1  # cat
    sem[1:5, 3:5] = 3  # ... partly called dog: same category
    sem[1:5, 5:9] = 2  # van, right next to the animal
    sem[1:5, 9:11] = 4  # wall
    mask = _box_mask(sem.shape, slice(1, 5), slice(1, 9))  # a cat mask over cat, dog and van
    r = fuse_heuristic(sem, _inst([mask], [1], [0.9]), labels=table, min_new_instance_area=100)
    assert (r.instance[1:5, 1:5] == 1).all() and (r.semantic[1:5, 1:5] == 1).all()
    assert (r.instance[1:5, 5:9] == 0).all() and (r.semantic[1:5, 5:9] == 2).all()
    none = LabelTable((rows[0], Label("sky", 4, 1, "sky", 5, False, False, (7, 7, 7))), "no things")
    r = fuse_heuristic(np.zeros((4, 4), np.uint8), Instances.empty(4, 4), labels=none)
    assert r.instance.max() == 0 and [s["train_id"] for s in r.segments] == [0]
