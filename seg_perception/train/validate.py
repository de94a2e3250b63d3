"""Validation during training, with the metrics module.

Semantic nets: mIoU (and the rest of :class:`~seg_perception.metrics.SemanticMetrics`) of the
argmax prediction at the label resolution, optionally through a test-time procedure of the
papers (``tta``, the recipe's ``data.val_tta``: :mod:`seg_perception.networks.tta`). The ASP
model: its outputs are fused into panoptic as the node fuses them
(:meth:`~seg_perception.pipeline.PanopticSettings.fusion`, the paper's heuristic by default),
then PQ / SQ / RQ against the ground-truth panoptic map
(:func:`~seg_perception.panoptic.gt_panoptic`, the one Cityscapes instanceId encoding of the
package) and mIoU of the fused semantic map.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from seg_perception.data.transforms import image_to_tensor
from seg_perception.labels import CITYSCAPES, LabelTable
from seg_perception.panoptic import gt_panoptic
from seg_perception.pipeline import PanopticSettings

__all__ = ["sample_panel", "validate_panoptic", "validate_semantic"]


def sample_panel(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, labels: LabelTable = CITYSCAPES
) -> np.ndarray:
    """Image | ground truth | prediction, stacked vertically, ``(3H, W, 3)`` uint8 (TensorBoard)."""
    return np.concatenate([image, labels.colorize(gt), labels.colorize(pred)], axis=0)


def _resized(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def validate_semantic(
    module: Any,
    dataset: Any,
    *,
    device: torch.device,
    labels: LabelTable = CITYSCAPES,
    max_frames: int = 0,
    net_size: tuple[int, int] | None = None,
    num_samples: int = 0,
    progress: bool = False,
    tta: str = "none",
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """mIoU of ``module`` (a :class:`SemanticTrainModule`) over ``dataset`` samples, with the
    test-time procedure ``tta`` (``none``, ``multistep``, ``multiscale-flip``).

    Returns ``(metrics, panels)`` with up to ``num_samples`` :func:`sample_panel` images.
    """
    import torch.nn.functional as F
    from tqdm import tqdm

    from seg_perception.metrics import SemanticMetrics
    from seg_perception.networks.tta import with_tta

    metrics = SemanticMetrics(labels.num_classes, labels=labels)
    panels: list[np.ndarray] = []
    n = len(dataset) if max_frames <= 0 else min(max_frames, len(dataset))
    was_training = module.training
    module.eval()
    tester = with_tta(module.net, tta)  # the net itself for "none"
    try:
        for i in tqdm(range(n), desc="validate", leave=False, disable=not progress):
            s = dataset[i]
            gt = s["semantic"]
            x = image_to_tensor(_resized(s["image"], net_size)).unsqueeze(0).to(device)
            if tta == "none":
                scores = module.predict_logits(x, size=gt.shape[:2])
            else:  # class scores at the input size, then to the label size
                scores = tester(module.normalise(x))
                if tuple(scores.shape[-2:]) != tuple(gt.shape[:2]):
                    scores = F.interpolate(
                        scores, size=gt.shape[:2], mode="bilinear", align_corners=False
                    )
            pred = scores.argmax(1)[0].to(torch.uint8).cpu().numpy()
            metrics.update(pred, gt)
            if len(panels) < num_samples:
                panels.append(sample_panel(s["image"], gt, pred, labels))
    finally:
        module.train(was_training)
    return metrics.compute(), panels


@torch.no_grad()
def validate_panoptic(
    module: Any,
    dataset: Any,
    *,
    device: torch.device,
    labels: LabelTable = CITYSCAPES,
    max_frames: int = 0,
    num_samples: int = 0,
    settings: PanopticSettings | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """PQ / SQ / RQ and mIoU of the ASP model + fusion over ``dataset`` samples.

    ``settings``: the fusion and its options, the node's defaults (``config/seg.yaml``) unless
    given, applied as the node applies them to frames of the dataset's size (the area threshold
    is in pixels of the fused frame). The semantic map fused is the ASP model's own head: no
    real-time net takes part in this validation.
    """
    from tqdm import tqdm

    from seg_perception.fusion import Instances
    from seg_perception.metrics import PanopticQuality, SemanticMetrics

    fuse = (settings or PanopticSettings.from_config()).fusion(labels)

    sem_metrics = SemanticMetrics(labels.num_classes, labels=labels)
    pq = PanopticQuality(labels=labels)
    panels: list[np.ndarray] = []
    n = len(dataset) if max_frames <= 0 else min(max_frames, len(dataset))
    was_training = module.training
    module.eval()
    try:
        for i in tqdm(range(n), desc="validate", leave=False, disable=not progress):
            s = dataset[i]
            img: Tensor = image_to_tensor(s["image"]).to(device)
            out = module.net([img])[0]
            semantic = out["semantic"].to(torch.uint8).cpu().numpy()
            inst = Instances(
                masks=(out["masks"] > 0.5).cpu().numpy(),
                labels=out["labels"].cpu().numpy(),
                scores=out["scores"].float().cpu().numpy(),
            )
            fused = fuse(semantic, inst)
            sem_metrics.update(fused.semantic, s["semantic"])
            pq.update(fused.panoptic, gt_panoptic(s["semantic"], s.get("instance"), labels))
            if len(panels) < num_samples:
                panels.append(sample_panel(s["image"], s["semantic"], fused.semantic, labels))
    finally:
        module.train(was_training)
    sem = sem_metrics.compute()
    pan = pq.compute()
    return {
        **sem,
        "pq": pan["all"]["pq"],
        "sq": pan["all"]["sq"],
        "rq": pan["all"]["rq"],
        "pq_things": pan["things"]["pq"],
        "pq_stuff": pan["stuff"]["pq"],
        "panoptic": pan,
    }, panels
