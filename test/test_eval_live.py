"""``eval --live``: the node as a subprocess, played a short bag, equals the offline evaluation."""

import json
import os

import numpy as np
import pytest

from seg_perception.config import default_config_path, load_config
from seg_perception.data.bag_io import write_synth_bag
from seg_perception.data.synth import generate_frames
from seg_perception.eval.evaluate import build_pipeline, evaluate_bag
from seg_perception.eval.live import evaluate_live, semantic_by_stamp, typed_overrides
from seg_perception.labels import load_label_table

SEM = "/camera/segmentation/semantic"


def _params() -> dict[str, str]:
    return {
        "allow_random_weights": "true",
        "backend": "torch",
        "network_height": "32",
        "network_width": "64",
        "panoptic.enabled": "false",
        "threads": "1",
        "engine_cache": os.environ["SEG_TEST_ENGINE_CACHE"],
    }


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "synth"
    frames = generate_frames(4, seed=3, height=48, width=96)
    return write_synth_bag(path, frames, fps=2.0, compressed=False)


def test_live_outputs_equal_offline_pixel_for_pixel(bag, tmp_path):
    params = _params()
    live = evaluate_live(
        bag, tmp_path / "live", overrides=params, rate=0.5, startup_timeout=150, write_report=False
    )
    cfg = load_config(default_config_path(), typed_overrides(params))
    offline = evaluate_bag(
        bag,
        tmp_path / "offline",
        build_pipeline(cfg, load_label_table(cfg.labels)),
        progress=False,
        write_report=False,
    )
    live_sem = semantic_by_stamp(tmp_path / "live" / "outputs.mcap", SEM)
    off_sem = semantic_by_stamp(tmp_path / "offline" / "outputs.mcap", SEM)
    assert len(off_sem) == 4
    assert live_sem, "the live node answered no frame"
    assert set(live_sem) <= set(off_sem)
    for stamp, arr in live_sem.items():
        assert arr.shape == (48, 96)
        np.testing.assert_array_equal(arr, off_sem[stamp], err_msg=f"stamp {stamp}")

    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    fr = metrics["frames"]
    assert fr["published"] == 4
    assert fr["answered"] == len(live_sem)
    assert fr["answered"] + fr["dropped"] == 4
    lat = metrics["realtime"]["latency_ms"]
    assert lat["n"] == fr["answered"]
    assert 0 < lat["p50"] <= lat["p95"]
    assert metrics["realtime"]["node_exit_code"] in (0, -2, 130)
    # at a slow rate every frame is answered, and then the scores equal the offline ones
    if fr["answered"] == 4:
        assert metrics["semantic"]["miou"] == pytest.approx(offline["semantic"]["miou"])
        assert metrics["confusion"] == offline["confusion"]
    assert live == metrics


def test_cli_live_writes_report_and_realtime_figures(bag, tmp_path, capsys):
    from seg_perception.cli import main

    out = tmp_path / "cli"
    argv = ["eval", "--live", "--bag", str(bag), "--out", str(out), "--rate", "0.5"]
    for key, value in _params().items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"answered {metrics['realtime']['answered']}" in printed
    assert metrics["realtime"]["answered"] >= 1
    assert (out / "report.html").is_file() and (out / "seg_node.log").is_file()


def test_live_rejects_missing_ground_truth_before_starting_the_node(bag, tmp_path):
    from seg_perception.data.bag_io import BagError

    with pytest.raises(BagError, match="/camera/gt/nothing"):
        evaluate_live(
            bag, tmp_path / "x", overrides=_params(), gt_semantic_topic="/camera/gt/nothing"
        )
    assert not (tmp_path / "x" / "seg_node.log").exists()
