"""``seg-perception info``: this machine, the library versions, the ROS environment and the
hardware-dependent choices as they fall here -- in the spirit of ``torch.utils.collect_env`` and
``ros2 doctor``. Paste its output into bug reports and benchmark notes.

The machine comes from :func:`seg_perception.machine.detect`, the DDS profile from
:func:`seg_perception.ros.dds.dds_profile` (the one ``seg_node`` loads under this environment);
``--json PATH`` writes the same report as JSON.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from seg_perception.cli_paths import OutputFile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", default=None, action=OutputFile, help="also write the report as JSON here"
    )


def ros_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """ROS distro, RMW and the DDS profile ``seg_node`` would load under ``env``; rclpy's
    location when it imports."""
    from seg_perception.ros.dds import DEFAULT_RMW, dds_profile

    rmw = env.get("RMW_IMPLEMENTATION") or ""
    profile, why = dds_profile(env)
    try:
        import rclpy

        rclpy_at = os.path.dirname(str(rclpy.__file__))
    except ImportError as exc:
        rclpy_at = f"not importable: {exc}"
    return {
        "ros_distro": env.get("ROS_DISTRO", ""),
        "rclpy": rclpy_at,
        "rmw_implementation": rmw or DEFAULT_RMW,
        "rmw_source": "RMW_IMPLEMENTATION" if rmw else "default",
        "dds_profile": profile,
        "dds_profile_reason": why,
    }


def machine_choices(info: Any) -> dict[str, dict[str, Any]]:
    """The hardware-dependent choices under their default settings on the machine ``info``
    (a :class:`~seg_perception.machine.MachineInfo`)."""
    from seg_perception.machine import choose_amp, choose_int8_mode, cpu_bf16_refusal

    train_device = "cuda" if info.cuda_devices else "cpu"
    amp = choose_amp("auto", train_device, info.features)
    refusal = cpu_bf16_refusal(info.features, info.cpu_model)
    int8 = choose_int8_mode("auto", info.features, info.architecture)
    return {
        "training_amp": {
            "setting": "auto",
            "device": train_device,
            "dtype": amp.value or "fp32",
            "reason": amp.reason,
        },
        "node_cpu_bf16": {
            "policy": "refused" if refusal else "allowed",
            "reason": refusal or "this CPU has native bf16 (AVX512-BF16 / AMX-BF16)",
        },
        "int8": {"setting": "auto", "mode": int8.value, "reason": int8.reason},
    }


def collect() -> dict[str, Any]:
    """The whole report (what ``--json`` writes)."""
    from seg_perception.machine import detect, library_versions

    info = detect()
    return {
        "machine": info.as_dict(),
        "versions": library_versions(),
        "ros": ros_environment(os.environ),
        "choices": machine_choices(info),
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text: one ``key: value`` per line, in four sections."""
    from seg_perception.machine import FEATURES

    m, ros, ch = report["machine"], report["ros"], report["choices"]
    ident = f" ({m['cpu_id']})" if m["cpu_id"] else ""
    cuda = "; ".join(
        f"cuda:{d['index']} {d['name']} (compute capability {d['capability']}, "
        f"{d['memory_gib']} GiB)"
        for d in m["cuda_devices"]
    )
    lines = [
        "machine",
        f"  cpu:            {m['cpu_model']}{ident}, {m['architecture']}",
        f"  cores:          {m['physical_cores']} physical, {m['logical_cores']} logical, "
        f"{m['usable_cores']} usable by this process",
        f"  features:       {' '.join(m['features']) or 'none'} (from {m['feature_source']})",
        f"  absent:         {' '.join(f for f in FEATURES if f not in m['features']) or 'none'}",
        f"  torch kernels:  {m['torch_dispatch']}",
        f"  cuda:           {cuda or 'none'}",
        "versions",
        *(f"  {k + ':':<15} {v or 'not installed'}" for k, v in report["versions"].items()),
        "ros",
        f"  distro:         {ros['ros_distro'] or 'ROS_DISTRO not set (pip wheels?)'}",
        f"  rclpy:          {ros['rclpy']}",
        f"  rmw:            {ros['rmw_implementation']} ({ros['rmw_source']})",
        f"  dds profile:    {ros['dds_profile'] or 'none'} ({ros['dds_profile_reason']})",
        "choices on this machine",
        f"  training amp:   {ch['training_amp']['dtype']} on {ch['training_amp']['device']} "
        f"(optim.amp: auto; {ch['training_amp']['reason']})",
        f"  node cpu bf16:  {ch['node_cpu_bf16']['policy']} ({ch['node_cpu_bf16']['reason']})",
        f"  int8 mode:      {ch['int8']['mode']} ({ch['int8']['reason']})",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    print(format_report(report))
    if args.json:
        import json
        from pathlib import Path

        from seg_perception.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
    return 0
