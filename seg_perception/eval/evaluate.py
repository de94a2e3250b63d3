"""Offline evaluation: run the pipeline on every frame of a ROS 2 bag (:func:`evaluate_bag`) or
of a Cityscapes-format folder (:func:`evaluate_cityscapes`), score it against the ground truth,
write ``metrics.json``, a report and (optionally) the Cityscapes export of
:mod:`.cityscapes_export`. Both inputs share the per-frame code (:class:`FrameEvaluation`), so
they score and export alike.

Bags: ROS-free except for ``rclpy.serialization`` and the ``sensor_msgs`` message classes:
messages are deserialized into rclpy types so that the recorded outputs (``outputs.mcap``) carry
the input headers unchanged. Ground truth is aligned with the camera by header stamp. Camera
frames whose ground truth is missing are still segmented and recorded (no drops) but not scored
(``frames.without_gt``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from seg_perception.atomic import write_text_atomic
from seg_perception.codec import array_to_imgmsg, image_from_ros, msg_to_rgb8, stamp_ns
from seg_perception.data.bag_io import BagError, bag_topics, read_bag_messages
from seg_perception.labels import LabelTable
from seg_perception.metrics import PanopticQuality, SemanticMetrics, TrimapIoU
from seg_perception.metrics_instance import InstanceIoU, MaskAP, panoptic_instances
from seg_perception.panoptic import gt_panoptic
from seg_perception.pipeline import (  # build_pipeline: re-exported
    ALL_OUTPUTS,
    INSTANCE,
    OVERLAY,
    PANOPTIC,
    PANOPTIC_COLOR,
    SEMANTIC,
    SEMANTIC_COLOR,
    Pipeline,
    build_pipeline,
)
from seg_perception.topics import OUTPUT_TOPICS, PANOPTIC_TOPICS

__all__ = [
    "CAMERA_TYPES", "COMPRESSED", "IMAGE", "NUM_SAMPLES", "Accumulators", "FrameEvaluation",
    "Topics", "build_pipeline", "camera_namespace", "evaluate_bag", "evaluate_cityscapes",
    "json_safe", "percentiles", "resolve_topics",
]  # fmt: skip

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = (IMAGE, COMPRESSED)
# relative to the camera's namespace, as seg_node publishes them
NUM_SAMPLES = 3


@dataclass(frozen=True)
class Topics:
    camera: str
    camera_type: str
    gt_semantic: str
    gt_instance: str | None  # None: no panoptic scoring

    @property
    def namespace(self) -> str:
        return camera_namespace(self.camera)


def camera_namespace(topic: str) -> str:
    """``/camera/image`` and ``/camera/image/compressed`` -> ``/camera``; ``/image`` -> ``""``."""
    parts = topic.strip("/").split("/")
    if len(parts) > 1 and parts[-1] in ("compressed", "theora", "zstd"):
        parts = parts[:-1]
    return "".join("/" + p for p in parts[:-1])


def _listing(topics: dict[str, str]) -> str:
    return ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "(none)"


def resolve_topics(
    bag: str | Path,
    topics: dict[str, str],
    *,
    camera_topic: str | None = None,
    gt_semantic_topic: str | None = None,
    gt_instance_topic: str | None = None,
    need_instance: bool = True,
) -> Topics:
    """Pick the camera and ground-truth topics of a bag (``topics``: ``{topic: msgtype}``).

    Default camera: the single ``sensor_msgs/msg/Image`` topic not under ``gt/``. Default ground
    truth: ``<ns>/gt/semantic`` and ``<ns>/gt/instance`` of the camera's namespace. Raises
    :class:`BagError` naming the missing topic and listing the bag's topics.
    """
    if camera_topic is None:
        cands = [t for t, m in topics.items() if m == IMAGE and "/gt/" not in t + "/"]
        if len(cands) != 1:
            raise BagError(
                f"{bag}: cannot choose the camera topic: {len(cands)} sensor_msgs/msg/Image "
                f"topics outside gt/ ({', '.join(sorted(cands)) or 'none'}); pass --camera-topic. "
                f"Topics in the bag: {_listing(topics)}"
            )
        camera_topic = cands[0]
    if camera_topic not in topics:
        raise BagError(
            f"{bag}: camera topic {camera_topic} not in the bag; topics: {_listing(topics)}"
        )
    if topics[camera_topic] not in CAMERA_TYPES:
        raise BagError(
            f"{bag}: camera topic {camera_topic} has type {topics[camera_topic]}; expected "
            f"{' or '.join(CAMERA_TYPES)}"
        )
    ns = camera_namespace(camera_topic)
    sem = gt_semantic_topic or f"{ns}/gt/semantic"
    inst = gt_instance_topic or f"{ns}/gt/instance"
    needed = [sem, inst] if need_instance else [sem]
    for topic in needed:
        if topic not in topics:
            raise BagError(
                f"{bag}: ground-truth topic {topic} not in the bag; topics: {_listing(topics)}"
            )
        if topics[topic] != IMAGE:
            raise BagError(f"{bag}: ground-truth topic {topic} has type {topics[topic]}")
    return Topics(
        camera_topic, topics[camera_topic], sem, inst if (need_instance or inst in topics) else None
    )


def percentiles(values: list[float]) -> dict[str, float]:
    """``p50``, ``p95``, ``mean`` and ``n`` of a non-empty list of times (the metrics' latency
    entries)."""
    a = np.asarray(values, np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


@dataclass
class Accumulators:
    """Everything the metrics and the report are computed from."""

    labels: LabelTable
    panoptic: bool
    semantic: SemanticMetrics = field(init=False)
    fused: SemanticMetrics = field(init=False)
    trimap: TrimapIoU = field(init=False)
    pq: PanopticQuality = field(init=False)
    iiou: InstanceIoU = field(init=False)
    mask_ap: MaskAP = field(init=False)
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    frames: int = 0
    scored: int = 0
    with_instances: int = 0  # scored frames with instanceIds ground truth (iIoU)
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.semantic = SemanticMetrics(labels=self.labels)
        self.fused = SemanticMetrics(labels=self.labels)
        self.asp = SemanticMetrics(labels=self.labels)
        self.trimap = TrimapIoU(labels=self.labels)
        self.pq = PanopticQuality(self.labels)
        self.iiou = InstanceIoU(self.labels)
        self.mask_ap = MaskAP(self.labels)

    def update(
        self,
        semantic: np.ndarray,
        gt_sem: np.ndarray,
        fused: np.ndarray | None = None,
        panoptic: np.ndarray | None = None,
        gt_inst: np.ndarray | None = None,
        asp_semantic: np.ndarray | None = None,
        *,
        segments: list[dict[str, Any]] | None = None,
    ) -> None:
        """Score one frame (pipeline outputs against ground truth). ``asp_semantic``: the ASP
        model's own semantic map at the input resolution (the fusion's other input);
        ``segments``: the fusion's segment list, whose detection scores rank the thing segments
        for mask AP (no AP without it: the live evaluation sees no scores). With ``gt_inst``
        (Cityscapes instanceIds) also iIoU and, with a ``panoptic`` map, PQ and mask AP."""
        self.scored += 1
        self.semantic.update(semantic, gt_sem)
        self.trimap.update(semantic, gt_sem)
        if fused is not None:
            self.fused.update(fused, gt_sem)
        if asp_semantic is not None:
            self.asp.update(asp_semantic, gt_sem)
        if gt_inst is not None:
            self.with_instances += 1
            self.iiou.update(semantic, gt_sem, gt_inst)
        if panoptic is not None and gt_inst is not None:
            self.pq.update(panoptic, gt_panoptic(gt_sem, gt_inst, self.labels))
            if segments is not None:
                found = panoptic_instances(panoptic, segments, self.labels)
                self.mask_ap.update(gt_inst, found, lambda p: panoptic == p.value)

    def compute(self, *, interrupted: bool = False, total_frames: int | None = None) -> dict:
        sem = self.semantic.compute()
        out: dict[str, Any] = {
            "frames": {
                "processed": self.frames,
                "scored": self.scored,
                "without_gt": self.frames - self.scored,
                "in_bag": total_frames,
                "interrupted": interrupted,
            },
            "semantic": sem,
            "confusion": self.semantic.confusion.tolist(),
            "boundary_iou": self.trimap.compute(),
            "latency_ms": {k: percentiles(v) for k, v in self.timings.items() if v},
        }
        if self.with_instances:  # the official definitions (metrics_instance)
            out["instance_iou"] = self.iiou.compute()
        if self.mask_ap.frames:
            out["mask_ap"] = self.mask_ap.compute()
        if self.panoptic:
            out["panoptic"] = self.pq.compute()
            fused = self.fused.compute()
            out["fusion"] = {
                "miou_realtime": sem["miou"],
                # the ASP model's semantic head alone (null where no frame gave it)
                "miou_asp": self.asp.compute()["miou"] if self.asp.confusion.any() else None,
                "miou_fused": fused["miou"],
                "gain": fused["miou"] - sem["miou"],
                "fused_iou": fused["iou"],
            }
        return out


def json_safe(x: Any) -> Any:
    """A metrics tree as strict JSON can hold it: NaN / inf -> ``None``, NumPy scalars -> Python
    numbers, tuples -> lists, dict keys -> strings (``json.dumps(..., allow_nan=False)`` then
    succeeds)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


