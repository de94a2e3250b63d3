"""``seg-perception bench engines``: every backend and precision on this machine, in one run.

1. Ceiling: this machine's fp32 3x3-convolution rate (oneDNN through torch, NHWC / channels-last,
   256 -> 256 channels on a 128x256 map), GFLOP/s. It is timed again in every group below,
   interleaved with the engines (:func:`round_robin`), and each row's ceiling_ratio uses the
   ceiling of its own group: the machine is shared, and interleaving makes load from other
   processes hit the ceiling and the engines alike. ``min_ms`` is the least-disturbed call.
2. GUN, ShelfNet-18 and ShelfNet-50 at 512x1024 through each available backend and precision
   (torch fp32 / bf16 where the CPU has bf16 hardware, onnxruntime fp32 / int8 in this CPU's
   int8 mode; TensorRT where present): latency p50 / p95 over ``--runs`` calls after warm-up,
   GFLOPs (convolutions and matrix products, 2 per MAC, counted by ``torch.utils.flop_counter``
   on the meta device), achieved GFLOP/s and ceiling_ratio = achieved / ceiling. Reduced
   precisions are compared with fp32 on synthetic val frames: pixel agreement and mIoU of their
   class ids against the fp32 class ids.
3. Peers, through onnxruntime fp32 with the same export form (uint8 in, ids + confidence out):
   torchvision ``lraspp_mobilenet_v3_large`` and ``deeplabv3_resnet50`` (random weights),
   ``--peer-runs`` timed calls (fewer: deeplabv3 is ~650 GFLOP per frame).
4. 4 cameras in one call vs 4 sequential calls (GUN, best fp32 backend): batch4_speedup.

Weights: the shipped file of the row's network (``config.SHIPPED_WEIGHTS``: ``gun``, and
``shelfnet`` for the ``shelfnet18`` row, whose file is a ResNet-18 ShelfNet) when present --
then ``miou_gt`` scores every variant against the synthetic ground truth, and
the int8 / bf16 mIoU loss is ``miou_gt(fp32) - miou_gt(reduced)`` -- else seeded random weights,
whose near-tied logits make the agreement columns a pessimistic bound.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.cli_paths import OutputDir, OutputFile
from seg_perception.engines.bench_measure import (
    CEILING_SHAPE,
    NUM_CLASSES,
    CeilingConv,
    ceiling_gflops,
    count_gflops,
    miou,
    round_robin,
)
from seg_perception.engines.cache import default_cache_dir
from seg_perception.machine import (
    choose_int8_mode,
    detect,
    has_bf16,
    machine_header,
    machine_record,
)
from seg_perception.stats import percentiles

__all__ = [
    "MODELS",
    "CeilingConv",
    "add_arguments",
    "ceiling_gflops",
    "miou",
    "round_robin",
    "run",
]

#: bench name -> (model, builder switches)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "gun": ("gun", {}),
    "shelfnet18": ("shelfnet", {"backbone": "resnet18"}),
    "shelfnet50": ("shelfnet", {"backbone": "resnet50"}),
}
PEERS = ("lraspp_mbv3", "deeplabv3_r50")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", default=None, action=OutputFile, help="also write the results as JSON here"
    )
    parser.add_argument("--runs", type=int, default=10, help="timed calls per engine (10)")
    parser.add_argument("--peer-runs", type=int, default=5, help="timed calls per peer (5)")
    parser.add_argument("--network", default="512x1024", help="network HxW (512x1024)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--no-peers", action="store_true", help="skip the torchvision peers")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    parser.add_argument("--val-frames", type=int, default=4, help="synthetic val frames (4)")
    parser.add_argument(
        "--engine-cache", default=None, action=OutputDir, help="export/engine cache directory"
    )


class _TorchvisionAdapter:
    """Gives a torchvision segmentation model the ``forward_ids`` of the package's networks."""

    @staticmethod
    def wrap(net: Any) -> Any:
        import torch
        from torch import nn

        class Adapter(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)["out"]

            def forward_ids(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # max softmax = 1 / sum(exp(logits - max)): same values as softmax(1).max(1)
                # without onnxruntime's Softmax over axis 1 (it transposes all class planes)
                logits = self.forward(x)
                top, ids = logits.max(dim=1)
                conf = torch.exp(logits - top.unsqueeze(1)).sum(dim=1).reciprocal()
                return ids.to(torch.uint8), conf

        return Adapter()


def _peer(name: str) -> Any:
    from torchvision.models import segmentation as seg

    if name == "lraspp_mbv3":
        net = seg.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES
        )
    else:
        net = seg.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
        )
    return _TorchvisionAdapter.wrap(net)


