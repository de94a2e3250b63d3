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
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from seg_perception.atomic import write_text_atomic
from seg_perception.codec import array_to_imgmsg, image_from_ros, msg_to_rgb8, stamp_ns
from seg_perception.data.bag_io import BagError, bag_topics, read_bag_messages
from seg_perception.eval.bag_topics import COMPRESSED, IMAGE, Topics, resolve_topics
from seg_perception.eval.scoring import NUM_SAMPLES, Accumulators, json_safe
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

__all__ = ["FrameEvaluation", "build_pipeline", "evaluate_bag", "evaluate_cityscapes"]


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
