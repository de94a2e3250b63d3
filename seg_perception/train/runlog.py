"""What a training run reports: ``log.jsonl``, TensorBoard events, the progress bar, timings.

Only the main process (rank 0) writes; the other ranks get a silent :class:`RunLog`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "RunLog",
    "logged_seconds_per_iteration",
    "parameter_digest",
    "plain",
    "planned_iterations",
]


class RunLog:
    """``out_dir/log.jsonl`` (one JSON object per logged step), ``out_dir/tb`` (TensorBoard:
    scalars ``train/*``, ``val/*``, images ``val/sample_<i>``) and a tqdm bar with ETA."""

    def __init__(
        self,
        out_dir: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        total: int,
        initial: int,
        desc: str,
    ) -> None:
        from tqdm import tqdm

        self.out_dir = out_dir
        self.enabled = enabled
        self.writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"))
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not (enabled and progress),
            dynamic_ncols=True,
        )
        self.times: list[float] = []
        self._window_start = 0
        self._last = time.perf_counter()

    @property
    def wants_images(self) -> bool:
        return self.writer is not None

    def iteration_done(self, loss: float, lr: float, stage: str) -> float:
        """Advance the bar; returns the wall time of this iteration (data loading included)."""
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", stage=stage)
        return self.times[-1]

    def window_seconds_per_iteration(self) -> float:
        """Mean wall time of the iterations since the previous call (data loading included):
        what ``log.jsonl`` records as ``seconds_per_iteration``. One iteration's time would
        mislead where data workers deliver batches in bursts (a GPU waiting on 9 renderers reads
        0.1 s for most iterations and 0.8 s for every ninth one)."""
        window = self.times[self._window_start :]
        self._window_start = len(self.times)
        return sum(window) / len(window) if window else math.nan

    def pause_done(self) -> None:
        """Checkpoints and validation do not count as iteration time."""
        self._last = time.perf_counter()

    def seconds_per_iteration(self) -> float:
        steady = self.times[1:] or self.times  # the first one includes warm-up
        return sum(steady) / len(steady) if steady else math.nan

    def scalars(self, prefix: str, values: dict[str, float], iteration: int) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, iteration)
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"iteration": iteration, prefix: values}) + "\n")

    def images(self, tag: str, panels: list[np.ndarray], iteration: int) -> None:
        if self.writer is not None:
            for i, p in enumerate(panels):
                self.writer.add_image(f"{tag}_{i}", p, iteration, dataformats="HWC")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in name order (equal digests = identical replicas)."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def plain(v: Any) -> Any:
    """Only numbers / strings / containers (checkpoints load with ``weights_only=True``)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def logged_seconds_per_iteration(log_path: str | Path, *, first: int = 20) -> float:
    """Mean ``seconds_per_iteration`` of a run's ``log.jsonl`` train entries from iteration
    ``first`` on (the earlier ones include start-up: workers, allocator, kernel selection)."""
    path = Path(log_path)
    values = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from err
            train = entry.get("train") if isinstance(entry, dict) else None
            if isinstance(train, dict) and entry.get("iteration", -1) >= first:
                seconds = train.get("seconds_per_iteration")
                if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
                    values.append(float(seconds))
    if not values:
        raise ValueError(
            f"{path}: no train entry with seconds_per_iteration at iteration >= {first}"
        )
    return sum(values) / len(values)


def planned_iterations(
    log_path: str | Path, seconds: float, *, fraction: float = 0.85, first: int = 20
) -> int:
    """Iterations that fill ``fraction`` of ``seconds`` at the pace a calibration run logged
    (the rest of the window is left to validations and checkpoints)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(0, int(fraction * seconds / logged_seconds_per_iteration(log_path, first=first)))
