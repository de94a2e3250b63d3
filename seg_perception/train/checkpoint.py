"""Training checkpoints (atomic, pickle-free to load) and the weights export.

A checkpoint is one ``torch.save`` file of plain containers, tensors, numbers and strings, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary pickle). It is written with
:func:`seg_perception.atomic.atomic_path` (temporary file, fsync, rename), so a crash while
writing leaves the previous checkpoint untouched. ``checkpoints/latest`` names the newest file;
older files beyond ``keep`` are deleted after the new one is in place.

:func:`export_weights` writes the network's weights alone as safetensors (fp16 by default), the
format the node and ``build_model(..., weights=...)`` load; :func:`average_weights` writes the
uniform average of several such files of one network.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seg_perception.atomic import atomic_path, write_text_atomic
from seg_perception.errors import SegError
from seg_perception.networks.export import (
    META_MODEL,
    META_SWITCHES,
    describe_load_error,
    read_state_dict,
    read_weights_metadata,
    stored_switches,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "average_weights",
    "export_weights",
    "find_latest_checkpoint",
    "load_checkpoint",
    "network_state_dict",
    "read_network_weights",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "seg_perception.train/1"
#: the exported file's training iteration (metadata key; "" for an average)
_META_ITERATION = "seg_perception.iteration"
NET_PREFIX = "net."  # the trainer's module holds the network as ``net`` (and training-only parts)
_NAME = re.compile(r"^iter_(\d+)\.pt$")


class CheckpointError(SegError, ValueError):
    """A checkpoint is missing, unreadable or not a trainer checkpoint; the message names it."""


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(
    out_dir: str | Path, iteration: int, payload: Mapping[str, Any], *, keep: int = 3
) -> Path:
    """Write ``checkpoints/iter_<iteration>.pt`` atomically, point ``latest`` at it, prune.

    ``payload``: model / optimizer state dicts, counters, RNG state, recipe text (anything
    ``torch.load(weights_only=True)`` accepts). Returns the checkpoint path.
    """
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"iter_{iteration:08d}.pt"
    data = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    write_text_atomic(folder / "latest", path.name + "\n")
    for old in sorted(_numbered(folder))[:-keep]:
        if old[1] != path:
            old[1].unlink(missing_ok=True)
    return path


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob("iter_*.pt"):
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a trainer checkpoint with ``weights_only=True``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {p}: {describe_load_error(err)}") from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a {CHECKPOINT_FORMAT} checkpoint")
    return data


def find_latest_checkpoint(path: str | Path) -> Path | None:
    """The newest *loadable* checkpoint of a run directory (or ``path`` itself if a file).

    Follows ``checkpoints/latest``; if that file is missing or unreadable, falls back to the
    highest-numbered readable ``iter_*.pt`` with a warning. None when the run has none.
    """
    p = Path(path)
    if p.is_file():
        return p
    folder = p if p.name == "checkpoints" else checkpoint_dir(p)
    if not folder.is_dir():
        return None
    candidates = [q for _, q in sorted(_numbered(folder), reverse=True)]
    pointer = folder / "latest"
    if pointer.is_file():
        named = folder / pointer.read_text(encoding="utf-8").strip()
        if named in candidates:
            candidates.remove(named)
        candidates.insert(0, named)
    for q in candidates:
        try:
            load_checkpoint(q)
            return q
        except CheckpointError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=2)
    return None


def network_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The network's part of the trainer module's state dict (``net.*`` keys, prefix removed)."""
    net = {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    return net or dict(state)


def read_network_weights(path: str | Path) -> dict[str, Tensor]:
    """The network's tensors from a trainer checkpoint (its ``net.*`` part) or from a plain
    weights file (``.safetensors`` / ``.pt`` state dict); unreadable files name the file."""
    try:
        return network_state_dict(load_checkpoint(path)["model"])
    except CheckpointError:
        return read_state_dict(path)


def export_weights(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Checkpoint (or run directory) -> network weights as ``.safetensors`` in ``dtype``.

    Floating-point tensors are cast to ``dtype`` (integer buffers such as
    ``num_batches_tracked`` keep theirs); training-only modules (the SCL similarity subnet) are
    left out. The file's metadata (``seg_perception.*`` keys, str -> str) holds the model name,
    its builder switches as a JSON object (``seg_perception.switches``, read back by
    ``networks.export.stored_switches`` so that ``build_model(name, weights=file)`` and the engines
    build e.g. a narrow ``width=0.5`` net from the file alone; switches naming weight files are
    left out), the iteration, dtype and source checkpoint. Written atomically.
    """
    from safetensors.torch import save

    src = find_latest_checkpoint(checkpoint)
    if src is None:
        raise CheckpointError(f"no checkpoint found at {checkpoint}")
    data = load_checkpoint(src)
    state = network_state_dict(data["model"])
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in state.items()
    }
    switches = data.get("switches") or {}
    if not isinstance(switches, Mapping):
        raise CheckpointError(f"{src}: 'switches' must be a mapping, got {type(switches).__name__}")
    meta = _weights_metadata(
        model=str(data.get("model_name", "")),
        switches=json.dumps(
            {str(k): v for k, v in switches.items() if "weights" not in str(k)}, sort_keys=True
        ),
        iteration=str(data.get("iteration", "")),
        dtype=dtype,
        source=src.name,
    )
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise ValueError(f"export_weights: output must end in .safetensors, got {out}")
    with atomic_path(out) as tmp:
        tmp.write_bytes(save(tensors, metadata=meta))
    return out


def average_weights(
    inputs: list[str | Path],
    out_path: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """The uniform average of exported weight files of one network, as ``.safetensors``.

    ``inputs``: two or more files written by :func:`export_weights` for the same model and
    builder switches (e.g. the last checkpoints of schedules fine-tuned from one file). Floating
    tensors (BatchNorm running statistics included) are averaged in fp32 and stored in
    ``dtype``; integer ones (``num_batches_tracked``) are taken from the first file. A mismatch
    of model, switches, tensor names or shapes is a :class:`CheckpointError` naming both files;
    nothing is written then. ``out_path`` may be one of the inputs (written atomically after
    all are read).
    """
    from safetensors.torch import save

    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise CheckpointError(f"average_weights: give two or more weight files, got {len(paths)}")
    out = Path(out_path)
    for p in [*paths, out]:
        if p.suffix != ".safetensors":
            raise CheckpointError(f"average_weights: {p} is not a .safetensors file")
    metas = [read_weights_metadata(p) for p in paths]
    nets = [stored_switches(p) for p in paths]  # (model, switches): compared parsed, not as text
    first = read_state_dict(paths[0])
    sums = {k: v.float() for k, v in first.items() if v.is_floating_point()}
    for p, net in zip(paths[1:], nets[1:], strict=True):
        if net != nets[0]:
            raise CheckpointError(
                f"average_weights: {p} is {net[0]!r} with switches {net[1]}, {paths[0]} is "
                f"{nets[0][0]!r} with {nets[0][1]}: only files of one network can be averaged"
            )
        tensors = read_state_dict(p)
        if tensors.keys() != first.keys():
            diff = sorted(tensors.keys() ^ first.keys())
            raise CheckpointError(
                f"average_weights: {p} and {paths[0]} hold different tensors, e.g. {diff[:3]}"
            )
        for k, v in tensors.items():
            if v.shape != first[k].shape:
                raise CheckpointError(
                    f"average_weights: tensor {k!r} is {tuple(v.shape)} in {p}, "
                    f"{tuple(first[k].shape)} in {paths[0]}"
                )
            if k in sums:
                sums[k] += v.float()
    averaged = {
        k: (sums[k] / len(paths)).to(dtype).contiguous() if k in sums else v
        for k, v in first.items()
    }
    sources = ", ".join(
        f"{p.name} (iteration {m.get(_META_ITERATION, '?')})"
        for p, m in zip(paths, metas, strict=True)
    )
    meta = _weights_metadata(
        model=metas[0].get(META_MODEL, ""),
        switches=metas[0].get(META_SWITCHES, "{}"),
        iteration="",
        dtype=dtype,
        source=f"average of {sources}",
    )
    with atomic_path(out) as tmp:
        tmp.write_bytes(save(averaged, metadata=meta))
    return out


def _weights_metadata(
    *, model: str, switches: str, iteration: str, dtype: torch.dtype, source: str
) -> dict[str, str]:
    """The ``seg_perception.*`` header of an exported weights file (str -> str)."""
    return {
        META_MODEL: model,
        META_SWITCHES: switches,
        _META_ITERATION: iteration,
        "seg_perception.dtype": str(dtype).removeprefix("torch."),
        "seg_perception.source": source,
    }
