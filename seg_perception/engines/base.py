"""The Engine protocol: what the pipeline calls, whatever the backend."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be created or failed on a batch; the message names file and cause."""


@runtime_checkable
class Engine(Protocol):
    """A loaded network in its export form.

    ``infer`` takes ``images`` uint8 ``(N, H, W, 3)`` RGB at the engine's ``input_hw`` and returns
    named arrays; for semantic networks ``class_ids`` uint8 ``(N, H, W)`` and ``confidence``
    float32 ``(N, H, W)``. Returned arrays may be reused by the next call: copy what you keep.
    """

    name: str
    input_hw: tuple[int, int]
    num_classes: int

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def warmup(self, runs: int = 1) -> None: ...

    def close(self) -> None: ...
