"""The shipped models in models/: what the node loads by default, and that they segment.

The frames are the package's own synthetic streets from the validation sequence (seed 7), which
no recipe trains on. The floors sit far above what random weights score (mIoU ~0.03, PQ ~0)
and well below what each file scored on the 200 validation frames (models/README.md), so a file
that was swapped, truncated, loaded into the wrong network or preprocessed differently fails.
"""

import os

import pytest
from safetensors import safe_open

from seg_perception import config as cfgmod
from seg_perception.data.synth import generate_frames
from seg_perception.labels import CITYSCAPES
from seg_perception.metrics import PanopticQuality, SemanticMetrics
from seg_perception.networks.export import stored_switches
from seg_perception.panoptic import gt_panoptic
from seg_perception.pipeline import build_pipeline

BUDGET_MB = 40.0  # all shipped weights together (issue 14)
# mIoU floors on two 512x1024 validation frames (see the module docstring)
SEMANTIC_FLOOR = {"gun": 0.45, "shelfnet": 0.10}
PQ_FLOOR = 0.25


def _shipped() -> dict[str, object]:
    cfg = cfgmod.load_config()
    files = {m: cfgmod.resolve_path(w) for m, w in cfgmod.SHIPPED_WEIGHTS.items()}
    files["panoptic_asp"] = cfgmod.resolve_path(cfg.panoptic.weights)
    return files


def test_shipped_files_are_fp16_safetensors_of_their_model_within_the_budget():
    files = _shipped()
    assert cfgmod.load_config().semantic_weights() == cfgmod.SHIPPED_WEIGHTS["gun"]
    total = 0
    for model, path in files.items():
        assert path.suffix == ".safetensors" and path.is_file(), path
        with safe_open(str(path), framework="numpy") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (not a dict)
        assert dtypes <= {"F16", "I64"} and "F16" in dtypes, (path, dtypes)
        stored, switches = stored_switches(path)
        assert stored == model, (path, stored)
        assert switches, f"{path}: no builder switches stored"
        total += os.path.getsize(path)
    assert total / 2**20 <= BUDGET_MB, f"shipped weights take {total / 2**20:.1f} MB"


def _config(**overrides):
    base = {
        "backend": "torch",
        "threads": 2,
        "warmup_frames": 0,
        "engine_cache": os.environ["SEG_TEST_ENGINE_CACHE"],
    }
    return cfgmod.load_config(overrides={**base, **overrides})


@pytest.mark.parametrize("model", ["gun", "shelfnet"])
def test_shipped_realtime_net_segments_validation_streets(model):
    pipeline = build_pipeline(_config(model=model, **{"panoptic.enabled": False}), CITYSCAPES)
    metrics = SemanticMetrics(labels=CITYSCAPES)
    try:
        for frame in generate_frames(2, seed=7, height=512, width=1024):
            out = pipeline.run(frame.image, want=("semantic",))
            assert out.semantic.shape == frame.semantic.shape
            metrics.update(out.semantic, frame.semantic)
    finally:
        pipeline.engine.close()
    miou = metrics.compute()["miou"]
    assert miou >= SEMANTIC_FLOOR[model], f"{model}: mIoU {miou:.3f}"


def test_shipped_asp_model_with_fusion_finds_the_instances():
    pipeline = build_pipeline(_config(), CITYSCAPES)
    pq = PanopticQuality(CITYSCAPES)
    try:
        for frame in generate_frames(2, seed=7, height=512, width=1024):
            semantic = pipeline.run(frame.image, want=("semantic",)).semantic
            result = pipeline.run_panoptic(frame.image, semantic).result
            pq.update(result.panoptic, gt_panoptic(frame.semantic, frame.instance))
    finally:
        pipeline.engine.close()
        pipeline.panoptic_engine.close()
    scores = pq.compute()
    assert scores["all"]["pq"] >= PQ_FLOOR, scores["all"]
    assert scores["things"]["pq"] > 0.0, scores["things"]
