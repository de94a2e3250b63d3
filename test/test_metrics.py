"""Metrics: hand-computed confusion IoU, PQ/SQ/RQ (void, crowd, FP, FN) and trimap IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg_perception.labels import CITYSCAPES
from seg_perception.metrics import PanopticQuality, SemanticMetrics, TrimapIoU
from seg_perception.panoptic import gt_panoptic

ROAD, SIDEWALK, BUILDING, SKY, PERSON, CAR = 0, 1, 2, 10, 11, 13
VOID = 255


def _pan(sem: np.ndarray, inst: np.ndarray | int = 0) -> np.ndarray:
    return sem.astype(np.int32) * 1000 + np.asarray(inst, np.int32)


# ----------------------------------------------------------------------------- semantic


def test_semantic_iou_by_hand_and_ignore() -> None:
    gt = np.array([[ROAD, ROAD, ROAD, SKY], [SKY, SKY, VOID, VOID]], np.uint8)
    pred = np.array([[ROAD, ROAD, SKY, SKY], [SKY, ROAD, ROAD, CAR]], np.uint8)
    m = SemanticMetrics()
    m.update(pred, gt)
    r = m.compute()
    # road: tp 2, fp 1 (gt sky), fn 1 -> 2/4; sky: tp 2, fp 1, fn 1 -> 2/4. Void ignored.
    assert r["iou"]["road"] == pytest.approx(0.5) and r["iou"]["sky"] == pytest.approx(0.5)
    assert math.isnan(r["iou"]["car"])  # void-only prediction: not present
    assert r["miou"] == pytest.approx(0.5)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6) and r["num_pixels"] == 6
    # Categories: flat (road) and sky, same numbers here.
    assert r["category_iou"]["flat"] == pytest.approx(0.5)
    assert math.isnan(r["category_iou"]["vehicle"])


def test_semantic_void_pixels_never_change_result_and_void_pred_is_a_miss() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, size=(16, 16)).astype(np.uint8)
    pred = gt.copy()
    gt2, pred2 = gt.copy(), pred.copy()
    gt2[:4] = VOID
    pred2[:4] = rng.integers(0, 19, size=(4, 16))
    a, b = SemanticMetrics(), SemanticMetrics()
    a.update(pred[4:], gt[4:])
    b.update(pred2, gt2)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert b.compute()["miou"] == 1.0
    pred2[5, 5] = VOID  # a void prediction on a labelled pixel counts against that class
    c = SemanticMetrics()
    c.update(pred2, gt2)
    assert c.compute()["iou"][CITYSCAPES.train_names[gt2[5, 5]]] < 1.0


def test_category_iou_pools_classes() -> None:
    # car predicted as truck: class IoU 0 but vehicle category IoU 1.
    gt = np.full((4, 4), CAR, np.uint8)
    pred = np.full((4, 4), 14, np.uint8)
    m = SemanticMetrics()
    m.update(pred, gt)
    r = m.compute()
    assert r["iou"]["car"] == 0.0 and r["category_iou"]["vehicle"] == 1.0


def test_semantic_merge_equals_single_stream() -> None:
    rng = np.random.default_rng(2)
    frames = [(rng.integers(0, 19, (8, 8)), rng.integers(0, 19, (8, 8))) for _ in range(3)]
    one, a, b = SemanticMetrics(), SemanticMetrics(), SemanticMetrics()
    for i, (p, g) in enumerate(frames):
        one.update(p, g)
        (a if i < 2 else b).update(p, g)
    np.testing.assert_array_equal(a.merge(b).confusion, one.confusion)
    with pytest.raises(ValueError, match="pred shape"):
        one.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_classes=5"):
        SemanticMetrics(5)


# ----------------------------------------------------------------------------- panoptic


def _scene() -> np.ndarray:
    """gt: road bottom, sky top, two cars (ids 1, 2)."""
    gt = np.full((10, 20), SKY * 1000, np.int32)
    gt[5:] = ROAD * 1000
    gt[4:8, 2:6] = CAR * 1000 + 1
    gt[4:8, 10:16] = CAR * 1000 + 2
    return gt


def test_pq_perfect_prediction_is_one() -> None:
    gt = _scene()
    pq = PanopticQuality()
    pq.update(gt.copy(), gt)
    r = pq.compute()
    for group in ("all", "things", "stuff"):
        assert (r[group]["pq"], r[group]["sq"], r[group]["rq"]) == (1.0, 1.0, 1.0)
    assert r["things"]["n"] == 1 and r["stuff"]["n"] == 2 and r["all"]["n"] == 3
    assert r["per_class"]["car"]["tp"] == 2


def test_pq_instance_ids_need_not_agree() -> None:
    gt = _scene()
    pred = gt.copy()
    pred[gt == CAR * 1000 + 1] = CAR * 1000 + 7
    pred[gt == CAR * 1000 + 2] = CAR * 1000 + 3
    pq = PanopticQuality()
    pq.update(pred, gt)
    assert pq.compute()["all"]["pq"] == 1.0


def test_pq_one_false_positive_and_one_false_negative_by_hand() -> None:
    gt = _scene()
    pred = gt.copy()
    pred[gt == CAR * 1000 + 2] = ROAD * 1000  # car 2 missed -> FN
    pred[0:2, 0:4] = CAR * 1000 + 5  # car on the sky -> FP
    pq = PanopticQuality()
    pq.update(pred, gt)
    r = pq.compute()
    car = r["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (1, 1, 1)
    # car: SQ 1, RQ 1 / (1 + 0.5 + 0.5) = 0.5 -> PQ 0.5.
    assert car["sq"] == 1.0 and car["rq"] == pytest.approx(0.5) and car["pq"] == pytest.approx(0.5)
    # road: rows 5-9 (100 px) minus the car pixels there (12 + 18) = 70 px; pred adds the 24
    # missed car px -> 70/94. sky: rows 0-4 minus 4 + 6 car px = 90 px, pred loses 8 -> 82/90.
    road = r["per_class"]["road"]
    assert road["tp"] == 1 and road["sq"] == pytest.approx(70 / 94)
    assert r["per_class"]["sky"]["pq"] == pytest.approx(82 / 90)
    assert r["things"]["pq"] == pytest.approx(0.5)
    assert r["all"]["pq"] == pytest.approx((0.5 + 70 / 94 + 82 / 90) / 3)


def test_pq_match_needs_iou_above_half() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[:, :2] = CAR * 1000 + 1
    pred = np.zeros((4, 4), np.int32)
    pred[:, :1] = CAR * 1000 + 1  # IoU 4/8 = 0.5 exactly: no match
    pq = PanopticQuality()
    pq.update(pred, gt)
    car = pq.compute()["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (0, 1, 1)
    pred[0, 1] = CAR * 1000 + 1  # IoU 5/8
    pq.reset()
    pq.update(pred, gt)
    car = pq.compute()["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 0) and car["sq"] == pytest.approx(5 / 8)


def test_pq_void_excluded_from_iou_and_mostly_void_segments_not_fp() -> None:
    gt = np.full((10, 10), VOID * 1000, np.int32)
    gt[0:2, 0:5] = CAR * 1000 + 1  # 10 px
    pred = np.zeros((10, 10), np.int32) + VOID * 1000  # pred void: no segment
    pred[0:4, 0:5] = CAR * 1000 + 1  # 10 px on the car + 10 px on void -> IoU 1.0
    pred[6:10, 6:10] = PERSON * 1000 + 1  # entirely on void -> not a false positive
    pq = PanopticQuality()
    pq.update(pred, gt)
    r = pq.compute()
    assert r["per_class"]["car"]["sq"] == 1.0 and r["per_class"]["car"]["tp"] == 1
    assert r["per_class"]["person"]["fp"] == 0 and r["all"]["n"] == 1


def test_pq_crowd_region_not_fn_and_covering_segment_not_fp() -> None:
    gt = np.full((6, 6), ROAD * 1000, np.int32)
    gt[0:3, 0:3] = CAR * 1000  # thing class without instance id: crowd
    pred = gt.copy()
    pred[0:3, 0:3] = CAR * 1000 + 4
    pq = PanopticQuality()
    pq.update(pred, gt)
    car = pq.compute()["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (0, 0, 0)


def test_ground_truth_panoptic_ids() -> None:
    """trainIds + Cityscapes instanceIds -> what PQ scores against (one implementation for the
    trainer's validation, ``eval`` and ``bench fusion``)."""
    semantic = np.array([[0, 13, 13, 255], [11, 11, 13, 2]], np.uint8)
    instance = np.array([[7, 26000, 26000, 0], [24001, 24001, 26, 11]], np.int32)
    # k = 1..N through the frame in instanceId order; car without instance (26) is crowd, k = 0
    expected = [[0, 13002, 13002, 255000], [11001, 11001, 13000, 2000]]
    assert gt_panoptic(semantic, instance).tolist() == expected
    no_instances = [[0, 13000, 13000, 255000], [11000, 11000, 13000, 2000]]
    assert gt_panoptic(semantic, None).tolist() == no_instances
    # index 999 stays in its class; instanceIds on stuff / void pixels are ignored; two
    # instanceIds on one class (car and truck ids on pixels the labels call car) stay apart
    sem = np.array([[13, 13, 0, 255, 13]], np.uint8)
    inst = np.array([[26999, 26998, 7001, 26000, 27000]], np.int32)
    assert gt_panoptic(sem, inst).tolist() == [[13002, 13001, 0, 255000, 13003]]
    pq = PanopticQuality()
    pq.update(gt_panoptic(semantic, instance), gt_panoptic(semantic, instance))
    r = pq.compute()
    assert r["all"]["pq"] == 1.0 and r["per_class"]["car"]["tp"] == 1  # the crowd is no segment
    many = np.full((1, 1000), 13, np.uint8)
    with pytest.raises(ValueError, match="1000 instances"):
        gt_panoptic(many, 26000 + np.arange(1000, dtype=np.int32)[None])


def test_pq_merge_equals_single_stream() -> None:
    gt = _scene()
    pred = gt.copy()
    pred[0:2, 0:4] = CAR * 1000 + 5
    one, a, b = PanopticQuality(), PanopticQuality(), PanopticQuality()
    one.update(pred, gt)
    one.update(gt, gt)
    a.update(pred, gt)
    b.update(gt, gt)
    a.merge(b)
    for field in ("tp", "fp", "fn", "iou_sum"):
        np.testing.assert_array_equal(getattr(a, field), getattr(one, field))
    assert a.compute()["all"] == one.compute()["all"]


# ----------------------------------------------------------------------------- trimap


def _halves(boundary: int) -> np.ndarray:
    m = np.full((32, 32), SIDEWALK, np.uint8)
    m[:, :boundary] = ROAD
    return m


def test_trimap_perfect_prediction_is_one_at_every_band() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(40, 40)).astype(np.uint8)
    gt[:5] = VOID
    t = TrimapIoU()
    t.update(gt.copy(), gt)
    r = t.compute()
    assert r["bands"] == [2, 4, 8, 16, 32] and r["miou"] == [1.0] * 5


