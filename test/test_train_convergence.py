"""Training makes progress: the ASP model's five losses fall, a real-time net overfits 4 frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from asp_targets import ASP_LOSSES
from tiny_recipe import tiny_recipe

from seg_perception.train.recipe import parse_recipe
from seg_perception.train.trainer import Trainer

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ ASP
ASP_SWITCHES = {
    "min_size": 64,
    "max_size": 128,
    "trainable_backbone_layers": 0,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 2000,  # many proposals: positive RoIs from the first step
    "rpn_post_nms_top_n_train": 1000,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
}


@pytest.mark.slow
def test_asp_model_losses_finite_and_decreasing(tmp_path: Path) -> None:
    doc = tiny_recipe(
        tmp_path,
        model={"name": "panoptic_asp", "switches": ASP_SWITCHES},
        augment={},
        loss={},
        stages=[{"dataset": "train", "length": 20}],
        optim={"lr": 0.01, "grad_clip": 10.0, "amp": False},  # fp32 on every machine
        schedule={"policy": "constant"},
    )
    doc["data"]["train"]["train"].update(frames=2, height=64, width=128, cache=True)
    doc["data"]["val"] = {"kind": "synth", "seed": 1, "frames": 2, "height": 64, "width": 128}
    doc["run"].update(log_every=1, checkpoint_every=0)
    result = Trainer(parse_recipe(doc)).run()
    assert result.iterations == 20
    for k in ("miou", "pq", "sq", "rq"):  # validation: heuristic fusion + PQ
        assert 0.0 <= result.val[k] <= 1.0
    terms = [
        json.loads(line)["train"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if "train" in json.loads(line)
    ]
    keys = sorted(ASP_LOSSES)
    assert len(terms) == 20 and all(k in terms[0] for k in keys)
    assert all(torch.isfinite(torch.tensor(t[k])) for t in terms for k in keys)

    def drop(k: str) -> tuple[float, float]:
        return sum(t[k] for t in terms[:4]) / 4, sum(t[k] for t in terms[-4:]) / 4

    # Every term falls except the RoI box regression alone: it is normalised by all sampled RoIs
    # and grows while the RPN's proposals turn into more (and harder) positives -- the paper's
    # L_box = RoI + RPN box terms does fall, as do L_cls, L_mask, L_segm and the total.
    for k in [k for k in keys if k != "loss_box_reg"] + [
        "group_box",
        "group_cls",
        "group_mask",
        "group_segm",
        "loss",
    ]:
        first, last = drop(k)
        assert last < first, (k, first, last)


# ------------------------------------------------------------------------------------ overfit
# ShelfNet-18 on 4 frames of 128x256 (64x128 is too small: 1-2 px poles cannot be drawn by a
# stride-4 head, the fit stalls near 87% mIoU). OHEM (RelationNet eq. 3) speeds up the fit of
# the small classes a lot (measured: 90% mIoU after 200 iterations with OHEM, 84% after 400
# without). 0.13-0.30 s per iteration on 2 idle cores (40 s where first measured, 88 s on the Xeon
# with AMX, fp32); the fit needs its 300: 91.6 % mIoU there, 89.2 % after 200 (Xeon, 2026-12-07).
OVERFIT: dict[str, Any] = {
    "model": {"name": "shelfnet", "switches": {"dropout": 0.0}},
    "data": {
        "train": {
            "train": {
                "kind": "synth",
                "seed": 3,
                "frames": 4,
                "height": 128,
                "width": 256,
                "cache": True,
            }
        },
        "val": {"kind": "synth", "seed": 3, "frames": 4, "height": 128, "width": 256},
        "batch_size": 2,
    },
    "loss": {"ohem": True},
    # fp32 on every machine: the thresholds below were set in fp32, and optim.amp's default
    # (auto) would follow the CPU's bf16 hardware
    "optim": {"lr": 0.05, "weight_decay": 0.0, "amp": False},
    "schedule": {"policy": "poly"},
    "stages": [{"name": "overfit", "dataset": "train", "length": 300}],
    "run": {"checkpoint_every": 0, "progress": False, "tensorboard": False, "threads": 2},
}


@pytest.mark.slow
def test_realtime_net_overfits_four_frames(tmp_path: Path) -> None:
    doc = {**OVERFIT, "run": {**OVERFIT["run"], "out_dir": str(tmp_path)}}
    result = Trainer(parse_recipe(doc)).run()
    assert result.iterations == 300
    assert result.val["miou"] >= 0.90, result.val["iou"]
