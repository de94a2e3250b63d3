"""``seg-perception eval --cityscapes-root ... --cityscapes`` against the official Cityscapes
scorers (``cityscapesscripts``, driven through its Python API with explicit arguments): on the
exported files the official pixel-level, instance-level and panoptic evaluations give the numbers
of ``metrics.json`` -- class and category mIoU, iIoU, mask AP and PQ / SQ / RQ -- to 1e-6.

The frames are the package's synthetic streets at 128x256 (several instances each), with one
instance per frame turned into a group of objects (Cityscapes' ``instanceId < 1000``: a crowd
region) and a void patch, so that the scorers' crowd and void rules are exercised; the shipped
models segment them (upsampled to the networks' training scale).
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seg_perception.cli import main
from seg_perception.data.cityscapes_io import write_cityscapes_folder
from seg_perception.data.synth import generate_frames
from seg_perception.labels import CITYSCAPES
from seg_perception.metrics_instance import MaskAP, PredictedInstance

TOL = 1e-6
NAMES = {lab.id: lab.name for lab in CITYSCAPES.labels}


def _frames(n: int, seed: int):
    """Synthetic frames with a group of objects (the largest instance) and a void patch."""
    out = []
    for f in generate_frames(n, seed=seed, height=128, width=256):
        ids, sizes = np.unique(f.instance[f.instance >= 1000], return_counts=True)
        group = int(ids[np.argmax(sizes)])
        f.instance[f.instance == group] = group // 1000  # "cargroup": labelId, no instance
        f.label_ids[:6, :48] = 5  # "dynamic": void in evaluation
        f.instance[:6, :48] = 5
        f.semantic[:6, :48] = 255
        out.append(f)
    return out


def _official(module: str) -> Any:
    """A cityscapesscripts module (their names are camel case)."""
    return importlib.import_module(f"cityscapesscripts.{module}")


@pytest.fixture(autouse=True)
def _numpy2_shims(monkeypatch) -> None:
    """cityscapesscripts 2.3.0 predates NumPy 2, for these tests only: it calls ``np.in1d``
    (removed in NumPy 2.4; ``isin`` on the flattened array is what it computed), and the
    instance-level script dumps its intermediate dicts (``matches.json``, the ground-truth cache),
    which hold NumPy integers, with a JSON fallback (``o.__dict__``) that NumPy scalars lack. Only
    the side files are written differently; every score is computed by the scripts' own code."""
    il = _official("evaluation.evalInstanceLevelSemanticLabeling")

    if not hasattr(np, "in1d"):
        monkeypatch.setattr(
            np,
            "in1d",
            lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert),
            raising=False,
        )

    def write_json(data: dict, path: str) -> None:
        Path(path).write_text(
            json.dumps(
                data, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__
            )
        )

    monkeypatch.setattr(il, "writeDict2JSON", write_json)


def _missing(x: float | None) -> bool:
    return x is None or math.isnan(x)


def _close(ours: float | None, official: float | None) -> bool:
    """Equal to TOL, or both undefined (``None`` in metrics.json, ``nan`` in the scripts)."""
    if _missing(ours) or _missing(official):
        return _missing(ours) and _missing(official)
    return abs(ours - official) <= TOL


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("official")
    root, out = base / "data", base / "out"
    write_cityscapes_folder(root, _frames(4, seed=7), split="val", city="synth")
    rc = main(
        [
            "eval",
            "--cityscapes-root",
            str(root),
            "--split",
            "val",
            "--out",
            str(out),
            "--cityscapes",
            "--no-progress",
            "--set",
            "backend=torch",
            "threads=2",
            "warmup_frames=0",
            "network_height=256",
            "network_width=512",
            "panoptic.network_height=256",
            "panoptic.network_width=512",
            "fusion.min_new_instance_area=25",
        ]
    )
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text())


def _pixel_level(export: Path) -> dict:
    px = _official("evaluation.evalPixelLevelSemanticLabeling")

    args = copy.copy(px.args)  # the module's global settings, ours to change
    args.JSONOutput, args.quiet, args.evalInstLevelScore = False, True, True
    args.predictionPath, args.predictionWalk = str(export / "pred/semantic"), None
    gts = sorted(str(p) for p in (export / "gtFine/val").glob("*/*_gtFine_labelIds.png"))
    preds = [px.getPrediction(args, gt) for gt in gts]
    return px.evaluateImgLists(preds, gts, args)


