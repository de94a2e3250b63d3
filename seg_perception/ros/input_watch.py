"""What seg_node tells its user about frames that do not reach a camera topic.

Each diagnostics period the node hands a camera's counts to :meth:`InputWatch.check`, which
decides what to log, once per episode: a publisher matched for ``diagnostics.silent_input_s``
with no frame arriving, or at least ``diagnostics.lost_input_ratio`` of the frames sent lost on
the way (gaps in the publishers' sequence numbers). It names the topic, the publishers, the
likely cause and the fix (:mod:`seg_perception.ros.dds`), and says when frames arrive again. No
rclpy here: the node looks the publishers up and does the logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from seg_perception.config import DiagnosticsConfig
from seg_perception.ros.dds import PublisherInfo, lost_input_advice, silent_input_advice
from seg_perception.ros.diagnostics import lost_in_transport


@dataclass
class InputReport:
    """The outcome of one period: lines to log at WARN and at INFO, and the publishers looked
    up (only while the input is silent or losing frames: the graph query is not free)."""

    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    publishers: list[PublisherInfo] = field(default_factory=list)


@dataclass
class InputWatch:
    """One camera's input episodes: whether its current silence / loss was already logged."""

    silence_reported: bool = False  # a matched publisher is silent, and that was logged
    loss_reported: bool = False  # frames are lost in transport, and that was logged

    def check(
        self,
        topic: str,
        window: dict[str, float],
        silent_s: float,
        limits: DiagnosticsConfig,
        input_qos: str,
        publishers: Callable[[], list[PublisherInfo]],
    ) -> InputReport:
        """One diagnostics period of the camera on ``topic`` (fully qualified): ``window`` its
        counts since the previous period (``received``, ``lost_in_transport``), ``silent_s``
        how long a matched publisher has sent nothing, ``publishers`` the graph lookup."""
        is_silent = limits.silent_input_s > 0 and silent_s >= limits.silent_input_s
        losing = lost_in_transport(window, limits)
        report = InputReport(publishers=publishers() if is_silent or losing else [])
        if is_silent and not self.silence_reported:
            report.warnings.append(
                silent_input_advice(topic, report.publishers, seconds=silent_s, input_qos=input_qos)
            )
        elif self.silence_reported and not is_silent and window["received"]:
            report.infos.append(f"frames arrive on {topic} again")
        self.silence_reported = is_silent
        if losing and not self.loss_reported:
            lost = int(window["lost_in_transport"])
            report.warnings.append(
                lost_input_advice(
                    topic,
                    report.publishers,
                    lost=lost,
                    sent=lost + int(window["received"]),
                    input_qos=input_qos,
                )
            )
            self.loss_reported = True
        elif self.loss_reported and not losing and window["received"]:
            self.loss_reported = False  # a period with frames and (almost) no loss ends it
        return report
