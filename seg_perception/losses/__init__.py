"""Training losses: cross-entropy / OHEM, the spatial correlation loss, multi-task sums."""

from seg_perception.losses.multitask import (
    ASP_GROUPS,
    ASP_LOSS_KEYS,
    DEFAULT_AUX_WEIGHT,
    SegmentationLoss,
    asp_multitask_loss,
    deep_supervision_loss,
)
from seg_perception.losses.ohem import (
    OhemCrossEntropy,
    cross_entropy,
    ohem_cross_entropy,
    ohem_mask,
)
from seg_perception.losses.scl import (
    DEFAULT_SCL_WEIGHT,
    SpatialCorrelationLoss,
    labels_at,
    scl_class_weights,
    spatial_correlation_loss,
)

__all__ = [
    "ASP_GROUPS",
    "ASP_LOSS_KEYS",
    "DEFAULT_AUX_WEIGHT",
    "DEFAULT_SCL_WEIGHT",
    "OhemCrossEntropy",
    "SegmentationLoss",
    "SpatialCorrelationLoss",
    "asp_multitask_loss",
    "cross_entropy",
    "deep_supervision_loss",
    "labels_at",
    "ohem_cross_entropy",
    "ohem_mask",
    "scl_class_weights",
    "spatial_correlation_loss",
]
