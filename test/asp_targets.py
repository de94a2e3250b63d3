"""Shared pieces of the ASP model tests: training targets and the inference output checks."""

import torch

#: the ASP model's training loss terms (torchvision Mask R-CNN's five + the semantic head's)
ASP_LOSSES = {
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_segm",
}


def two_object_targets(sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """Per image of size (h, w): a car-like and a person-like box with their masks, and a
    seeded random semantic map whose top quarter is void (255)."""
    targets = []
    for h, w in sizes:
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, h // 8 : h // 2, w // 8 : w // 2] = 1
        masks[1, h // 2 : h - 2, w // 2 : w - 2] = 1
        boxes = torch.tensor(
            [[w // 8, h // 8, w // 2, h // 2], [w // 2, h // 2, w - 2, h - 2]], dtype=torch.float32
        )
        semantic = torch.randint(0, 19, (h, w), generator=torch.Generator().manual_seed(h))
        semantic[: h // 4] = 255
        targets.append(
            {"boxes": boxes, "labels": torch.tensor([11, 13]), "masks": masks, "semantic": semantic}
        )
    return targets


def check_inference_outputs(
    images: list[torch.Tensor], out: list[dict[str, torch.Tensor]], *, max_k: int, things: set
) -> None:
    """Each result: boxes in the image, thing labels, scores sorted, full-size masks in [0, 1]
    and a semantic map of trainIds."""
    assert len(out) == len(images)
    for img, res in zip(images, out, strict=True):
        h, w = img.shape[-2:]
        assert set(res) == {"boxes", "labels", "scores", "masks", "semantic"}
        k = res["boxes"].shape[0]
        assert 0 < k <= max_k
        assert res["boxes"].shape == (k, 4) and res["boxes"].dtype == torch.float32
        assert (res["boxes"] >= 0).all()
        assert (res["boxes"][:, 2] <= w).all() and (res["boxes"][:, 3] <= h).all()
        assert res["labels"].shape == (k,) and res["labels"].dtype == torch.int64
        assert set(res["labels"].tolist()) <= things
        assert res["scores"].shape == (k,) and (res["scores"][:-1] >= res["scores"][1:]).all()
        assert res["masks"].shape == (k, h, w) and res["masks"].dtype == torch.float32
        assert res["masks"].min() >= 0 and res["masks"].max() <= 1
        assert res["semantic"].shape == (h, w) and res["semantic"].dtype == torch.int64
        assert res["semantic"].min() >= 0 and res["semantic"].max() < 19
