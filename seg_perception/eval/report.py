"""``report.md`` / ``report.html`` of an offline evaluation, with plots drawn as PNGs by
OpenCV / numpy (no matplotlib): per-class IoU bars, confusion heat map, PQ per class, latency
histogram and sample frames (input | ground truth | prediction | error map).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_perception.atomic import atomic_path, write_text_atomic
from seg_perception.labels import IGNORE_ID, LabelTable

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"PNG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(img, text, org, FONT, scale, BLACK, 1, cv2.LINE_AA)


def bar_chart(
    names: list[str], values: list[float], title: str, colors: list[tuple[int, ...]]
) -> np.ndarray:
    """Horizontal bars in [0, 1], one row per name (``nan`` drawn as "n/a")."""
    row, left, width = 18, 130, 300
    img = np.full((30 + row * len(names) + 10, left + width + 60, 3), 255, np.uint8)
    _text(img, title, (5, 18), 0.5)
    for i, (name, v, c) in enumerate(zip(names, values, colors, strict=True)):
        y = 30 + i * row
        _text(img, name[:18], (5, y + 13))
        cv2.rectangle(img, (left, y + 2), (left + width, y + row - 2), GREY, 1)
        if v is None or not math.isfinite(v):
            _text(img, "n/a", (left + width + 5, y + 13))
            continue
        cv2.rectangle(img, (left, y + 2), (left + round(width * v), y + row - 2), c, -1)
        _text(img, f"{v:.2f}", (left + width + 5, y + 13))
    return img


def confusion_image(confusion: np.ndarray, names: list[str]) -> np.ndarray:
    """Row-normalised confusion (rows ground truth, columns prediction) as a heat map."""
    conf = np.asarray(confusion, np.float64)[:, : len(names)]
    rows = conf.sum(1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    cell, left, top = 14, 110, 130  # column labels (100 px) below the title
    n = len(names)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    heat = cv2.resize(heat, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST)
    img = np.full((top + n * cell + 10, left + n * cell + 10, 3), 255, np.uint8)
    img[top : top + n * cell, left : left + n * cell] = heat
    _text(img, "confusion (rows: GT, cols: prediction)", (5, 15), 0.45)
    for i, name in enumerate(names):
        _text(img, name[:14], (5, top + i * cell + 11), 0.33)
    col = np.full((left - 10, n * cell, 3), 255, np.uint8)  # rotated column labels
    col = np.ascontiguousarray(np.rot90(col, -1))
    for i, name in enumerate(names):
        _text(col, name[:14], (2, i * cell + 11), 0.33)
    col = np.ascontiguousarray(np.rot90(col, 1))
    img[top - col.shape[0] - 2 : top - 2, left : left + n * cell] = col
    return img


def histogram_image(values: list[float], title: str, bins: int = 20) -> np.ndarray:
    """A histogram of ``values`` (ms) with its range on the x axis."""
    w, h, pad = 400, 160, 30
    img = np.full((h + 2 * pad, w + 2 * pad, 3), 255, np.uint8)
    _text(img, title, (5, 18), 0.5)
    a = np.asarray(values, np.float64)
    if a.size == 0:
        _text(img, "no data", (pad, pad + h // 2))
        return img
    lo, hi = float(a.min()), float(a.max())
    counts, _ = np.histogram(a, bins=bins, range=(lo, hi if hi > lo else lo + 1e-3))
    bw = w // bins
    for i, c in enumerate(counts):
        bh = round(h * c / counts.max())
        x = pad + i * bw
        cv2.rectangle(img, (x, pad + h - bh), (x + bw - 2, pad + h), (70, 110, 200), -1)
    cv2.line(img, (pad, pad + h), (pad + w, pad + h), BLACK, 1)
    _text(img, f"{lo:.1f} ms", (pad, pad + h + 15))
    _text(img, f"{hi:.1f} ms", (pad + w - 60, pad + h + 15))
    return img


def sample_image(sample: dict[str, np.ndarray], labels: LabelTable) -> np.ndarray:
    """input | ground truth | prediction | error map (red: wrong, black: void GT)."""
    gt, pred = sample["gt"], sample["pred"]
    err = np.full((*gt.shape, 3), 255, np.uint8)
    err[pred != gt] = (220, 30, 30)
    err[gt == IGNORE_ID] = (0, 0, 0)
    tiles = [sample["rgb"], labels.colorize(gt), labels.colorize(pred), err]
    sep = np.full((gt.shape[0], 4, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, sep]
    return np.concatenate(parts[:-1], axis=1)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def write_report(out: Path, metrics: dict[str, Any], acc: Any) -> list[Path]:
    """Draw the plots into ``out`` and write ``report.md`` and ``report.html``; returns the
    PNG paths. ``acc`` is the :class:`~seg_perception.eval.scoring.Accumulators`."""
    labels: LabelTable = acc.labels
    names = list(labels.train_names)
    colors = [
        tuple(int(x) for x in labels.colorize(np.array([[i]], np.uint8))[0, 0])
        for i in range(len(names))
    ]
    sem = metrics["semantic"]
    plots: dict[str, np.ndarray] = {
        "iou_per_class.png": bar_chart(
            names, [sem["iou"][n] for n in names], "IoU per class", colors
        ),
        "confusion.png": confusion_image(np.asarray(metrics["confusion"]), names),
        "latency_hist.png": histogram_image(
            acc.timings.get("total", []), "latency per frame (total)"
        ),
    }
    if "panoptic" in metrics:
        pc = metrics["panoptic"]["per_class"]
        plots["pq_per_class.png"] = bar_chart(
            names, [pc[n]["pq"] for n in names], "PQ per class", colors
        )
    for i, s in enumerate(acc.samples):
        plots[f"sample_{i}.png"] = sample_image(s, labels)
    paths = []
    for name, img in plots.items():
        _write_png(out / name, img)
        paths.append(out / name)

    fr = metrics["frames"]
    title = "Live evaluation" if "realtime" in metrics else "Offline evaluation"
    if "topics" in metrics:
        where = f"Camera `{metrics['topics']['camera']}`"
    else:
        src = metrics.get("source", {})
        where = f"Cityscapes folder `{src.get('cityscapes_root')}`, split `{src.get('split')}`"
    if metrics.get("tta", "none") != "none":
        where += f", test-time procedure **{metrics['tta']}**"
    lines = [
        f"# {title}",
        "",
        f"{where}; frames processed {fr['processed']}, "
        f"scored {fr['scored']}, without ground truth {fr['without_gt']}"
        + (" (**interrupted**: partial results)" if fr["interrupted"] else ""),
        "",
        "| metric | value |",
        "|---|---|",
        f"| mIoU | {_fmt(sem['miou'])} |",
        f"| mean category IoU | {_fmt(sem.get('mean_category_iou'))} |",
        f"| pixel accuracy | {_fmt(sem['pixel_accuracy'])} |",
    ]
    if "instance_iou" in metrics:  # Cityscapes' instance-weighted IoU
        ii = metrics["instance_iou"]
        lines.append(f"| iIoU (classes) | {_fmt(ii['iiou'])} |")
        lines.append(f"| iIoU (categories) | {_fmt(ii['mean_category_iiou'])} |")
    if "mask_ap" in metrics:
        ap = metrics["mask_ap"]
        lines.append(f"| mask AP / AP50 (thing segments) | {_fmt(ap['ap'])} / {_fmt(ap['ap50'])} |")
    if "panoptic" in metrics:
        for group in ("all", "things", "stuff"):
            g = metrics["panoptic"][group]
            lines.append(
                f"| PQ / SQ / RQ ({group}) | {_fmt(g['pq'])} / {_fmt(g['sq'])} / {_fmt(g['rq'])} |"
            )
        fu = metrics["fusion"]
        lines.append(f"| fusion gain (mIoU fused - real-time) | {_fmt(fu['gain'])} |")
        if fu.get("miou_asp") is not None:
            lines.append(f"| mIoU of the ASP model's own semantic head | {_fmt(fu['miou_asp'])} |")
    b = metrics["boundary_iou"]
    lines += ["", "## Boundary IoU (trimap)", "", "| band (px) | mIoU |", "|---|---|"]
    lines += [f"| {w} | {_fmt(m)} |" for w, m in zip(b["bands"], b["miou"], strict=True)]
    lines += ["", "## Latency (ms)", "", "| stage | p50 | p95 |", "|---|---|---|"]
    lines += [
        f"| {k} | {v['p50']:.2f} | {v['p95']:.2f} |" for k, v in metrics["latency_ms"].items()
    ]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in paths]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(out / "report.html", _html(lines, paths, title))
    return paths


def _html(md_lines: list[str], paths: list[Path], title: str = "Offline evaluation") -> str:
    """A small HTML rendering of the Markdown lines (headings, tables, paragraphs, images)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set("".join(r)) <= set("-")]
            head, *rest = rows
            body.append(
                "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
            )
            body.extend(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest
            )
            body.append("</table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            continue
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    body += [
        f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem}</figcaption></figure>'
        for p in paths
    ]
    style = (
        "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
