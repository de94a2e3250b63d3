"""Region growing and new instances of the fusion heuristic (Costea, Petrovai & Nedevschi,
*Fusion Scheme for Semantic and Instance-level Segmentation*, section IV), steps 4 and 5.

Both work on the sparse list of the foreground pixels that matching left unlabelled, as flat
indices into maps with a one-pixel border (``(H + 2) x (W + 2)``; the border holds no instance
and no unlabelled pixel), so that a neighbour is ``index + offset`` without bound checks. The
results depend on the arguments only; frame-sized scratch arrays are kept per thread between
calls (:func:`work_buffer`) and never returned.

Step 4, region growing. Paper: "these pixels are matched to the closest labeled pixel with
direct semantic path. This labeling extension can be achieved through a breadth-first-search
based region growing." :func:`grow` is that search, from all instances at once, on a graph of
the unlabelled pixels run by scipy's compiled breadth-first traversal. A "direct semantic
path" is read as a path through unlabelled pixels of the instance's category (the abstract:
"instance propagation guidance by object category class from semantic segmentation"), so the
search never crosses background or another category, and "closest" is the number of steps
along such a path (4- or 8-neighbourhood), not a straight-line distance. The paper leaves ties
open: at equal steps the stronger detection wins, the order matching used. Pixels that no
search reaches are the "isolated" ones.

Step 5, new instances. Paper: "In the case of pixel segments that were labeled as foreground but
did not receive labels after region growing (due to being isolated), we assign the semantic
subcategory label from semantic segmentation and generate a new instance ID ... A threshold has
to be employed for the segment size in order to avoid the instance labeling of small foreground
noise segments." A segment with one subcategory label is a connected set of pixels of one
class, so :func:`isolated_segments` forms connected components per class (adjacent person and
rider pixels become a person and a rider); each one of at least the threshold size becomes an
instance of its class, smaller ones stay without instance.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

_TILE = 6  # log2 of the tile size that step 5 clusters isolated pixels by


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.arrays: dict[tuple, np.ndarray] = {}


_BUFFERS = _Buffers()
_MAX_BUFFERS = 16  # per thread: a few per frame size (cameras of several sizes share a thread)


def work_buffer(
    name: str, shape: tuple[int, ...], dtype: type | np.dtype, zeroed: bool = False
) -> np.ndarray:
    """A frame-sized work array of this thread, kept between calls.

    Fresh frame-sized arrays cost page faults on every frame (with transparent huge pages, a
    compaction), often more than the pass that fills them; a fusion call keeps its full-frame
    scratch here and returns only fresh arrays, so results never alias a buffer. Contents are
    undefined, except with ``zeroed``: then the array is all zeros, and its user must leave it
    so (reset what it wrote)."""
    key = (name, tuple(shape), np.dtype(dtype).str, zeroed)
    arrays = _BUFFERS.arrays
    a = arrays.get(key)
    if a is None:
        if len(arrays) >= _MAX_BUFFERS:
            del arrays[next(iter(arrays))]  # the oldest
        a = arrays[key] = (np.zeros if zeroed else np.empty)(shape, dtype)
    return a


def _steps(connectivity: int) -> list[tuple[int, int]]:
    """(dy, dx) of the 4- or 8-neighbourhood."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    steps = [(0, -1), (0, 1), (-1, 0), (1, 0)]
    return [*steps, (-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 8 else steps


def grow(
    idx: np.ndarray,
    group: np.ndarray,
    inst: np.ndarray,
    inst_cat: np.ndarray,
    shape: tuple[int, int],
    connectivity: int,
) -> np.ndarray:
    """Step 4: breadth-first region growing of the instances into the unlabelled pixels.

    Args:
        idx: ``(N,)`` flat indices of the unlabelled foreground pixels of a map of ``shape``,
            ascending.
        group: ``(N,)`` uint8 thing category (1..) of each of them.
        inst: flat uint16 instance map (0 = none).
        inst_cat: ``(D + 1,)`` uint8 category of each instance id (entry 0 = 0).
        connectivity: 4 or 8, the neighbourhood the search moves in.

    Returns:
        ``(N,)`` uint16, the instance each pixel grows into (0: none reaches it, isolated).
    """
    h, w = shape
    steps = _steps(connectivity)
    offsets = np.array([dy * w + dx for dy, dx in steps], np.int64)
    owner = np.zeros(len(idx), np.uint16)
    # The instances next to each pixel, first only whether there is any (most pixels have
    # none; a read past an image edge may add a pixel here, never drop one), then per
    # direction with the edge and category checks on the few that have one.
    any_near = inst.take(idx + offsets[0], mode="clip")
    for off in offsets[1:]:
        np.maximum(any_near, inst.take(idx + off, mode="clip"), out=any_near)
    b = np.flatnonzero(any_near)
    bi, bg = idx.take(b), group.take(b)
    near = inst.take(bi[None, :] + offsets[:, None], mode="clip")  # (directions, len(b))
    y, x = np.divmod(bi, w)
    for d, (dy, dx) in enumerate(steps):
        near[d, ~(((y + dy) < h) & ((y + dy) >= 0) & ((x + dx) < w) & ((x + dx) >= 0))] = 0
    near[inst_cat.take(near) != bg] = 0  # only instances of the pixel's category
    # The search runs in a map with a one-pixel border (no bound checks there).
    offsets = np.array([dy * (w + 2) + dx for dy, dx in steps], np.int64)
    for k in np.unique(bg[near.max(axis=0) > 0]):  # it never changes category: one per category
        sel = np.flatnonzero(group == k)
        of_k = np.flatnonzero(bg == k)
        pos = np.searchsorted(sel, b.take(of_k))  # position in sel of the pixels b[of_k]
        near_k = near[:, of_k]
        real = near_k > 0
        pix = idx.take(sel)
        pix += 2 * (pix // w) + (w + 3)
        owner[sel] = _bfs(
            pix, near_k[real], np.broadcast_to(pos, near_k.shape)[real], (h + 2) * (w + 2), offsets
        )
    return owner


def _bfs(
    pix: np.ndarray, pair_inst: np.ndarray, pair_pos: np.ndarray, size: int, offsets: np.ndarray
) -> np.ndarray:
    """Multi-source BFS from every instance at once through the pixels ``pix`` (flat indices
    into maps of ``size`` pixels, at least ``max(offsets)`` from either end; one category),
    where pixel ``pix[pair_pos[j]]`` lies next to instance ``pair_inst[j]``; returns the
    instance whose wave reaches each pixel first (0: none does).

    Graph: a sink without links (node 0), one node per pixel (1..M), one per instance
    (M+1..M+T) and a source (M+T+1) linked to every instance in ascending id; an instance links
    to the pixels next to it, a pixel to its neighbours that are pixels (any other neighbour
    stands for the sink). A FIFO breadth-first search from the source labels each pixel with
    the instance whose wave arrives first: the one with the nearest labelled pixel in steps
    along paths of unlabelled pixels of the category; at equal steps the lower id, the
    stronger detection.
    """
    m, d = len(pix), len(offsets)
    counts = np.bincount(pair_inst)
    insts = np.flatnonzero(counts)
    counts = counts[insts]
    t, p = len(insts), len(pair_inst)
    source = m + t + 1
    indices = np.empty(m * d + p + t, np.int32)
    links = indices[: m * d].reshape(m, d)
    # Node id on the pixels, 0 (the sink) elsewhere: one gather per direction.
    ids = work_buffer("bfs_ids", (size,), np.int32, zeroed=True)
    ids[pix] = np.arange(1, m + 1, dtype=np.int32)
    lo = int(np.abs(offsets).max())
    q = pix - lo
    try:
        for j, off in enumerate(offsets):
            links[:, j] = ids[lo + off :].take(q)
    finally:
        ids[pix] = 0
    indices[m * d : m * d + p] = pair_pos[np.argsort(pair_inst, kind="stable")] + 1
    indices[m * d + p :] = np.arange(m + 1, source, dtype=np.int32)
    indptr = np.empty(source + 2, np.int32)
    indptr[0] = 0
    indptr[1 : m + 2] = np.arange(0, m * d + 1, d, dtype=np.int32)
    indptr[m + 2 : source + 1] = m * d + np.cumsum(counts)
    indptr[source + 1] = m * d + p + t
    graph = csr_matrix((_ones(len(indices)), indices, indptr), shape=(source + 1, source + 1))
    _, pred = breadth_first_order(graph, source, directed=True, return_predecessors=True)
    # Each pixel's instance (the root of its BFS tree) by pointer jumping: log2(depth) rounds.
    hop = pred.astype(np.int32)
    hop[m + 1 :] = np.arange(m + 1, source + 1, dtype=np.int32)  # instances, source: roots
    hop[hop < 0] = source  # unreached (and the sink): the source, which stands for none
    while True:
        nxt = hop.take(hop)
        if np.array_equal(nxt, hop):
            break
        hop = nxt
    instance_of = np.zeros(source + 1, np.uint16)
    instance_of[m + 1 : source] = insts
    return instance_of.take(hop[1 : m + 1])


_ONES = np.ones(0)


def _ones(n: int) -> np.ndarray:
    """A read-only array of ``n`` float ones (the graphs' edge weights, which BFS ignores)."""
    global _ONES
    if len(_ONES) < n:
        ones = np.ones(max(n, 2 * len(_ONES)))
        ones.flags.writeable = False
        _ONES = ones
    return _ONES[:n]


def isolated_segments(
    idx: np.ndarray,
    sem: np.ndarray,
    width: int,
    min_area: int,
    connectivity: int,
) -> list[np.ndarray]:
    """Step 5: the new instances among the isolated foreground pixels.

    Args:
        idx: ``(N,)`` flat indices of the isolated pixels in a map of row length ``width``
            (whole components of same-category pixels: region growing reaches all of one or
            none of it, so a connected set of one class never leaves one).
        sem: flat uint8 semantic map (trainIds) of that map.
        min_area: the segment-size threshold.
        connectivity: 4 or 8, the connectivity of a segment.

    Returns:
        one array per new instance: the positions in ``idx`` of a connected set of pixels of one
        class, at least ``min_area`` of them; ordered by their first position.
    """
    cls = sem.take(idx)
    counts = np.bincount(cls, minlength=256)
    out: list[np.ndarray] = []
    for c in np.flatnonzero(counts >= min_area):  # other classes hold no such segment
        pos = np.flatnonzero(cls == c)
        y, x = np.divmod(idx[pos], width)
        # Clusters of touched 64x64 tiles first (8-connected, so no segment spans two): most
        # are small noise far apart, which needs no labelling at all.
        ty, tx = y >> _TILE, x >> _TILE
        tiles = np.zeros((int(ty.max()) + 1, int(tx.max()) + 1), np.uint8)
        tiles[ty, tx] = 1
        _, cluster = cv2.connectedComponents(tiles, connectivity=8, ltype=cv2.CV_32S)
        of = cluster[ty, tx]
        for q in np.flatnonzero(np.bincount(of) >= min_area):
            sel = np.flatnonzero(of == q)
            yq, xq = y[sel], x[sel]
            y0, x0 = int(yq.min()), int(xq.min())
            yq, xq = yq - y0, xq - x0
            crop = np.zeros((int(yq.max()) + 1, int(xq.max()) + 1), np.uint8)
            crop[yq, xq] = 1
            n, parts = cv2.connectedComponents(crop, connectivity=connectivity, ltype=cv2.CV_32S)
            part = parts[yq, xq]
            sizes = np.bincount(part, minlength=n)
            out.extend(pos[sel[part == p]] for p in np.flatnonzero(sizes >= min_area))
    out.sort(key=lambda a: int(a[0]))
    return out
