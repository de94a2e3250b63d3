"""Learning-rate schedules as pure functions of the iteration (so ``--resume`` is exact).

- ``poly`` (ShelfNet: "lr = baselr x (1 - iter/total_iter)^power"; ASP model: "'poly' learning
  rate policy starting from 5e-3"): the power is not printed in either paper; 0.9 is the value of
  the DeepLab poly policy both cite and is the recipes' default;
- ``step`` (GUN: "The initial value is decreased every 100 epochs by a order of magnitude"):
  ``lr * gamma ** (t // step)``;
- ``linear`` (RelationNet: "5x10^-4 for the first 35 epochs and learning rate goes down linearly
  from the 5x10^-4 to 5x10^-6 for the last 25 epochs"): constant for a ``hold`` fraction of the
  stage, then linear to ``final_lr`` at the stage's last iteration;
- ``constant``.

Every stage restarts its schedule (stage lengths and base rates come from the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POLICIES", "StagePlan", "learning_rate", "plan_stages"]

POLICIES = ("poly", "step", "linear", "constant")


def learning_rate(
    t: int,
    total: int,
    *,
    base_lr: float,
    policy: str,
    power: float = 0.9,
    step: int = 0,
    gamma: float = 0.1,
    hold: float = 0.0,
    final_lr: float = 0.0,
) -> float:
    """Learning rate at iteration ``t`` (0-based) of a stage of ``total`` iterations."""
    if total < 1 or not 0 <= t < total:
        raise ValueError(f"learning_rate: need 0 <= t < total, got t={t}, total={total}")
    if policy == "constant":
        return base_lr
    if policy == "poly":
        return base_lr * (1.0 - t / total) ** power
    if policy == "step":
        if step < 1:
            raise ValueError(f"learning_rate: policy 'step' needs step >= 1, got {step}")
        return base_lr * gamma ** (t // step)
    if policy == "linear":
        start = round(hold * total)
        if t < start or total - 1 <= start:
            return base_lr
        frac = (t - start) / (total - 1 - start)
        return base_lr + (final_lr - base_lr) * frac
    raise ValueError(f"unknown lr policy {policy!r}; valid: {', '.join(POLICIES)}")


def warmup_factor(iteration: int, warmup: int) -> float:
    """Linear warm-up from 0.1 to 1 over the first ``warmup`` iterations of the run."""
    if warmup <= 0 or iteration >= warmup:
        return 1.0
    return 0.1 + 0.9 * iteration / warmup


@dataclass(frozen=True)
class StagePlan:
    """A stage resolved to iterations: global iterations ``[start, end)``."""

    index: int
    name: str
    dataset: str
    start: int
    end: int
    base_lr: float
    ohem: bool
    scl: bool
    iterations_per_epoch: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_stages(
    stages: list[tuple[str, str, float, float, bool, bool]],
    *,
    unit: str,
    iterations_per_epoch: dict[str, int],
) -> list[StagePlan]:
    """``(name, dataset, length, base_lr, ohem, scl)`` per stage -> consecutive :class:`StagePlan`.

    ``length`` is in epochs of the stage's dataset (``unit="epochs"``; rounded to whole
    iterations, at least 1) or in iterations.
    """
    plans, start = [], 0
    for i, (name, dataset, length, lr, ohem, scl) in enumerate(stages):
        ipe = iterations_per_epoch[dataset]
        n = length * ipe if unit == "epochs" else length
        n = max(1, round(n))
        plans.append(StagePlan(i, name, dataset, start, start + n, lr, ohem, scl, ipe))
        start += n
    return plans
