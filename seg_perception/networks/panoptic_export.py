"""Export form of the panoptic ASP model, its ONNX export and the host-side mask pasting.

``PanopticExport`` is what an engine runs: one RGB uint8 image ``(1, H, W, 3)`` of a fixed size
in; normalisation in the graph; no resize (the transform's min/max size equal the export size);
outputs named ``boxes`` ``(K, 4)`` float32 input pixels, ``labels`` ``(K,)`` int64 thing
trainIds, ``scores`` ``(K,)`` float32, ``masks`` ``(K, 1, 28, 28)`` float32 mask probabilities
(low resolution, NOT pasted: :func:`paste_masks` does that on the host, only for the instances
kept) and ``semantic_ids`` ``(H, W)`` uint8 trainIds.

ONNX (torch 2.14): the default ``torch.onnx.export(dynamo=True)`` path needs the ``onnxscript``
package (not installed here); the legacy TorchScript exporter (``dynamo=False``) still exists in
2.14, is deprecated, and exports torchvision's Mask R-CNN (NonMaxSuppression, RoiAlign opset 16+,
data-dependent K) -- that is the path used here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from seg_perception.atomic import atomic_path
from seg_perception.networks.panoptic_asp import PanopticASP
from seg_perception.panoptic import paste_masks  # noqa: F401 - re-exported (host-side pasting)

OUTPUT_NAMES: tuple[str, ...] = ("boxes", "labels", "scores", "masks", "semantic_ids")
SEMANTIC_UPSAMPLE: tuple[str, ...] = ("bilinear", "nearest")


class PanopticExport(nn.Module):
    """``(1, H, W, 3)`` uint8 RGB -> ``(boxes, labels, scores, masks, semantic_ids)``.

    Args:
        model: a :class:`PanopticASP` (used in eval mode; its modules are shared, not copied).
        input_hw: the fixed export size ``(H, W)``.
        semantic_upsample: ``"bilinear"`` (default): the 1/4 logits are upsampled bilinearly and
            the argmax taken at full resolution -- exactly what the eager model and the training
            loss do, so the engine's ids equal the PyTorch ids and boundaries are not 4x4 blocky
            (boundary accuracy is scored). ``"nearest"``: argmax at 1/4 then nearest upsampling
            of the ids, 19x less upsampling work, for a tight GPU budget.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: PanopticASP,
        input_hw: tuple[int, int],
        *,
        semantic_upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        if semantic_upsample not in SEMANTIC_UPSAMPLE:
            raise ValueError(
                f"PanopticExport: semantic_upsample={semantic_upsample!r}; valid: "
                f"{', '.join(SEMANTIC_UPSAMPLE)}"
            )
        h, w = (int(v) for v in input_hw)
        if h <= 0 or w <= 0:
            raise ValueError(f"PanopticExport: input_hw must be positive, got {input_hw}")
        self.model = model
        self.input_hw = (h, w)
        self.semantic_upsample = semantic_upsample
        src = model.detector.transform
        # min_size = min(H, W), max_size = max(H, W): torchvision's resize scale is exactly 1,
        # so skipping the resize call below changes nothing and keeps Resize out of the graph.
        self.transform = GeneralizedRCNNTransform(
            min(h, w), max(h, w), src.image_mean, src.image_std, size_divisible=src.size_divisible
        )
        self.register_buffer(
            "mean", torch.tensor(src.image_mean).reshape(3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(src.image_std).reshape(3, 1, 1) * 255.0, persistent=False
        )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        h, w = self.input_hw
        if tuple(image.shape) != (1, h, w, 3):
            raise ValueError(
                f"PanopticExport: expected uint8 image (1, {h}, {w}, 3), got {tuple(image.shape)}"
            )
        # uint8 -> (x/255 - mean)/std, folded into one affine step per channel.
        x = (image[0].permute(2, 0, 1).float() - self.mean) / self.std
        div = self.transform.size_divisible
        pad_h, pad_w = (-h) % div, (-w) % div
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        image_list = ImageList(x[None], [(h, w)])
        detections, _, logits = self.model.run(image_list)
        det = detections[0]
        labels = self.model.detection_to_train_ids(det["labels"])
        if self.semantic_upsample == "bilinear":
            up = F.interpolate(
                logits, size=(h + pad_h, w + pad_w), mode="bilinear", align_corners=False
            )
            ids = up[0, :, :h, :w].argmax(dim=0)
        else:
            ids = logits.argmax(dim=1, keepdim=True).float()
            ids = F.interpolate(ids, size=(h + pad_h, w + pad_w), mode="nearest")[0, 0, :h, :w]
        return det["boxes"], labels, det["scores"], det["masks"], ids.to(torch.uint8)


def export_panoptic_onnx(
    model: PanopticASP | PanopticExport,
    path: str | Path,
    *,
    input_hw: tuple[int, int],
    opset: int = 17,
    semantic_upsample: str = "bilinear",
) -> Path:
    """Write the export form of ``model`` as ONNX to ``path`` atomically and check it.

    Written via :func:`seg_perception.atomic.atomic_path` (temp sibling, fsync, rename).

    Uses the TorchScript exporter (``dynamo=False``; see the module docstring). The trace input
    is a seeded random image so that the traced graph takes the "detections present" branches.
    Returns the path written. Input ``image`` ``(1, H, W, 3)`` uint8; outputs :data:`OUTPUT_NAMES`
    with a dynamic ``K``.
    """
    if opset < 16:
        raise ValueError(f"export_panoptic_onnx: opset {opset} < 16 (RoiAlign half_pixel needs 16)")
    export = (
        model
        if isinstance(model, PanopticExport)
        else PanopticExport(model, input_hw, semantic_upsample=semantic_upsample)
    )
    if export.input_hw != tuple(input_hw):
        raise ValueError(f"export_panoptic_onnx: model built for {export.input_hw}, not {input_hw}")
    modes = {m: m.training for m in export.modules()}  # restored afterwards
    try:
        export.eval()
        _export(export, Path(path), opset)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return Path(path)


def _export(export: PanopticExport, path: Path, opset: int) -> None:
    import onnx

    h, w = export.input_hw
    gen = torch.Generator().manual_seed(0)
    dummy = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in export(dummy)]
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of torchvision's detection code
            torch.onnx.export(
                export,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "K"} for name in OUTPUT_NAMES[:4]},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        _set_output_shapes(proto, shapes)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def _set_output_shapes(proto: Any, shapes: list[tuple[int, ...]]) -> None:
    """The tracer leaves some output dims symbolic (box width 4, mask size 28): write the static
    ones; dim 0 of the instance outputs stays ``K``."""
    for value, shape in zip(proto.graph.output, shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, n in enumerate(shape):
            if i == 0 and value.name in OUTPUT_NAMES[:4]:
                dims.add().dim_param = "K"
            else:
                dims.add().dim_value = int(n)
