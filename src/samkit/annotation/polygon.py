"""A mask as one polygon (YOLO-seg keeps one polygon per instance).

The mask's contours (OpenCV, outer borders and the borders of holes, in pixel coordinates) are
joined into one closed path by zero-width bridges: a spanning tree links each contour to its
nearest neighbour (closest vertices, Prim's algorithm), and the path walks each contour,
stepping across every bridge to the contour behind it and back. Filled with the even-odd rule
(as ``cv2.fillPoly`` does), the polygon gives back the mask's regions and holes; only the
pixels the bridges pass over are added, and the tree keeps the bridges short. Masks of more
than 1024 separate contours (noise rather than objects) are chained in reading order instead,
which is fast and gives longer bridges.
"""

from __future__ import annotations

import numpy as np

from ..everything.optional import require_cv2

__all__ = ["mask_to_single_polygon"]

_MAX_TREE_CONTOURS = 1024  # above this, contours are chained in serpentine order instead
_BAND = 16


def _spanning_tree(contours: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Bridges linking all contours: (parent, vertex in parent, child, vertex in child), root 0 first.

    Prim's algorithm on the closest-vertex distance between contours; each step compares the
    newly linked contour's vertices with all vertices of the contours not yet linked.
    """
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(contours)])  # (V,) contour of each vertex
    points = np.concatenate(contours).astype(np.float32)  # (V, 2)
    xs, ys = points[:, 0], points[:, 1]
    starts = np.concatenate(([0], np.cumsum([len(c) for c in contours])[:-1]))
    n = len(contours)
    best = np.full(n, np.inf)  # distance of each unlinked contour to the tree
    link = np.zeros((n, 2), dtype=np.int64)  # (tree vertex, own vertex), global indices
    linked = np.zeros(n, dtype=bool)
    bridges = []
    current = 0
    for _ in range(n - 1):
        linked[current] = True
        ours = np.arange(starts[current], starts[current] + len(contours[current]))
        open_vertices = np.flatnonzero(~linked[owner])  # (U,)
        dx = xs[ours, None] - xs[None, open_vertices]  # (|c|, U)
        dy = ys[ours, None] - ys[None, open_vertices]
        gaps = dx * dx + dy * dy  # squared distances
        nearest = gaps.argmin(axis=0)  # (U,) our closest vertex to each open vertex
        distance = gaps[nearest, np.arange(len(open_vertices))]  # (U,)
        groups = owner[open_vertices]  # (U,) sorted: vertices are stored contour by contour
        order = np.lexsort((distance, groups))  # by contour, then by distance
        first = order[np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])]  # closest open vertex per contour
        contour_ids = groups[first]
        better = distance[first] < best[contour_ids]
        best[contour_ids[better]] = distance[first][better]
        link[contour_ids[better]] = np.stack((ours[nearest[first[better]]], open_vertices[first[better]]), axis=1)
        best_open = np.where(linked, np.inf, best)
        current = int(np.argmin(best_open))
        tree_vertex, own_vertex = link[current]
        parent = int(owner[tree_vertex])
        bridges.append((parent, int(tree_vertex - starts[parent]), current, int(own_vertex - starts[current])))
    return bridges


def _serpentine_chain(contours: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Bridges linking the contours one after the other in a serpentine order (bands of
    :data:`_BAND` rows, alternately left to right and right to left), each between the closest
    vertices of two neighbours. For masks of very many regions, where the spanning tree's
    all-pairs search would take seconds."""
    first = np.array([c[0] for c in contours])  # (n, 2) each contour's first vertex (its top-left)
    band = first[:, 1] // _BAND
    order = np.lexsort((np.where(band % 2 == 0, first[:, 0], -first[:, 0]), band))
    bridges = []
    for parent, child in zip(order[:-1].tolist(), order[1:].tolist(), strict=True):
        a, b = contours[parent].astype(np.float32), contours[child].astype(np.float32)
        gaps = (a[:, None, 0] - b[None, :, 0]) ** 2 + (a[:, None, 1] - b[None, :, 1]) ** 2  # (|a|, |b|)
        flat = int(np.argmin(gaps))
        bridges.append((parent, flat // gaps.shape[1], child, flat % gaps.shape[1]))
    return bridges


def mask_to_single_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon for a mask, holes and separate regions included (see the module docstring).

    Args:
        mask: (H, W) bool.

    Returns:
        (K, 2) int64 x, y vertices in pixels; (0, 2) for an empty mask.
    """
    cv2 = require_cv2("YOLO-seg output")
    found, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c.reshape(-1, 2).astype(np.int64) for c in found]
    if not contours:
        return np.zeros((0, 2), dtype=np.int64)
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    start = 0
    if len(contours) > _MAX_TREE_CONTOURS:
        bridges = _serpentine_chain(contours)
        start = bridges[0][0]
    else:
        bridges = _spanning_tree(contours)
    for parent, at_parent, child, at_child in bridges:
        children.setdefault((parent, at_parent), []).append((child, at_child))

    def around(index: int, entry: int) -> np.ndarray:
        """Vertex indices of contour ``index`` from ``entry`` around and back to it."""
        n = len(contours[index])
        return np.concatenate((np.arange(entry, n), np.arange(0, entry), [entry]))

    # Depth-first walk of the tree with an explicit stack (trees of many contours are deep).
    # A frame is [contour, its vertex order, position in it, bridges still to take at that vertex].
    path: list[np.ndarray] = []
    stack: list[list] = [[start, around(start, 0), 0, None]]
    while stack:
        frame = stack[-1]
        index, order, position, pending = frame
        if pending is None:  # arriving at the next vertex
            if position == len(order):
                stack.pop()
                if stack:  # back across the bridge to the parent's vertex
                    parent = stack[-1]
                    path.append(contours[parent[0]][int(parent[1][parent[2]])])
                continue
            vertex = int(order[position])
            path.append(contours[index][vertex])
            frame[3] = children.pop((index, vertex), [])
        elif pending:
            child, at_child = pending.pop()
            stack.append([child, around(child, at_child), 0, None])
        else:
            frame[2] += 1
            frame[3] = None
    return np.stack(path)
