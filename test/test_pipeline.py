"""The ROS-free pipeline: semantic path and the panoptic path with a hand-made ASP engine."""

import numpy as np

from seg_perception.labels import CITYSCAPES, PANOPTIC_DIVISOR
from seg_perception.panoptic import decode_panoptic
from seg_perception.pipeline import PanopticSettings, Pipeline

CAR = CITYSCAPES.train_id("car")
TRUCK = CITYSCAPES.train_id("truck")
ROAD = CITYSCAPES.train_id("road")


class ConstantSemantic:
    """A semantic engine whose class map is fixed (network resolution 32x64)."""

    name = "constant"
    input_hw = (32, 64)
    num_classes = 19
    max_batch = 1

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.seen = []

    def infer(self, images):
        self.seen.append(images.copy())
        return {"class_ids": self.ids[None], "confidence": np.ones((1, 32, 64), np.float32)}

    def warmup(self, runs=1):
        pass

    def close(self):
        pass


class OneCarASP:
    """An ASP engine (network 64x128) that detects one car filling its box, plus a weak one."""

    name = "asp"
    input_hw = (64, 128)
    num_classes = 19
    max_batch = 1

    def infer(self, images):
        assert images.shape == (1, 64, 128, 3)
        sem = np.full((64, 128), ROAD, np.uint8)
        return {
            "boxes": np.array([[32, 16, 64, 48], [0, 0, 8, 8]], np.float32),  # network pixels
            "labels": np.array([CAR, CAR]),
            "scores": np.array([0.9, 0.1], np.float32),  # the second is below the threshold
            "masks": np.ones((2, 1, 28, 28), np.float32),
            "semantic_ids": sem,
        }

    def warmup(self, runs=1):
        pass

    def close(self):
        pass


def _semantic_map():
    ids = np.full((32, 64), ROAD, np.uint8)
    ids[8:24, 16:32] = TRUCK  # the real-time net calls the car region "truck"
    return ids


def test_semantic_outputs_at_input_resolution_and_only_requested():
    engine = ConstantSemantic(_semantic_map())
    pipe = Pipeline(engine, CITYSCAPES)
    rgb = np.random.default_rng(0).integers(0, 255, (128, 256, 3), dtype=np.uint8)
    out = pipe.run(rgb, {"semantic"})
    assert out.semantic.shape == (128, 256)
    assert engine.seen[0].shape == (1, 32, 64, 3)  # resized to the network input
    np.testing.assert_array_equal(out.semantic[::4, ::4], _semantic_map())
    assert out.semantic_color is None and out.overlay is None
    out = pipe.run(rgb)
    np.testing.assert_array_equal(out.semantic_color, CITYSCAPES.colorize(out.semantic))


def test_panoptic_path_scales_boxes_and_fuses_with_realtime_semantic():
    engine = ConstantSemantic(_semantic_map())
    pipe = Pipeline(
        engine,
        CITYSCAPES,
        panoptic_engine=OneCarASP(),
        panoptic=PanopticSettings.from_config(score_threshold=0.5, min_new_instance_area=10),
    )
    rgb = np.zeros((128, 256, 3), np.uint8)
    semantic = pipe.run(rgb, {"semantic"}).semantic
    out = pipe.run_panoptic(rgb, semantic)
    r = out.result
    assert r.instance.shape == (128, 256) and r.instance.dtype == np.uint16
    assert r.panoptic.dtype == np.int32
    # the box (32,16)-(64,48) at 64x128 is (64,32)-(128,96) at 128x256; the truck pixels under
    # the car mask become the instance's class (the detector classifies the object as a whole)
    assert r.instance[40, 70] == 1 and r.semantic[40, 70] == CAR
    assert r.panoptic[40, 70] == CAR * PANOPTIC_DIVISOR + 1
    assert r.instance[5, 5] == 0 and r.semantic[5, 5] == ROAD  # weak detection ignored
    train, inst = decode_panoptic(r.panoptic)
    np.testing.assert_array_equal(inst, r.instance)
    np.testing.assert_array_equal(train, r.semantic)
    assert out.panoptic_color.shape == (128, 256, 3)
    assert {"panoptic_engine", "fusion", "paste"} <= set(out.timings_ms)


def test_panoptic_semantic_source_asp_uses_the_asp_semantic_head():
    pipe = Pipeline(
        ConstantSemantic(_semantic_map()),
        CITYSCAPES,
        panoptic_engine=OneCarASP(),
        panoptic=PanopticSettings.from_config(semantic_source="asp"),
    )
    out = pipe.run_panoptic(np.zeros((128, 256, 3), np.uint8), None)
    # the ASP semantic head says road everywhere: car mask pixels on background are deleted
    assert out.result.instance.max() == 0
    assert (out.result.semantic == ROAD).all()


def test_panoptic_settings_come_from_the_config():
    from seg_perception.config import default_config_path, load_config, read_params_file

    shipped = read_params_file(default_config_path())
    default = PanopticSettings.from_config()
    assert default.score_threshold == shipped["panoptic.score_threshold"]
    assert default.min_new_instance_area == shipped["fusion.min_new_instance_area"]
    assert default.method == shipped["fusion.method"]
    assert default.semantic_source == shipped["fusion.semantic_source"]
    cfg = load_config(overrides={"panoptic.score_threshold": 0.25, "fusion.method": "baseline"})
    given = PanopticSettings.from_config(cfg, min_new_instance_area=7)
    assert (given.score_threshold, given.method) == (0.25, "baseline")
    assert given.min_new_instance_area == 7