def _peer_onnx(name: str, hw: tuple[int, int], cache: Path) -> Path:
    import torch

    from seg_perception.engines.cache import key_digest, record, verify
    from seg_perception.networks.export import SemanticExport, export_onnx

    key = {"peer": name, "input_hw": list(hw), "torch": torch.__version__, "seed": 0, "form": 2}
    path = cache / "onnx" / f"peer-{name}-{hw[0]}x{hw[1]}-{key_digest(key, 16)}.onnx"
    if verify(path, key) is not None:
        torch.manual_seed(0)
        export_onnx(SemanticExport(_peer(name).eval()), path, input_hw=hw)
        record(path, key)
    return path


def _weights_for(bench_name: str) -> Path | None:
    """The shipped weights of a bench row's network (``SHIPPED_WEIGHTS``), when the file exists
    and holds that network (ShelfNet's file is a ResNet-18 one: the shelfnet18 row's)."""
    from seg_perception.config import SHIPPED_WEIGHTS, resolve_path

    model, switches = MODELS[bench_name]
    if model not in SHIPPED_WEIGHTS:
        return None
    p = resolve_path(SHIPPED_WEIGHTS[model])
    if not p.is_file():
        return None
    stored = _stored(p)
    backbone = switches.get("backbone")
    return p if backbone is None or stored.get("backbone", "resnet18") == backbone else None


def _stored(weights: Path | None) -> dict[str, Any]:
    from seg_perception.networks.export import stored_switches

    return stored_switches(weights)[1] if weights is not None else {}