class _Recorder:
    """The output bag: the camera topic as recorded plus the segmentation topics."""

    def __init__(self, path: Path, topics: Topics, panoptic: bool) -> None:
        from seg_perception.data.bag_io import OutputBag

        self.bag = OutputBag(path, "mcap", overwrite=True)
        self.camera = topics.camera
        self.bag.add_connection(topics.camera, topics.camera_type)
        table = {**OUTPUT_TOPICS, **(PANOPTIC_TOPICS if panoptic else {})}
        self.topics = {f"{topics.namespace}/{t}": v for t, v in table.items()}
        for topic in self.topics:
            self.bag.add_connection(topic, IMAGE)

    def write(
        self, stamp: int, raw: bytes, header: Any, arrays: dict[str, np.ndarray | None]
    ) -> None:
        from rclpy.serialization import serialize_message

        self.bag.write(self.camera, stamp, raw)
        for topic, (name, enc) in self.topics.items():
            arr = arrays[name]
            if arr is None:
                raise RuntimeError(f"pipeline produced no {name} output")
            if enc == "mono16":
                arr = arr.astype(np.uint16)
            elif enc == "32SC1":
                arr = arr.astype(np.int32)
            self.bag.write(topic, stamp, serialize_message(array_to_imgmsg(arr, enc, header)))


