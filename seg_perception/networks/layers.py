"""Small building blocks shared by every network of the package."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU``; ``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BranchBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose affine weights are shared by several input branches but whose running
    statistics are kept per branch (``self.branch`` selects them).

    For weight-shared multi-resolution encoders: the /2 and /4 inputs of GUN's enc24shared have
    different activation statistics, so one set of running statistics fits neither at eval time.
    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, num_features: int, num_branches: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.num_branches = num_branches
        self.branch = 0
        for b in range(1, num_branches):
            self.register_buffer(f"running_mean_b{b}", self.running_mean.detach().clone())
            self.register_buffer(f"running_var_b{b}", self.running_var.detach().clone())

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, num_branches: int) -> BranchBatchNorm2d:
        new = cls(bn.num_features, num_branches, eps=bn.eps, momentum=bn.momentum)
        new.load_state_dict(bn.state_dict(), strict=False)
        for b in range(1, num_branches):
            getattr(new, f"running_mean_b{b}").copy_(bn.running_mean)
            getattr(new, f"running_var_b{b}").copy_(bn.running_var)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.branch == 0:
            return super().forward(x)
        mean = getattr(self, f"running_mean_b{self.branch}")
        var = getattr(self, f"running_var_b{self.branch}")
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            mean,
            var,
            self.weight,
            self.bias,
            use_batch,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        )


def use_branch_statistics(module: nn.Module, num_branches: int) -> list[BranchBatchNorm2d]:
    """Replace every BatchNorm2d inside ``module`` by a :class:`BranchBatchNorm2d` (in place)."""
    replaced = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, BranchBatchNorm2d):
            new = BranchBatchNorm2d.from_bn(child, num_branches)
            setattr(module, name, new)
            replaced.append(new)
        else:
            replaced += use_branch_statistics(child, num_branches)
    return replaced


def select_branch(norms: list[BranchBatchNorm2d], branch: int) -> None:
    for bn in norms:
        bn.branch = branch