def _row(
    model: str, backend: str, precision: str, times: list[float], gflops: float, ceiling: float
) -> dict[str, Any]:
    lat = percentiles([t * 1e3 for t in times])
    p50, p95 = lat["p50"], lat["p95"]
    achieved = gflops / (p50 / 1e3)
    return {
        "model": model,
        "backend": backend,
        "precision": precision,
        "runs": len(times),
        "p50_ms": round(p50, 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(1e3 * min(times), 2),
        "gflops": round(gflops, 2),
        "gflops_per_s": round(achieved, 1),
        "ceiling_gflops": round(ceiling, 1),
        "ceiling_ratio": round(achieved / ceiling, 3),
    }


def _variants() -> list[tuple[str, str]]:
    out = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    if has_bf16(detect().features):  # the torch backend refuses emulated bf16
        out.insert(1, ("torch", "bf16"))
    from seg_perception.engines.tensorrt_backend import tensorrt_available

    if tensorrt_available():
        import torch

        if torch.cuda.is_available():
            out += [("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8")]
    return out


def _accuracy(row: dict[str, Any], ids: list[np.ndarray], ref: list[np.ndarray]) -> None:
    pairs = list(zip(ids, ref, strict=True))
    row["agree_pct"] = round(100 * float(np.mean([np.mean(a == b) for a, b in pairs])), 2)
    row["miou_vs_fp32"] = round(100 * float(np.mean([miou(a, b) for a, b in pairs])), 2)


def _bench_model(
    bench_name: str, args: argparse.Namespace, ctx: dict[str, Any]
) -> list[dict[str, Any]]:
    """All variants of one network, timed round-robin with the ceiling conv."""
    from seg_perception.engines.factory import build
    from seg_perception.engines.spec import EngineSpec
    from seg_perception.networks import build_model

    model, switches = MODELS[bench_name]
    hw, x1, val = ctx["hw"], ctx["x1"], ctx["val"]
    weights = _weights_for(bench_name)
    # the net the engines build: a shipped file's stored switches (e.g. width 0.5) under ours
    net_switches = {"num_classes": NUM_CLASSES, **_stored(weights), **switches}
    gflops = count_gflops(lambda: build_model(model, **net_switches), hw)
    engines = {
        (backend, precision): build(
            EngineSpec(
                model=model,
                switches=tuple(switches.items()),
                num_classes=NUM_CLASSES,
                input_hw=hw,
                weights=weights,
                backend=backend,
                precision=precision,
                threads=ctx["threads"],
                max_batch=4,
                cache_dir=ctx["cache"],
            )
        )
        for backend, precision in _variants()
    }
    calls: dict[str, Callable[[], object]] = {"ceiling": ctx["ceiling"]}
    calls.update({f"{b}/{p}": (lambda e=e: e.infer(x1)) for (b, p), e in engines.items()})
    times = round_robin(calls, args.runs, warmup=2)
    ceiling = ctx["ceiling"].gflop / float(np.median(times["ceiling"]))
    ctx["ceilings"].append(ceiling)
    rows = []
    ref: dict[str, list[np.ndarray]] = {}
    for (backend, precision), engine in engines.items():
        row = _row(bench_name, backend, precision, times[f"{backend}/{precision}"], gflops, ceiling)
        row["weights"] = "trained" if weights else "random"
        ids = [engine.infer(f.image[None])["class_ids"][0].copy() for f in val]
        if precision == "fp32":
            ref.setdefault("fp32", ids)
            ref[backend] = ids
        _accuracy(row, ids, ref.get(backend, ref["fp32"]))
        if weights is not None:
            row["miou_gt"] = round(
                100 * float(np.mean([miou(i, f.semantic) for i, f in zip(ids, val, strict=True)])),
                2,
            )
        rows.append(row)
        engine.close()
    fp32 = {r["backend"]: r["p50_ms"] for r in rows if r["precision"] == "fp32"}
    best = min(fp32.values())
    for r in rows:
        if r["precision"] != "fp32":
            r["speedup_vs_fp32"] = round(fp32.get(r["backend"], best) / r["p50_ms"], 2)
            r["speedup_vs_best_fp32"] = round(best / r["p50_ms"], 2)
    return rows


def _bench_peers(args: argparse.Namespace, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from seg_perception.engines.onnx_backend import OnnxEngine

    hw = ctx["hw"]
    engines = {
        p: OnnxEngine(_peer_onnx(p, hw, ctx["cache"]), threads=ctx["threads"], max_batch=1, name=p)
        for p in PEERS
    }
    calls: dict[str, Callable[[], object]] = {"ceiling": ctx["ceiling"]}
    calls.update({p: (lambda e=e: e.infer(ctx["x1"])) for p, e in engines.items()})
    times = round_robin(calls, args.peer_runs, warmup=1)
    ceiling = ctx["ceiling"].gflop / float(np.median(times["ceiling"]))
    ctx["ceilings"].append(ceiling)
    rows = []
    for p, engine in engines.items():
        row = _row(
            p, "onnxruntime", "fp32", times[p], count_gflops(lambda p=p: _peer(p), hw), ceiling
        )
        row["weights"] = "random"
        rows.append(row)
        engine.close()
    return rows


def _bench_batch4(backend: str, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from seg_perception.engines.factory import build
    from seg_perception.engines.spec import EngineSpec

    engine = build(
        EngineSpec(
            model="gun",
            num_classes=NUM_CLASSES,
            input_hw=ctx["hw"],
            weights=_weights_for("gun"),
            backend=backend,
            threads=ctx["threads"],
            max_batch=4,
            cache_dir=ctx["cache"],
        )
    )
    x4 = np.stack([f.image for f in ctx["frames"]])
    times = round_robin(
        {
            "batched": lambda: engine.infer(x4),
            "sequential": lambda: [engine.infer(x4[i : i + 1]) for i in range(4)],
        },
        args.runs,
    )
    engine.close()
    batched, seq = (
        percentiles([t * 1e3 for t in times[k]])["p50"] for k in ("batched", "sequential")
    )
    return {
        "model": "gun",
        "backend": backend,
        "batched_p50_ms": round(batched, 1),
        "sequential_p50_ms": round(seq, 1),
        "speedup": round(seq / batched, 3),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from seg_perception.config import parse_hw
    from seg_perception.data.synth import generate_frame

    hw = parse_hw(args.network)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    frames = [generate_frame(seed=7, index=i, height=hw[0], width=hw[1]) for i in range(4)]
    ctx: dict[str, Any] = {
        "hw": hw,
        "threads": threads,
        "cache": Path(args.engine_cache) if args.engine_cache else default_cache_dir(),
        "ceiling": CeilingConv(),
        "ceilings": [ceiling_gflops()],
        "frames": frames,
        "x1": frames[0].image[None],
        # the synthetic val set: another part of the sequence than the timing frames
        "val": [
            generate_frame(seed=7, index=100 + i, height=hw[0], width=hw[1])
            for i in range(args.val_frames)
        ],
    }
    rows: list[dict[str, Any]] = []
    for bench_name in [m for m in args.models.split(",") if m]:
        if bench_name not in MODELS:
            raise ValueError(f"--models: unknown {bench_name!r}; valid: {', '.join(MODELS)}")
        rows += _bench_model(bench_name, args, ctx)
    if not args.no_peers:
        rows += _bench_peers(args, ctx)
    gun_fp32 = [r for r in rows if r["model"] == "gun" and r["precision"] == "fp32"]
    batch4: dict[str, Any] = {}
    if gun_fp32:
        best = min(gun_fp32, key=lambda r: r["p50_ms"])["backend"]
        batch4 = _bench_batch4(best, args, ctx)
    return {
        "machine": machine_record(),
        "threads": threads,
        "int8_mode": choose_int8_mode("auto", detect().features, detect().architecture).value,
        "input_hw": list(hw),
        "ceiling_gflops": round(float(np.median(ctx["ceilings"])), 1),
        "batch4_speedup": batch4.get("speedup"),
        "batch4": batch4,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    hw = result["input_hw"]
    print(machine_header())
    print(
        f"engines at {hw[0]}x{hw[1]}, batch 1, {result['threads']} threads, int8 mode "
        f"{result['int8_mode']}"
    )
    print(f"ceiling: fp32 3x3 conv {CEILING_SHAPE} NHWC = {result['ceiling_gflops']} GFLOP/s")
    cols = [
        "model",
        "backend",
        "precision",
        "runs",
        "p50_ms",
        "p95_ms",
        "min_ms",
        "gflops",
        "gflops_per_s",
        "ceiling_ratio",
        "speedup_vs_fp32",
        "speedup_vs_best_fp32",
        "agree_pct",
        "miou_vs_fp32",
        "miou_gt",
        "weights",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for r in result["rows"]:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    b = result["batch4"]
    if b:
        print(
            f"4 cameras ({b['model']}, {b['backend']} fp32): one batched call "
            f"{b['batched_p50_ms']} ms vs 4 sequential calls {b['sequential_p50_ms']} ms -> "
            f"batch4_speedup {b['speedup']}"
        )
    print(
        "goals: GUN/ShelfNet fp32 best ceiling_ratio >= 0.60; int8 or bf16 >= 1.8x faster "
        "than fp32 with <= 1.0 mIoU point loss; batch4_speedup >= 1.2"
    )


def run(args: argparse.Namespace) -> int:
    result = bench(args)
    print_table(result)
    if args.json:
        from seg_perception.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(result, indent=2))
    return 0