def _instance_level(gt_root: Path, pred_dir: Path, work: Path, monkeypatch) -> dict:
    """The official AP averages of the predictions in ``pred_dir`` (``*_pred.txt`` + masks)
    against ``gt_root/gtFine/val``."""
    il = _official("evaluation.evalInstanceLevelSemanticLabeling")
    monkeypatch.chdir(work)  # it writes matches.json to the working directory
    args = copy.copy(il.args)
    args.JSONOutput, args.quiet, args.distanceAvailable = False, True, False
    args.gtInstancesFile = str(work / "gtInstances.json")  # not the package folder's cache
    args.predictionPath, args.predictionWalk = str(pred_dir.resolve()), None
    gts = sorted(str(p) for p in (gt_root / "gtFine/val").glob("*/*_gtFine_instanceIds.png"))
    preds = [il.getPrediction(gt, args) for gt in gts]
    return il.evaluateImgLists(preds, gts, args)["averages"]


def test_pixel_level_scores_equal_the_official_script(exported):
    export, m = exported[0] / "cityscapes", exported[1]
    res = _pixel_level(export)
    sem, inst = m["semantic"], m["instance_iou"]
    assert _close(sem["miou"], res["averageScoreClasses"])
    assert _close(sem["mean_category_iou"], res["averageScoreCategories"])
    assert _close(inst["iiou"], res["averageScoreInstClasses"])
    assert _close(inst["mean_category_iiou"], res["averageScoreInstCategories"])
    for name, iou in sem["iou"].items():
        assert _close(iou, res["classScores"][name]), name
    for name, iiou in inst["per_class"].items():
        assert _close(iiou, res["classInstScores"][name]), name
    for cat, iou in sem["category_iou"].items():
        assert _close(iou, res["categoryScores"][cat]), cat
    # the segmentation is real: most classes have an IoU, instances were weighted
    assert 0.2 < sem["miou"] < 1 and 0.1 < inst["iiou"] < 1


def test_mask_ap_equals_the_official_instance_level_script(exported, tmp_path, monkeypatch):
    export, m = exported[0] / "cityscapes", exported[1]
    res = _instance_level(export, export / "pred/instance", tmp_path, monkeypatch)
    ap = m["mask_ap"]
    assert _close(ap["ap"], res["allAp"]) and _close(ap["ap50"], res["allAp50%"])
    for name, cls in ap["per_class"].items():
        assert _close(cls["ap"], res["classes"][name]["ap"]), name
        assert _close(cls["ap50"], res["classes"][name]["ap50%"]), name
    assert ap["ap50"] > 0.2  # matched instances: the precision-recall branch ran


def test_pq_equals_the_official_panoptic_script_on_both_ground_truths(exported, tmp_path):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    export, m = exported[0] / "cityscapes", exported[1]
    pred_json = export / "pred/panoptic/cityscapes_panoptic_val.json"
    # ground truth as exported, and as the official converter makes it from the instanceIds
    convert2panoptic(str(export / "gtFine"), str(tmp_path), setNames=["val"])
    official_gt = tmp_path / "cityscapes_panoptic_val.json"
    for gt_json in (export / "gtFine/cityscapes_panoptic_val.json", official_gt):
        res = evaluatePanoptic(
            str(gt_json),
            str(gt_json.with_suffix("")),
            str(pred_json),
            str(pred_json.with_suffix("")),
            str(tmp_path / "pq.json"),
        )
        for ours, theirs in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
            for k in ("pq", "sq", "rq"):
                assert _close(m["panoptic"][ours][k], res[theirs][k]), (gt_json, ours, k)
            assert m["panoptic"][ours]["n"] == res[theirs]["n"]
        for label_id, cls in res["per_class"].items():
            ours_cls = m["panoptic"]["per_class"][NAMES[int(label_id)]]
            if ours_cls["tp"] + ours_cls["fp"] + ours_cls["fn"]:
                assert _close(ours_cls["pq"], cls["pq"]), label_id
    assert m["panoptic"]["things"]["pq"] > 0.1  # matched thing segments