class FrameEvaluation:
    """The per-frame work of an offline evaluation, whatever the frames come from: run the
    pipeline (semantic, and panoptic when it has a panoptic engine), record timings, score against
    the ground truth, keep report samples, export in the Cityscapes layout; then
    :meth:`finish` writes ``metrics.json``, the report and the export's JSON files."""

    def __init__(
        self,
        pipeline: Pipeline,
        out_dir: str | Path,
        *,
        cityscapes_dir: str | Path | None = None,
        split: str = "val",
    ) -> None:
        from seg_perception.eval.cityscapes_export import CityscapesExport

        self.pipeline = pipeline
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.panoptic = pipeline.panoptic_engine is not None
        self.acc = Accumulators(pipeline.labels, self.panoptic)
        self.export = (
            None
            if cityscapes_dir is None
            else CityscapesExport(cityscapes_dir, pipeline.labels, split=split)
        )

    def frame(
        self,
        rgb: np.ndarray,
        name: str,
        gt_sem: np.ndarray | None,
        gt_inst: np.ndarray | None = None,
        *,
        gt_label_ids: np.ndarray | None = None,
    ) -> dict[str, np.ndarray | None]:
        """Process one ``(H, W, 3)`` RGB frame named ``name`` (``city_seq_frame``); ground truth
        (trainIds, instanceIds) None: not scored. Returns the output arrays (valid until the next
        frame)."""
        pipeline, acc = self.pipeline, self.acc
        res = pipeline.run(rgb, ALL_OUTPUTS)
        assert res.semantic is not None
        timings = dict(res.timings_ms)
        arrays: dict[str, np.ndarray | None] = {
            SEMANTIC: res.semantic,
            SEMANTIC_COLOR: res.semantic_color,
            OVERLAY: res.overlay,
        }
        fused = pan = segments = asp = None
        if self.panoptic:
            po = pipeline.run_panoptic(rgb, res.semantic)
            timings.update(po.timings_ms)
            fused, pan, segments = po.result.semantic, po.result.panoptic, po.result.segments
            if po.asp_semantic is not None:  # to the input resolution, as the fusion samples it
                asp = cv2.resize(
                    po.asp_semantic, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST
                )
            arrays.update({INSTANCE: po.result.instance, PANOPTIC: pan})
            arrays[PANOPTIC_COLOR] = po.panoptic_color
        for k, v in timings.items():
            acc.timings[k].append(v)
        acc.timings["total"].append(sum(timings.values()))
        if self.export is not None:
            self.export.add(
                name,
                res.semantic,
                gt_semantic=gt_sem,
                gt_instance=gt_inst,
                gt_label_ids=gt_label_ids,
                panoptic=pan,
                segments=segments,
            )
        acc.frames += 1
        if gt_sem is None:
            return arrays
        acc.update(res.semantic, gt_sem, fused, pan, gt_inst, asp, segments=segments)
        if len(acc.samples) < NUM_SAMPLES:
            acc.samples.append(
                {"rgb": rgb.copy(), "gt": gt_sem.copy(), "pred": res.semantic.copy()}
            )
        return arrays

    def finish(
        self,
        source: dict[str, Any],
        *,
        interrupted: bool = False,
        total_frames: int | None = None,
        write_report: bool = True,
    ) -> dict[str, Any]:
        """Write ``metrics.json`` (with ``source``: where the frames came from), the report and
        the export's JSON files; return the metrics."""
        metrics = json_safe(self.acc.compute(interrupted=interrupted, total_frames=total_frames))
        metrics["tta"] = self.pipeline.tta
        metrics.update(source)
        if self.export is not None:
            self.export.close()
        write_text_atomic(self.out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
        if write_report:
            from seg_perception.eval.report import write_report as _write

            _write(self.out, metrics, self.acc)
        return metrics


def evaluate_bag(
    bag: str | Path,
    out_dir: str | Path,
    pipeline: Pipeline,
    *,
    camera_topic: str | None = None,
    gt_semantic_topic: str | None = None,
    gt_instance_topic: str | None = None,
    progress: bool = True,
    write_report: bool = True,
    cityscapes_dir: str | Path | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """Evaluate ``pipeline`` on every camera frame of ``bag``; writes ``metrics.json``,
    (``record``) ``outputs.mcap`` (the camera and every output topic: 1-2 GB per 200 frames at
    512x1024, so a sweep of settings may skip it) and (``write_report``) ``report.md`` /
    ``report.html`` with PNG plots to ``out_dir``; with ``cityscapes_dir`` also the frames in
    the Cityscapes layout (:mod:`.cityscapes_export`, split ``val``, frame ``i`` named
    ``bag_000000_{i:06d}``).
    Returns the metrics. A KeyboardInterrupt stops reading; everything is still written for the
    frames done (``frames.interrupted`` is true) and the interrupt re-raised.
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from seg_perception.eval.cityscapes_export import frame_name

    panoptic = pipeline.panoptic_engine is not None
    all_topics = bag_topics(bag)
    topics = resolve_topics(
        bag,
        all_topics,
        camera_topic=camera_topic,
        gt_semantic_topic=gt_semantic_topic,
        gt_instance_topic=gt_instance_topic,
        need_instance=panoptic,
    )
    total = _count(bag, topics.camera)
    run = FrameEvaluation(pipeline, out_dir, cityscapes_dir=cityscapes_dir)
    rec = _Recorder(run.out / "outputs.mcap", topics, panoptic) if record else None
    gt: dict[str, dict[int, np.ndarray]] = {topics.gt_semantic: {}}
    if topics.gt_instance:
        gt[topics.gt_instance] = {}
    pending: dict[int, tuple[int, bytes, Any]] = {}
    cam_type = CompressedImage if topics.camera_type == COMPRESSED else Image
    wanted = [topics.camera, *gt]

    def process(stamp: int, raw: bytes, msg: Any) -> None:
        key = stamp_ns(msg.header)
        rgb = msg_to_rgb8(msg)
        g_sem = gt[topics.gt_semantic].pop(key, None)
        g_inst = gt[topics.gt_instance].pop(key, None) if topics.gt_instance else None
        if g_sem is not None and g_sem.shape != rgb.shape[:2]:
            raise BagError(
                f"{bag}: ground truth {topics.gt_semantic} at stamp {key} is "
                f"{g_sem.shape[1]}x{g_sem.shape[0]} but the camera frame is "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        arrays = run.frame(rgb, frame_name(run.acc.frames), g_sem, g_inst)
        if rec is not None:
            rec.write(stamp, raw, msg.header, arrays)

    def ready(key: int) -> bool:
        return all(key in d for d in gt.values())

    interrupted = False
    bar = tqdm(total=total, desc="eval", unit="frame", disable=not progress)
    try:
        for topic, _, stamp, raw in read_bag_messages(bag, wanted):
            try:
                if topic == topics.camera:
                    msg = deserialize_message(raw, cam_type)
                    if ready(stamp_ns(msg.header)):
                        process(stamp, raw, msg)
                        bar.update()
                    else:
                        pending[stamp_ns(msg.header)] = (stamp, raw, msg)
                    continue
                gmsg = deserialize_message(raw, Image)
                key = stamp_ns(gmsg.header)
                gt[topic][key] = image_from_ros(gmsg)
            except BagError:
                raise
            except Exception as exc:  # undecodable message: name it
                raise BagError(f"{bag}: cannot decode a message of {topic}: {exc}") from exc
            if key in pending and ready(key):
                process(*pending.pop(key))
                bar.update()
        for item in sorted(pending.values(), key=lambda x: x[0]):  # frames without ground truth
            process(*item)
            bar.update()
        pending.clear()
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        bar.close()
        if rec is not None:
            rec.bag.abort()
        raise
    bar.close()
    if rec is not None:
        rec.bag.close()
    source = {
        "topics": {
            "camera": topics.camera,
            "gt_semantic": topics.gt_semantic,
            "gt_instance": topics.gt_instance,
            "outputs": sorted(rec.topics) if rec is not None else [],
        }
    }
    metrics = run.finish(
        source, interrupted=interrupted, total_frames=total, write_report=write_report
    )
    if interrupted:
        raise KeyboardInterrupt
    return metrics


def evaluate_cityscapes(
    root: str | Path,
    split: str,
    out_dir: str | Path,
    pipeline: Pipeline,
    *,
    annotation: str = "gtFine",
    max_frames: int = 0,
    progress: bool = True,
    write_report: bool = True,
    cityscapes_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``pipeline`` on the frames of a Cityscapes-format folder (``leftImg8bit/<split>/
    <city>/*_leftImg8bit.png`` with ``<annotation>/<split>/<city>/*_labelIds.png`` and, when the
    pipeline is panoptic, ``*_instanceIds.png``; the official names, read by
    :mod:`seg_perception.data.cityscapes`), in name order; ``max_frames`` > 0: the first ones.
    Writes ``metrics.json`` and the report as :func:`evaluate_bag` does (no outputs bag: the
    frames have no headers to replay); with ``cityscapes_dir`` the export keeps the frames' names
    and split and writes their original labelIds. A KeyboardInterrupt keeps the frames done.
    """
    from seg_perception.data.cityscapes import (
        find_cityscapes_frames,
        read_cityscapes_frame,
        read_label_ids,
    )

    labels = pipeline.labels
    frames = find_cityscapes_frames(
        root,
        split,
        annotation=annotation,
        with_instances=pipeline.panoptic_engine is not None,
        strict=True,
    )
    frames = frames[:max_frames] if max_frames > 0 else frames
    # frames with an instanceIds file are scored on instances (iIoU) even when not panoptic
    run = FrameEvaluation(pipeline, out_dir, cityscapes_dir=cityscapes_dir, split=split)
    interrupted = False
    try:
        for f in tqdm(frames, desc="eval", unit="frame", disable=not progress):
            if f.instance is None:
                inst_file = f.label_ids.with_name(f"{f.name}_{annotation}_instanceIds.png")
                if inst_file.is_file():
                    f = dataclasses.replace(f, instance=inst_file)
            sample = read_cityscapes_frame(f, labels)
            raw_ids = read_label_ids(f.label_ids) if cityscapes_dir is not None else None
            run.frame(
                sample["image"],  # type: ignore[arg-type]
                f.name,
                sample["semantic"],  # type: ignore[arg-type]
                sample["instance"],  # type: ignore[arg-type]
                gt_label_ids=raw_ids,
            )
    except KeyboardInterrupt:
        interrupted = True
    source = {"source": {"cityscapes_root": str(root), "split": split, "annotation": annotation}}
    metrics = run.finish(
        source, interrupted=interrupted, total_frames=len(frames), write_report=write_report
    )
    if interrupted:
        raise KeyboardInterrupt
    return metrics


def _count(bag: str | Path, topic: str) -> int | None:
    """Messages on ``topic`` from the bag's metadata (None when unknown)."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(Path(bag)) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic == topic)
    except Exception:
        return None
