"""Export form shared by every semantic network, ONNX export and weight loading.

``SemanticExport`` wraps a net that has ``forward_ids(x) -> (ids uint8 (N,H,W), conf (N,H,W))``
into the graph the engines run: uint8 RGB image in, normalisation in-graph, ``class_ids``
(uint8) and ``confidence`` (float32) out, so an engine never copies ``num_classes`` float planes
to the host. ``export_logits=True`` gives a ``logits`` graph for accuracy checks instead.

ONNX exporter: torch 2.14's default ``dynamo=True`` exporter needs the ``onnxscript`` package,
which this environment does not ship; the TorchScript exporter (``dynamo=False``) exports
``grid_sample`` as ``GridSample`` (opset >= 16) and is used here.

Weights files written by ``train.checkpoint.export_weights`` carry the network's name and builder
switches in their safetensors metadata (:data:`META_MODEL`, :data:`META_SWITCHES`, a JSON object);
:func:`stored_switches` reads them back so that ``build_model(name, weights=path)`` builds the
network the file was trained as (e.g. a narrow ``width=0.5`` GUN).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "META_MODEL",
    "META_SWITCHES",
    "SemanticExport",
    "describe_load_error",
    "export_onnx",
    "load_weights",
    "read_state_dict",
    "read_weights_metadata",
    "stored_switches",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LAYOUTS = ("nhwc", "nchw")
#: safetensors metadata keys (str -> str) of an exported weights file
META_MODEL = "seg_perception.model"
META_SWITCHES = "seg_perception.switches"
_LEGACY_META = {META_MODEL: "model", META_SWITCHES: "switches"}  # before the prefix
_IdsFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class SemanticExport(nn.Module):
    """uint8 RGB image -> ``(class_ids uint8 (N,H,W), confidence float32 (N,H,W))``.

    ``image``: ``(N, H, W, 3)`` for ``layout="nhwc"`` or ``(N, 3, H, W)`` for ``"nchw"``.
    Normalisation ``(x / 255 - mean) / std`` runs in the graph as one multiply-add.
    With ``export_logits=True`` the output is the raw ``logits (N, K, H, W)`` instead.
    """

    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        net: nn.Module,
        *,
        layout: str = "nhwc",
        export_logits: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"SemanticExport: invalid layout={layout!r}; valid: nhwc, nchw")
        if not export_logits and not callable(getattr(net, "forward_ids", None)):
            raise TypeError(f"SemanticExport: {type(net).__name__} has no forward_ids(x) method")
        self.net = net
        self.layout = layout
        self.export_logits = export_logits
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.train(net.training)  # adopt the wrapped net's mode instead of nn.Module's default

    @property
    def output_names(self) -> list[str]:
        return ["logits"] if self.export_logits else ["class_ids", "confidence"]

    def normalise(self, image: Tensor) -> Tensor:
        """uint8 image in ``self.layout`` -> normalised float ``(N, 3, H, W)``."""
        x = image.permute(0, 3, 1, 2) if self.layout == "nhwc" else image
        return x.float() * self.scale + self.shift

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = self.normalise(image)
        if self.export_logits:
            return self.net(x)
        ids, conf = cast(_IdsFn, self.net.forward_ids)(x)
        return ids.to(torch.uint8), conf.float()


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_hw: tuple[int, int],
    batch: int = 1,
    dynamic_batch: bool = True,
    opset: int = 17,
    layout: str = "nhwc",
) -> Path:
    """Export ``module`` (a :class:`SemanticExport`, or a semantic net that gets wrapped in one
    with ``layout``) to ONNX at ``path``; input ``image`` uint8, outputs as the wrapper's.

    Written atomically (temp file in the target folder + rename) after ``onnx.checker``.
    The module is traced in eval mode without gradients; every submodule's mode is restored.
    """
    import onnx

    if opset < 16:
        raise ValueError(f"export_onnx: opset {opset} has no GridSample; need >= 16")
    if isinstance(module, SemanticExport):
        if module.layout != layout:
            raise ValueError(
                f"export_onnx: layout={layout!r} but the SemanticExport has {module.layout!r}"
            )
        wrapper = module
    else:
        wrapper = SemanticExport(module, layout=layout)
    h, w = input_hw
    shape = (batch, h, w, 3) if layout == "nhwc" else (batch, 3, h, w)
    gen = torch.Generator().manual_seed(0)
    device = next(wrapper.parameters()).device
    dummy = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)
    names = wrapper.output_names
    dynamic_axes = {n: {0: "batch"} for n in ["image", *names]} if dynamic_batch else None

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    modes = {m: m.training for m in wrapper.modules()}
    try:
        wrapper.eval()
        with torch.no_grad():
            outputs = wrapper(dummy)
        outputs = (outputs,) if isinstance(outputs, Tensor) else outputs
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        _set_output_shapes(proto, [tuple(o.shape) for o in outputs], dynamic_batch)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, out)
    finally:
        for m, mode in modes.items():
            m.training = mode
        tmp.unlink(missing_ok=True)
    return out


def _set_output_shapes(proto: object, shapes: list[tuple[int, ...]], dynamic_batch: bool) -> None:
    """The tracer leaves the output H/W symbolic; write the static sizes for TensorRT & co."""
    for value, shape in zip(proto.graph.output, shapes, strict=True):  # type: ignore[attr-defined]
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, n in enumerate(shape):
            d = dims.add()
            if i == 0 and dynamic_batch:
                d.dim_param = "batch"
            else:
                d.dim_value = int(n)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.pt``/``.pth`` state dict (``weights_only=True``).

    A ``.pt`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` (training checkpoints) is
    unwrapped; a common ``module.`` prefix (DataParallel / DDP) is stripped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, foreign or malicious file: name it
        raise ValueError(f"cannot read weights file {p}: {describe_load_error(e)}") from e
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {p} does not hold a state dict of tensors")
    sd = dict(state)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def read_weights_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``str -> str`` header metadata of a ``.safetensors`` file; ``{}`` for ``.pt``/``.pth``
    or a file without metadata. Unreadable files are a ValueError naming the file."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:  # reads the JSON header only
            meta = f.metadata()
    except Exception as e:  # not a safetensors file (e.g. a pickle with this suffix)
        raise ValueError(f"cannot read weights file {p}: {describe_load_error(e)}") from e
    return dict(meta or {})


def stored_switches(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """``(model name or None, builder switches)`` stored in a weights file's metadata.

    ``(None, {})`` for a file without metadata (it builds the default network, as before).
    Switches naming weight files (``weights``, ``backbone_weights``, ...) are training-time
    inputs, not architecture, and are left out. Malformed metadata is a ValueError naming the
    file and the key.
    """
    meta = read_weights_metadata(path)

    def get(key: str) -> str | None:
        return meta.get(key, meta.get(_LEGACY_META[key]))

    model = get(META_MODEL) or None
    raw = get(META_SWITCHES)
    if raw is None:
        return model, {}
    try:
        switches = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"weights file {path}: metadata {META_SWITCHES!r} is not JSON ({e}): {raw[:200]!r}"
        ) from None
    if not isinstance(switches, dict):
        raise ValueError(
            f"weights file {path}: metadata {META_SWITCHES!r} must be a JSON object, "
            f"got {type(switches).__name__}"
        )
    return model, {str(k): v for k, v in switches.items() if "weights" not in str(k)}


def describe_load_error(err: BaseException) -> str:
    """One line for a failed ``torch.load(weights_only=True)`` / safetensors read.

    torch's refusal of a pickle that needs code (``exec``, ``os.system``, a class) is several
    lines with terminal colours and advice to load with ``weights_only=False``, advice that is
    wrong for an untrusted file: only its reason is kept.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        return (
            f"refused by the weights-only unpickler ({reason}); weights files hold only "
            "tensors and plain containers, never code"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first[:300]}"


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, ignore_unexpected: bool = False
) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` (in place) and return ``model``.

    Floating-point tensors are cast to the dtype of the model's tensor (e.g. fp16 safetensors
    into an fp32 model). Missing keys, wrong shapes and (unless ``ignore_unexpected``)
    unexpected keys are a ``ValueError`` naming the file and the keys.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    check_fits(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(v.shape) for k, v in sd.items()},
        path=path,
        model_name=type(model).__name__,
        ignore_unexpected=ignore_unexpected,
    )
    cast = {
        k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
        for k, v in sd.items()
        if k in own
    }
    model.load_state_dict(cast, strict=True)
    return model


def check_fits(
    own: Mapping[str, tuple[int, ...]],
    stored: Mapping[str, tuple[int, ...]],
    *,
    path: str | os.PathLike[str],
    model_name: str,
    ignore_unexpected: bool = False,
) -> None:
    """ValueError naming the file and the keys when the tensor shapes ``stored`` (a weights
    file's) do not fit the network's shapes ``own``: wrong shapes, missing keys and (unless
    ``ignore_unexpected``) unexpected keys."""
    missing = sorted(k for k in own if k not in stored)
    unexpected = sorted(k for k in stored if k not in own)
    wrong = [
        f"{k}: expected {own[k]}, got {stored[k]}"
        for k in own
        if k in stored and stored[k] != own[k]
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(_head(wrong)))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(_head(missing)))
    if unexpected and not ignore_unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(_head(unexpected)))
    if problems:
        raise ValueError(f"weights file {path} does not fit {model_name}: " + " | ".join(problems))


def stored_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, read from its header only (no tensor
    data is loaded). Unreadable files are a ValueError naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as e:
        raise ValueError(f"cannot read weights file {path}: {describe_load_error(e)}") from e


def _head(items: list[str], n: int = 8) -> list[str]:
    return items[:n] + ([f"... (+{len(items) - n} more)"] if len(items) > n else [])
