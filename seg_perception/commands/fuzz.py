"""``seg-perception fuzz``: malformed and good camera frames into a real ``seg_node``.

Two node processes are started as the launch file starts them (parameter file, ``--ros-args``),
one per input transport (``raw`` reads ``image``, ``compressed`` reads ``image/compressed``), each
in a namespace of its own on loopback DDS. A seeded plan (:mod:`.fuzz_messages`) is sent one
message at a time, and each is *accounted for* before the next goes out:

* a good frame: its ``segmentation/semantic`` output with the same header stamp arrived (and has
  the input's resolution and ``mono8``);
* a bad frame: the camera's ``bad_frames`` counter on /diagnostics went up (the reason counted is
  compared with the expected one).

The node's input is best effort (sensor-data QoS): a message whose ``frames_received`` never rose
was lost in transport, not by the node, and is sent again (``resent``). A node that exits before
it is stopped is a crash (it is restarted, at most three times); at the end each node is
stopped with SIGINT and must exit 0 without a Python traceback in its output.
Goal: 0 crashes, every good frame answered, every bad frame counted (under its reason).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg_perception.stress.common import add_node_arguments

if TYPE_CHECKING:
    from seg_perception.stress.fuzz_session import Session


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=500, help="messages to send (500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the message mix (0)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=128 * 128,
        help="the node's max_pixels; larger frames must be refused (16384)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds the node may take to account for one message (15)",
    )
    add_node_arguments(
        parser,
        startup_help="seconds for a node to start and answer its first frame (180)",
        out_help="keep the node logs in this folder",
    )


def run(args: argparse.Namespace) -> int:
    from seg_perception.config import parse_key_values

    overrides = parse_key_values(args.set, "--set")
    result = fuzz(
        messages=args.messages,
        seed=args.seed,
        max_pixels=args.max_pixels,
        timeout=args.timeout,
        startup_timeout=args.startup_timeout,
        engine_cache=args.engine_cache,
        overrides=overrides,
        out_dir=args.out,
    )
    from seg_perception.stress.common import report_goals, write_json

    write_json(args.json, result)
    return report_goals(result["failed_goals"], "fuzz")


def fuzz(
    *,
    messages: int = 500,
    seed: int = 0,
    max_pixels: int = 128 * 128,
    timeout: float = 15.0,
    startup_timeout: float = 180.0,
    engine_cache: str | None = None,
    overrides: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the fuzz session; returns the JSON result (see the module docstring)."""
    import os

    from seg_perception.stress.common import (
        SMALL_NODE_PARAMS,
        DiagnosticsWatcher,
        RosClient,
        StressError,
        write_params_file,
    )
    from seg_perception.stress.fuzz_messages import COMPRESSED, RAW, plan
    from seg_perception.stress.fuzz_session import Session, Target

    if max_pixels < 96 * 96:
        raise ValueError(
            f"--max-pixels must be >= {96 * 96} (the largest good frame), got {max_pixels}"
        )
    msgs = plan(messages, seed=seed, max_pixels=max_pixels)
    tmp = tempfile.TemporaryDirectory(prefix="seg_fuzz_")
    out = Path(out_dir) if out_dir else Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    params = {**SMALL_NODE_PARAMS, "max_pixels": int(max_pixels)}
    params["engine_cache"] = str(engine_cache or Path(tmp.name) / "engines")
    params.update(overrides or {})
    base = f"/seg_fuzz_{os.getpid()}_{seed}"
    targets = {}
    for transport in (RAW, COMPRESSED):
        pfile = write_params_file(
            Path(tmp.name) / f"{transport}.yaml", {**params, "input_transport": transport}
        )
        targets[transport] = Target(transport, f"{base}/{transport}", pfile, out)
    t0 = time.monotonic()
    client = RosClient(f"seg_fuzz_{os.getpid()}")
    session = Session(client, DiagnosticsWatcher(client.sub), targets, timeout)
    try:
        for t in targets.values():
            t.start()  # both start (import torch, export ONNX) at the same time
        try:
            for t in targets.values():
                session.ready(t, startup_timeout)
        except StressError as exc:  # counted as a crash: the goal fails, the report still comes
            session.crashes.append(
                {"index": None, "kind": "startup", "error": str(exc), "log_tail": t.proc.log_tail()}
            )
            session.aborted = True
        print(
            f"[fuzz] {len(msgs)} messages (seed {seed}) into {base}/{{raw,compressed}}", flush=True
        )
        session.send_all(msgs)
        session.finish()
    finally:
        for t in targets.values():
            if t.proc is not None and t.proc.exit_code is None:
                t.proc.stop()
        client.close()
    result = _summary(session, msgs, seed=seed, elapsed=time.monotonic() - t0)
    if out_dir:
        result["logs"] = str(out)
    tmp.cleanup()
    return result