def test_trimap_one_pixel_shift_hurts_nearest_band_most() -> None:
    gt = _halves(16)  # road cols 0-15, sidewalk cols 16-31
    pred = _halves(17)  # boundary shifted one pixel right
    t = TrimapIoU()
    t.update(pred, gt)
    r = t.compute()
    # Band 2: road cols 14-15 (+ col 16 predicted road) -> 2/3; sidewalk cols 16-17, only 17
    # predicted -> 1/2. Band 4: road 4/5, sidewalk 3/4.
    assert r["miou"][0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["miou"][1] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert r["miou"][0] < r["miou"][1] < r["miou"][2] < r["miou"][3]
    # The widest band holds every pixel: it equals the plain confusion IoU.
    s = SemanticMetrics()
    s.update(pred, gt)
    assert r["miou"][-1] == pytest.approx(s.compute()["miou"])


def test_trimap_bands_follow_distance_to_other_labels_only() -> None:
    t = TrimapIoU(bands=(1, 3))
    gt = _halves(16)
    band = t.band_index(gt)
    assert (band[:, 15] == 0).all() and (band[:, 16] == 0).all()  # next to the boundary
    assert (band[:, 13] == 1).all() and (band[:, 12] == 2).all()  # 3 px / 4 px away
    gt2 = np.full((8, 8), ROAD, np.uint8)  # no boundary at all: the image border is none
    assert (t.band_index(gt2) == 2).all()
    gt2[0, 0] = VOID  # void is another label
    b2 = t.band_index(gt2)
    assert b2[0, 0] == 2 and b2[0, 1] == 0 and b2[1, 1] == 1


def test_trimap_merge_and_validation() -> None:
    a, b, one = TrimapIoU(), TrimapIoU(), TrimapIoU()
    for t, (p, g) in ((a, (_halves(17), _halves(16))), (b, (_halves(10), _halves(12)))):
        t.update(p, g)
        one.update(p, g)
    np.testing.assert_array_equal(a.merge(b).confusion, one.confusion)
    with pytest.raises(ValueError, match="bands"):
        TrimapIoU(bands=(4, 2))


def test_pq_thing_pixels_without_instance_claim_no_segment():
    from seg_perception.metrics import PanopticQuality

    car = CITYSCAPES.train_id("car")
    road = CITYSCAPES.train_id("road")
    gt = np.full((20, 20), road * 1000, np.int32)
    gt[2:8, 2:8] = car * 1000 + 1
    pred = gt.copy()
    pred[12:15, 12:15] = car * 1000  # a small "car" segment without an instance id
    pq = PanopticQuality()
    pq.update(pred, gt)
    res = pq.compute()["per_class"]["car"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 0, 0)
    pred[12:15, 12:15] = car * 1000 + 2  # the same pixels as an instance: a false positive
    pq = PanopticQuality()
    pq.update(pred, gt)
    assert pq.compute()["per_class"]["car"]["fp"] == 1