def _rgb2id(path: Path) -> np.ndarray:
    from PIL import Image

    rgb = np.array(Image.open(path)).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def test_exported_ground_truth_panoptic_equals_the_official_conversion(exported, tmp_path):
    """The COCO-panoptic ground truth of the export segments every frame as the official
    converter does (same segments, categories, crowd flags and areas; ids may differ)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    export = exported[0] / "cityscapes"
    convert2panoptic(str(export / "gtFine"), str(tmp_path), setNames=["val"])
    ours = json.loads((export / "gtFine/cityscapes_panoptic_val.json").read_text())
    theirs = json.loads((tmp_path / "cityscapes_panoptic_val.json").read_text())
    assert ours["categories"] == theirs["categories"]
    by_id = {a["image_id"]: a for a in theirs["annotations"]}
    crowds = 0
    for a in ours["annotations"]:
        b = by_id[a["image_id"]]
        ids_a = _rgb2id(export / "gtFine/cityscapes_panoptic_val" / a["file_name"])
        ids_b = _rgb2id(tmp_path / "cityscapes_panoptic_val" / b["file_name"])
        pairs = set(zip(ids_a.ravel().tolist(), ids_b.ravel().tolist(), strict=True))
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
        seg_b = {s["id"]: s for s in b["segments_info"]}
        seg_a = {s["id"]: s for s in a["segments_info"]}
        for ia, ib in pairs:
            if ia == 0:
                assert ib == 0
                continue
            for key in ("category_id", "iscrowd", "area", "bbox"):
                assert seg_a[ia][key] == seg_b[ib][key], (a["image_id"], key)
        crowds += sum(s["iscrowd"] for s in a["segments_info"])
    assert crowds == 4  # one group per frame


def test_mask_ap_with_overlapping_predictions_equals_the_official_script(tmp_path, monkeypatch):
    """Predictions the panoptic export never makes: duplicates of an instance (the lower score is
    a false positive), masks over a group, over void, over a small instance, and spurious ones --
    written as the instance-level script's prediction files, and fed to MaskAP as masks."""
    import cv2

    rng = np.random.default_rng(0)
    frames = _frames(3, seed=11)
    root = tmp_path / "data"
    write_cityscapes_folder(root, frames, split="val", city="synth")
    pred_dir = tmp_path / "pred"
    ap = MaskAP(CITYSCAPES)
    for f in frames:
        name = f"synth_000000_{f.index:06d}"
        masks: list[tuple[np.ndarray, int, float]] = []
        for iid in np.unique(f.instance[f.instance >= 24]).tolist():
            label = iid if iid < 1000 else iid // 1000
            if not CITYSCAPES.labels[label].has_instances:
                continue
            gt = f.instance == iid
            shifted = np.roll(gt, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
            masks.append((shifted, label, float(rng.uniform(0.3, 1.0))))
            if rng.random() < 0.4:  # a duplicate, eroded
                masks.append((gt & np.roll(gt, 2, axis=1), label, float(rng.uniform(0, 1))))
        void = f.label_ids == 5
        masks.append((void | np.roll(void, 3, axis=0), 26, 0.9))  # mostly void: ignored
        blob = np.zeros_like(void)
        blob[60:80, 100:140] = True
        masks.append((blob, 24, float(rng.uniform(0, 1))))  # spurious person
        masks.append((blob, 33, 0.5))  # spurious bicycle, same mask
        lines = []
        for k, (mask, label, score) in enumerate(masks):
            rel = f"masks/{name}_{k:03d}.png"
            (pred_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(pred_dir / rel), mask.astype(np.uint8) * 255)
            lines.append(f"{rel} {label} {score:.6f}\n")
        (pred_dir / f"{name}_pred.txt").write_text("".join(lines))
        preds = [
            PredictedInstance(k, int(CITYSCAPES.label_to_train[label]), float(f"{score:.6f}"))
            for k, (_, label, score) in enumerate(masks)
        ]
        ap.update(f.instance, preds, lambda p, masks=masks: masks[p.value][0])
    res = _instance_level(root, pred_dir, tmp_path, monkeypatch)
    ours = ap.compute()
    assert _close(ours["ap"], res["allAp"]) and _close(ours["ap50"], res["allAp50%"])
    for name, cls in ours["per_class"].items():
        assert _close(cls["ap"], res["classes"][name]["ap"]), name
    assert 0.1 < ours["ap"] < 0.9  # neither all matched nor all missed