def _summary(session: Session, msgs: list[Any], *, seed: int, elapsed: float) -> dict[str, Any]:
    """The JSON result and the printed table of a finished session."""
    from seg_perception.stress.common import format_table

    status = {o["index"]: o for o in session.outcome}
    per_kind: dict[str, dict[str, Any]] = {}
    for m in msgs:
        o = status.get(m.index, {"status": "not_sent"})
        k = per_kind.setdefault(
            m.kind,
            {
                "transport": m.transport,
                "good": m.good,
                "expected_reason": m.reason,
                "sent": 0,
                "ok": 0,
                "statuses": Counter(),
                "reasons": Counter(),
            },
        )
        k["sent"] += o["status"] != "not_sent"
        k["ok"] += o["status"] in ("answered", "counted")
        k["statuses"][o["status"]] += 1
        for r in o.get("reasons", []):
            k["reasons"][r] += 1
    sent = [(status[m.index], m) for m in msgs if m.index in status]
    sent = [(o, m) for o, m in sent if o["status"] != "not_sent"]
    good = [o for o, m in sent if m.good]
    bad = [o for o, m in sent if not m.good]
    res: dict[str, Any] = {
        "crashes": len(session.crashes),
        "good_sent": len(good),
        "good_answered": sum(o["status"] == "answered" for o in good),
        "bad_sent": len(bad),
        "bad_counted": sum(o["status"] in ("counted", "wrong_reason") for o in bad),
        "bad_counted_with_expected_reason": sum(o["status"] == "counted" for o in bad),
        "messages": len(msgs),
        "not_sent": len(msgs) - len(sent),
        "seed": seed,
        "resent_lost_in_transport": session.resent,
        "node_exit_code": {
            t.transport: (t.exit_codes[-1] if t.exit_codes else None)
            for t in session.targets.values()
        },
        "node_starts": {t.transport: t.starts for t in session.targets.values()},
        "tracebacks": sum(t.tracebacks for t in session.targets.values()),
        "per_kind": {
            k: {**v, "statuses": dict(v["statuses"]), "reasons": dict(v["reasons"])}
            for k, v in per_kind.items()
        },
        "problems": [o for o in session.outcome if o["status"] not in ("answered", "counted")][:50],
        "crash_details": session.crashes,
        "node_counters": session.node_counters,
        "elapsed_s": round(elapsed, 1),
    }
    failed = []
    if res["crashes"]:
        failed.append(f"{res['crashes']} crash(es)")
    if res["good_answered"] < res["good_sent"] or res["not_sent"]:
        failed.append(
            f"good frames answered {res['good_answered']}/{res['good_sent']}"
            + (f", {res['not_sent']} not sent" if res["not_sent"] else "")
        )
    if res["bad_counted_with_expected_reason"] < res["bad_sent"]:
        failed.append(
            f"bad frames counted {res['bad_counted']}/{res['bad_sent']} "
            f"({res['bad_counted_with_expected_reason']} under the expected reason)"
        )
    res["failed_goals"] = failed
    res["goal_met"] = not failed
    rows = [
        (
            k,
            v["transport"],
            "good" if v["good"] else v["expected_reason"],
            v["sent"],
            v["ok"],
            ",".join(
                f"{s}:{n}" for s, n in v["statuses"].items() if s not in ("answered", "counted")
            )
            or "-",
        )
        for k, v in sorted(per_kind.items(), key=lambda kv: (not kv[1]["good"], kv[0]))
    ]
    print(format_table(("kind", "transport", "expect", "sent", "ok", "problems"), rows))
    print(
        f"[fuzz] crashes {res['crashes']}  good answered {res['good_answered']}/"
        f"{res['good_sent']}  bad counted {res['bad_counted']}/{res['bad_sent']}  "
        f"resent {session.resent}  node exit {res['node_exit_code']}  {res['elapsed_s']} s",
        flush=True,
    )
    return res
