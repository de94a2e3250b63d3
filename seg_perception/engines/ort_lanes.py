"""Multi-camera calls on ONNX Runtime's CPU provider: concurrent single-thread *lanes*.

A batch of ``n >= T`` images on a ``T``-thread engine (``T >= 2``) is split into ``T`` equal
contiguous chunks of ``q = n // T`` images; chunk ``j`` runs on lane ``j`` -- one Python thread
calling a *lane session* (the same model, ``intra_op_num_threads=1``) one image at a time -- all
lanes at once (``InferenceSession.run_with_iobinding`` releases the GIL, and one session serves
concurrent runs; each lane has its own ``IoBinding``). The ``n - T * q`` images left over run
afterwards on the engine's ``T``-thread session. Every run writes into a slice of the caller's
``(n, ...)`` output arrays, so the result is one array per output as usual. Batches smaller
than ``T`` are not split: single-thread lanes would leave cores idle.

Why (GUN fp32 at 512x1024 on this 2-core machine, idle): an image takes 95 ms on one thread
and 50.5 ms on two, so 4 images take 202 ms as 4 calls, 209 ms as one 2-thread batch and 196 ms
on 2 lanes. Idle, the gain is bounded by the pool's efficiency (2 x 50.5 / 95 = 1.06x); while
other processes compete for the cores (the node's asynchronous panoptic engine, a training
job) a 2-thread pool waits for its descheduled thread at every operator and the lanes do not
(one loaded run: 4 calls 333 ms, one batch 374 ms, lanes 265 ms). Lanes run their images one at
a time: a batch of 2 per lane was slower (201 ms idle), the full-resolution input stages of two
images per lane crowd the shared L3 cache. A leftover image goes to the ``T``-thread session
rather than making one lane run longer than the others while a core idles.

Results equal single-image calls: the intra-op thread count does not change the arithmetic of
ORT's CPU kernels for these models (checked bit-exact for GUN fp32 at 512x1024, and by
``test/test_engine_speed.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["LaneRunner", "split_batch"]


def split_batch(n: int, lanes: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """``(chunks, rest)``: ``min(n, lanes)`` contiguous ``[start, stop)`` chunks of ``n // L``
    images each, and the ``[start, n)`` remainder (empty when ``L`` divides ``n``)."""
    if n < 1 or lanes < 1:
        raise ValueError(f"split_batch: need n >= 1 and lanes >= 1, got n={n}, lanes={lanes}")
    count = min(n, lanes)
    q = n // count
    chunks = [(j * q, (j + 1) * q) for j in range(count)]
    return chunks, (count * q, n)


class LaneRunner:
    """Runs contiguous chunks of a batch concurrently, one lane per chunk (module docstring).

    ``open_session``: opens the lane session (single-threaded); called once, on first use.
    ``lanes``: the most chunks one call runs at once.
    """

    def __init__(self, open_session: Callable[[], Any], lanes: int) -> None:
        if lanes < 2:
            raise ValueError(f"LaneRunner: need at least 2 lanes, got {lanes}")
        self.lanes = lanes
        self._open_session = open_session
        self.session: Any = None
        self._bindings: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None

    def _ready(self) -> None:
        if self.session is None:
            self.session = self._open_session()
            self._bindings = [self.session.io_binding() for _ in range(self.lanes)]
            self._pool = ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="ort-lane")

    def _lane(
        self,
        j: int,
        input_name: str,
        images: np.ndarray,
        out: Mapping[str, np.ndarray],
        a: int,
        b: int,
    ) -> None:
        binding = self._bindings[j]
        for i in range(a, b):
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            binding.bind_cpu_input(input_name, images[i : i + 1])
            for name, buf in out.items():
                view = buf[i : i + 1]
                binding.bind_output(name, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
            self.session.run_with_iobinding(binding)

    def run(
        self,
        input_name: str,
        images: np.ndarray,
        out: Mapping[str, np.ndarray],
        chunks: list[tuple[int, int]],
    ) -> None:
        """Run ``images[a:b]`` for every ``(a, b)`` in ``chunks`` (at most ``lanes``) at once,
        writing into ``out[name][a:b]``; ``out`` arrays are C-contiguous ``(n, ...)``."""
        if not 1 <= len(chunks) <= self.lanes:
            raise ValueError(f"LaneRunner: {len(chunks)} chunks for {self.lanes} lanes")
        self._ready()
        assert self._pool is not None
        futures: list[Future[None]] = [
            self._pool.submit(self._lane, j, input_name, images, out, a, b)
            for j, (a, b) in enumerate(chunks[1:], start=1)
        ]
        try:
            self._lane(0, input_name, images, out, *chunks[0])
        finally:  # never return while a lane still writes into ``out``
            errors = [f.exception() for f in futures]
        for exc in errors:
            if exc is not None:
                raise exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None
        self._bindings = []
        self.session = None
