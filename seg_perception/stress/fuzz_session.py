"""The sending side of ``seg-perception fuzz``: one :class:`Target` per node process, and the
:class:`Session` that sends the plan one message at a time and accounts for each.

A good frame is accounted for when its ``segmentation/semantic`` output with the same header
stamp arrived (and has the input's resolution, ``mono8`` and frame_id); a bad frame when the
camera's ``bad_frames`` counter on /diagnostics went up (the reasons that rose are recorded). The
node's input is best effort: a message after which several diagnostics statuses came without a
``frames_received`` increase never reached the node and is sent again (``resent``); one the node
received but never accounted for within the timeout is ``unaccounted``. A node that exits is a
crash; it is restarted (at most ``MAX_RESTARTS`` times).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

MAX_RESTARTS = 3
RESEND_AFTER_S = 1.5  # no frames_received increase by then: lost in transport, send again
MAX_SENDS = 4


class Target:
    """One node under test and what the driver knows of it."""

    def __init__(self, transport: str, namespace: str, params_file: Path, out: Path) -> None:
        self.transport = transport
        self.namespace = namespace
        self.params_file = params_file
        self.out = out
        self.input_topic = f"{namespace}/image" + ("/compressed" if transport != "raw" else "")
        self.output_topic = f"{namespace}/segmentation/semantic"
        self.proc: Any = None
        self.starts = 0
        self.answers: dict[int, tuple[str, int, int, str]] = {}  # stamp -> frame, h, w, enc
        self.bad_seen = 0  # the node's bad_frames when the last bad frame was accounted
        self.reasons: dict[str, int] = {}
        self.received = 0  # frames_received the node has confirmed
        self.exit_codes: list[int] = []
        self.tracebacks = 0

    def start(self) -> None:
        from seg_perception.stress.common import NodeProcess

        self.starts += 1
        log = self.out / f"seg_node_{self.transport}_{self.starts}.log"
        self.proc = NodeProcess(self.params_file, namespace=self.namespace, log_path=log)


class Session:
    """Sends the plan and accounts for every message (one at a time)."""

    def __init__(self, client: Any, diag: Any, targets: dict[str, Target], timeout: float) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        from seg_perception.ros.node import OUTPUT_QOS

        self.client, self.diag, self.targets, self.timeout = client, diag, targets, timeout
        self.pubs = {}
        for name, t in targets.items():
            msg_type = Image if name == "raw" else CompressedImage
            self.pubs[name] = client.pub.create_publisher(
                msg_type, t.input_topic, qos_profile_sensor_data
            )
            client.sub.create_subscription(Image, t.output_topic, self._sink(t), OUTPUT_QOS)
        self.outcome: list[dict[str, Any]] = []  # one per message
        self.crashes: list[dict[str, Any]] = []
        self.resent = 0
        self.aborted = False
        self.startup_timeout = 180.0
        self.node_counters: dict[str, dict[str, int]] = {}

    @staticmethod
    def _sink(t: Target):
        from seg_perception.codec import stamp_ns

        def on_output(msg: Any) -> None:
            key = stamp_ns(msg.header)
            t.answers[key] = (msg.header.frame_id, msg.height, msg.width, msg.encoding)

        return on_output

    def _handshake_msg(self, t: Target, k: int) -> Any:
        import numpy as np
        from builtin_interfaces.msg import Time

        from seg_perception.stress.fuzz_messages import KINDS, FuzzMessage, to_ros

        kind = "rgb8" if t.transport == "raw" else "jpeg"
        transport, _, _, make = KINDS[kind]
        fields, size = make(np.random.default_rng(k), 1 << 20)
        m = FuzzMessage(-1, kind, transport, True, "", fields, size)
        return to_ros(m, stamp=Time(sec=1, nanosec=k), frame_id="fuzz_handshake")

    def ready(self, t: Target, startup_timeout: float) -> None:
        """Wait until ``t`` answers a frame, then take its counters as the baseline."""
        self.startup_timeout = startup_timeout  # also for a restart after a crash
        from seg_perception.stress.common import bad_reasons, counter, handshake

        handshake(
            lambda k: self.pubs[t.transport].publish(self._handshake_msg(t, k)),
            lambda k: (1_000_000_000 + k) in t.answers,
            t.proc.alive,
            timeout=startup_timeout,
            what=f"{t.transport} node ({t.proc.log_path})",
        )
        time.sleep(0.3)  # let duplicates of the handshake frame land before the baseline
        seq = self.diag.seq(t.input_topic)
        values = self.diag.wait(t.input_topic, lambda v: True, 10.0, after_seq=seq)
        if values is None:
            from seg_perception.stress.common import StressError

            raise StressError(f"{t.transport} node: no /diagnostics status for {t.input_topic}")
        t.received = counter(values, "frames_received")
        t.bad_seen = counter(values, "bad_frames")
        t.reasons = bad_reasons(values)

    def send_all(self, msgs: list[Any]) -> None:
        from seg_perception.stress.common import StressError

        step = max(1, len(msgs) // 10)
        for i, m in enumerate(msgs):
            if self.aborted:
                self.outcome.append({"index": i, "kind": m.kind, "status": "not_sent"})
                continue
            t = self.targets[m.transport]
            try:
                self.outcome.append(self._send_one(t, m))
            except StressError as exc:  # a restarted node never became ready
                self.outcome.append({"index": i, "kind": m.kind, "status": "crash"})
                self.crashes[-1]["restart_error"] = str(exc)
                self.aborted = True
            if (i + 1) % step == 0 or i + 1 == len(msgs):
                done = Counter(o["status"] for o in self.outcome)
                print(
                    f"[fuzz] {i + 1}/{len(msgs)}  answered {done['answered']}  "
                    f"counted {done['counted']}  crashes {len(self.crashes)}  "
                    f"other {sum(v for k, v in done.items() if k not in ('answered', 'counted'))}",
                    flush=True,
                )

    def _send_one(self, t: Target, m: Any) -> dict[str, Any]:
        from builtin_interfaces.msg import Time

        from seg_perception.stress.common import bad_reasons, counter
        from seg_perception.stress.fuzz_messages import to_ros

        stamp = Time(sec=1000 + m.index, nanosec=m.index)
        key = (1000 + m.index) * 1_000_000_000 + m.index
        frame_id = f"fuzz_{m.index}_{m.kind}"
        msg = to_ros(m, stamp=stamp, frame_id=frame_id)
        topic, pub = t.input_topic, self.pubs[t.transport]
        rec: dict[str, Any] = {"index": m.index, "kind": m.kind, "transport": t.transport}
        pub.publish(msg)
        sends, last_send, seq = 1, time.monotonic(), self.diag.seq(topic)
        deadline = last_send + self.timeout
        while True:
            if not t.proc.alive():
                return self._crashed(t, m, rec)
            if m.good and key in t.answers:
                frame, h, w, enc = t.answers[key]
                ok = (frame, h, w, enc) == (frame_id, *m.size, "mono8")
                rec["status"] = "answered" if ok else "wrong_answer"
                if not ok:
                    rec["got"] = {"frame_id": frame, "size": [h, w], "encoding": enc}
                t.received += 1
                break
            values = self.diag.latest(topic)
            if not m.good and counter(values, "bad_frames") > t.bad_seen:
                now = bad_reasons(values)
                got = sorted(r for r, n in now.items() if n > t.reasons.get(r, 0))
                t.bad_seen, t.reasons = counter(values, "bad_frames"), now
                rec["status"] = "counted" if got == [m.reason] else "wrong_reason"
                rec["reasons"] = got
                t.received += 1
                break
            now_s = time.monotonic()
            if now_s > deadline:
                received = counter(values, "frames_received")
                rec["status"] = "unaccounted"
                rec["node"] = {"frames_received": received, "expected": t.received + 1}
                t.received = max(t.received + 1, received)
                break
            # Best-effort input: several statuses since the send and frames_received did not
            # rise, so the node never got it (not the node's fault): send it again.
            if (
                now_s - last_send > RESEND_AFTER_S
                and sends < MAX_SENDS
                and self.diag.seq(topic) > seq + 2
                and counter(values, "frames_received") <= t.received
            ):
                pub.publish(msg)
                self.resent += 1
                sends, last_send, seq = sends + 1, now_s, self.diag.seq(topic)
            time.sleep(0.005)
        rec["sends"] = sends
        return rec

    def _crashed(self, t: Target, m: Any, rec: dict[str, Any]) -> dict[str, Any]:
        code = t.proc.proc.poll()
        t.exit_codes.append(int(code))
        t.tracebacks += int(t.proc.has_traceback())
        self.crashes.append(
            {
                "index": m.index,
                "kind": m.kind,
                "transport": t.transport,
                "exit_code": code,
                "log_tail": t.proc.log_tail(),
            }
        )
        print(
            f"[fuzz] CRASH: {t.transport} node exited ({code}) on {m.kind} #{m.index}", flush=True
        )
        rec["status"] = "crash"
        if len(self.crashes) > MAX_RESTARTS:
            self.aborted = True
        else:
            t.start()
            self.ready(t, self.startup_timeout)
        return rec

    def finish(self) -> None:
        """Final counters, then SIGINT: each node must exit 0 without a traceback."""
        from seg_perception.stress.common import node_counters

        for t in self.targets.values():
            seq = self.diag.seq(t.input_topic)
            values = self.diag.wait(t.input_topic, lambda v: True, 2.0, after_seq=seq)
            self.node_counters[t.transport] = node_counters(values)
            if t.proc.alive():
                code = t.proc.stop()
                t.exit_codes.append(code)
                tb = t.proc.has_traceback()
                t.tracebacks += int(tb)
                if code != 0 or tb:
                    self.crashes.append(
                        {
                            "index": None,
                            "kind": "shutdown",
                            "transport": t.transport,
                            "exit_code": code,
                            "traceback": tb,
                            "log_tail": t.proc.log_tail(),
                        }
                    )
