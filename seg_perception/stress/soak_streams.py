"""The camera side of ``seg-perception soak``: one publisher per camera on a timer, the
subscriptions to each camera's ``segmentation/semantic``, and the pairing of answers with sent
frames by header stamp and frame_id (thread safe: timers and subscriptions run in two threads).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class CameraStreams:
    """Publishers, timers and answer bookkeeping of every camera (thread safe)."""

    def __init__(self, client: Any, base: str, names: list[str], images: list[Any]) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from seg_perception.codec import array_to_imgmsg
        from seg_perception.ros.node import OUTPUT_QOS

        self.client, self.names = client, names
        self.lock = threading.Lock()
        self.publishing = False
        self.sent = {c: 0 for c in names}
        self.pending: dict[str, set[int]] = {c: set() for c in names}  # stamps sent, unanswered
        self.answered = {c: 0 for c in names}
        self.foreign = {c: 0 for c in names}  # answers whose stamp/frame_id is not this camera's
        self.handshake: dict[str, set[int]] = {c: set() for c in names}
        self.latency: dict[str, list[float]] = {c: [] for c in names}
        self.last_answer = time.monotonic()
        self.pubs, self.msgs, self.input_topics = {}, {}, {}
        for c in names:
            self.input_topics[c] = f"{base}/{c}/image"
            self.pubs[c] = client.pub.create_publisher(
                Image, self.input_topics[c], qos_profile_sensor_data
            )
            self.msgs[c] = [array_to_imgmsg(img, "rgb8") for img in images]
            for m in self.msgs[c]:
                m.header.frame_id = f"{c}_optical"
            client.sub.create_subscription(
                Image, f"{base}/{c}/segmentation/semantic", self._on_answer(c), OUTPUT_QOS
            )
        self.timers: list[Any] = []

    def _on_answer(self, cam: str):
        from seg_perception.codec import stamp_ns

        def on_output(msg: Any) -> None:
            now_ns = time.time_ns()
            key = stamp_ns(msg.header)
            with self.lock:
                if msg.header.stamp.sec < 1000 and msg.header.frame_id == f"{cam}_optical":
                    self.handshake[cam].add(key)  # a start-up frame
                elif key in self.pending[cam] and msg.header.frame_id == f"{cam}_optical":
                    self.pending[cam].discard(key)
                    self.answered[cam] += 1
                    self.latency[cam].append((now_ns - key) / 1e6)
                    self.last_answer = time.monotonic()
                else:
                    self.foreign[cam] += 1

        return on_output

    def send_handshake(self, cam: str, k: int) -> None:
        from builtin_interfaces.msg import Time

        msg = self.msgs[cam][0]
        msg.header.stamp = Time(sec=1, nanosec=k)
        self.pubs[cam].publish(msg)

    def handshake_answered(self, cam: str, k: int) -> bool:
        with self.lock:
            return 1_000_000_000 + k in self.handshake[cam]

    def start(self, fps: float) -> None:
        self.publishing = True
        for c in self.names:
            self.timers.append(self.client.pub.create_timer(1.0 / fps, self._tick(c)))

    def _tick(self, cam: str):
        from seg_perception.codec import stamp_ns

        frames = self.msgs[cam]
        counter = [0]

        def on_timer() -> None:
            if not self.publishing:
                return
            msg = frames[counter[0] % len(frames)]
            counter[0] += 1
            msg.header.stamp = self.client.now_stamp()
            with self.lock:
                self.pending[cam].add(stamp_ns(msg.header))
                self.sent[cam] += 1
            self.pubs[cam].publish(msg)

        return on_timer

    def stop(self) -> None:
        self.publishing = False
        for t in self.timers:
            t.cancel()

    def totals(self) -> tuple[int, int]:
        with self.lock:
            return sum(self.sent.values()), sum(self.answered.values())


def camera_counters(diag: Any, streams: CameraStreams) -> dict[str, dict[str, int]]:
    """Each camera's counters from the node's next /diagnostics status."""
    from seg_perception.stress.common import node_counters

    out = {}
    for c in streams.names:
        topic = streams.input_topics[c]
        values = diag.wait(topic, lambda v: True, 2.0, after_seq=diag.seq(topic))
        out[c] = node_counters(values)
    return out
