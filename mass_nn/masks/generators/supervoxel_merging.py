"""Watershed supervoxels and their region-merging hierarchy, the source of the supervoxel generator's masks
from small parts up to organ-scale regions.

1. Supervoxels: a watershed of the gradient magnitude (the largest over the three windows) flooded from seeds on
   a regular grid in millimetres, so their number follows the volume in mm³ and their borders follow edges.
2. Hierarchy: on the region adjacency graph, every region whose weakest border (lowest mean gradient along the
   shared faces) is mutually the weakest for its neighbour merges with it, in rounds, until one region is left
   (or a round limit, when one is given, is reached). Each merge is a node of a binary tree whose leaves are the
   supervoxels. Late rounds merge only a few pairs each, and a large homogeneous organ is often among the last
   nodes to form: stopped at 300 rounds, no node of a CHAOS MR volume was more than 9-63 % (IoU) of its liver.
3. Selection: tree nodes are either nested or disjoint, so the IoU of two nodes is the ratio of their sizes when
   one contains the other and 0 otherwise; a greedy non-maximum suppression by score needs no voxel work.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from mass_nn.boxes import Box


@dataclass
class RegionHierarchy:
    """A binary merge tree over supervoxels. Nodes 0..num_leaves-1 are the supervoxels; node num_leaves + i is
    the i-th merge, of children[i]. Parents always have larger ids than their children."""

    supervoxels: np.ndarray  # int32 (z, y, x): supervoxel id of every voxel
    num_leaves: int
    parent: np.ndarray  # int64 (nodes,), -1 for the roots
    children: np.ndarray  # int64 (nodes - num_leaves, 2)
    size: np.ndarray  # float64 (nodes,): voxels
    border_faces: np.ndarray  # float64 (nodes,): voxel faces between the node and the rest of the volume
    border_gradient: np.ndarray  # float64 (nodes,): summed gradient magnitude over those faces
    merge_round: np.ndarray  # int64 (nodes,): round that formed the node (0 for supervoxels)

    @property
    def num_nodes(self) -> int:
        return int(self.parent.size)

    def mean_border_gradient(self) -> np.ndarray:
        """Mean gradient magnitude on each node's outer border (0 for a node without one)."""
        return self.border_gradient / np.maximum(self.border_faces, 1.0)


def gradient_magnitude(windowed: np.ndarray, spacing_zyx_mm, sigma_mm: float) -> np.ndarray:
    """Gaussian gradient magnitude (grey levels per voxel) of each window, the largest of the three per voxel;
    the smoothing is `sigma_mm` millimetres along every axis."""
    sigma = [sigma_mm / s for s in spacing_zyx_mm]
    out = None
    for channel in windowed:
        magnitude = ndimage.gaussian_gradient_magnitude(channel.astype(np.float32), sigma=sigma)
        out = magnitude if out is None else np.maximum(out, magnitude, out=out)
    return out


def grid_seeds(shape, spacing_zyx_mm, seed_spacing_mm: float) -> np.ndarray:
    """int32 marker volume: one numbered seed every `seed_spacing_mm` (at least every voxel) along each axis,
    the first half a step in (or mid-axis when the axis is shorter), so every axis holds at least one."""
    steps = [max(1, int(round(seed_spacing_mm / s))) for s in spacing_zyx_mm]
    markers = np.zeros(shape, dtype=np.int32)
    grid = tuple(slice(min(step // 2, (n - 1) // 2), None, step) for step, n in zip(steps, shape))
    count = markers[grid].size
    markers[grid] = np.arange(1, count + 1, dtype=np.int32).reshape(markers[grid].shape)
    return markers


def supervoxels(gradient: np.ndarray, spacing_zyx_mm, seed_spacing_mm: float) -> np.ndarray:
    """Watershed regions of `gradient` from grid seeds, numbered 0..n-1 (int32)."""
    labels = watershed(gradient, grid_seeds(gradient.shape, spacing_zyx_mm, seed_spacing_mm))
    labels -= 1
    return labels.astype(np.int32, copy=False)


def adjacency(labels: np.ndarray, gradient: np.ndarray):
    """Region adjacency graph of a label volume (6-connectivity): arrays (a, b, faces, gradient_sum) with
    a < b, the number of voxel faces the two regions share and the summed mean gradient of the voxel pairs
    across those faces."""
    count = int(labels.max()) + 1
    keys, weights = [], []
    for axis in range(3):
        first = [slice(None)] * 3
        second = [slice(None)] * 3
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        left, right = labels[tuple(first)], labels[tuple(second)]
        differ = left != right
        u, v = left[differ].astype(np.int64), right[differ].astype(np.int64)
        keys.append(np.minimum(u, v) * count + np.maximum(u, v))
        weights.append(0.5 * (gradient[tuple(first)][differ] + gradient[tuple(second)][differ]))
    keys, weights = np.concatenate(keys), np.concatenate(weights)
    pairs, inverse, faces = np.unique(keys, return_inverse=True, return_counts=True)
    return pairs // count, pairs % count, faces.astype(np.float64), np.bincount(inverse, weights=weights)


def _mutual_weakest_edges(a, b, cost, num_nodes) -> np.ndarray:
    """Indices of the edges that are the cheapest edge of both their end nodes (ties broken by edge index).

    Two scatter-minimum passes instead of sorting the costs: the lowest cost at each node, then the lowest edge
    index among the edges at that cost. A round's sort was most of the hierarchy's time once late rounds merge
    only a few pairs each."""
    lowest = np.full(num_nodes, np.inf)
    np.minimum.at(lowest, a, cost)
    np.minimum.at(lowest, b, cost)
    index = np.arange(cost.size)
    cheapest = np.full(num_nodes, cost.size, dtype=np.int64)
    at_a, at_b = cost == lowest[a], cost == lowest[b]
    np.minimum.at(cheapest, a[at_a], index[at_a])
    np.minimum.at(cheapest, b[at_b], index[at_b])
    return np.flatnonzero((cheapest[a] == index) & (cheapest[b] == index))


def build_hierarchy(labels: np.ndarray, gradient: np.ndarray, max_rounds: int | None = None) -> RegionHierarchy:
    """Merge supervoxels in rounds of mutually weakest borders (see the module docstring), until one region is
    left or after `max_rounds` rounds when given."""
    leaves = int(labels.max()) + 1
    capacity = 2 * leaves
    a, b, faces, grad_sum = adjacency(labels, gradient)
    size = np.zeros(capacity)
    size[:leaves] = np.bincount(labels.ravel(), minlength=leaves)
    border_faces, border_gradient = np.zeros(capacity), np.zeros(capacity)
    border_faces[:leaves] = np.bincount(a, faces, leaves) + np.bincount(b, faces, leaves)
    border_gradient[:leaves] = np.bincount(a, grad_sum, leaves) + np.bincount(b, grad_sum, leaves)
    parent = np.full(capacity, -1, dtype=np.int64)
    merge_round = np.zeros(capacity, dtype=np.int64)
    children = []
    next_id = leaves
    for round_index in itertools.count(1) if max_rounds is None else range(1, max_rounds + 1):
        if a.size == 0:
            break
        merging = _mutual_weakest_edges(a, b, grad_sum / faces, capacity)
        u, v = a[merging], b[merging]
        new = np.arange(next_id, next_id + merging.size)
        next_id += merging.size
        parent[u], parent[v] = new, new
        merge_round[new] = round_index
        size[new] = size[u] + size[v]
        border_faces[new] = border_faces[u] + border_faces[v] - 2 * faces[merging]
        border_gradient[new] = border_gradient[u] + border_gradient[v] - 2 * grad_sum[merging]
        children.append(np.stack([u, v], axis=1))
        a, b, faces, grad_sum = _relabel_edges(a, b, faces, grad_sum, u, v, new, capacity)
    nodes = next_id
    return RegionHierarchy(
        supervoxels=labels, num_leaves=leaves, parent=parent[:nodes],
        children=np.concatenate(children) if children else np.zeros((0, 2), dtype=np.int64),
        size=size[:nodes], border_faces=border_faces[:nodes], border_gradient=border_gradient[:nodes],
        merge_round=merge_round[:nodes])


def _relabel_edges(a, b, faces, grad_sum, u, v, new, capacity):
    """The edge list after merging u[i] and v[i] into new[i]: inner edges dropped, parallel edges summed."""
    mapping = np.arange(capacity)
    mapping[u], mapping[v] = new, new
    a, b = mapping[a], mapping[b]
    outer = a != b
    a, b, faces, grad_sum = a[outer], b[outer], faces[outer], grad_sum[outer]
    keys = np.minimum(a, b) * capacity + np.maximum(a, b)
    pairs, inverse = np.unique(keys, return_inverse=True)
    return pairs // capacity, pairs % capacity, np.bincount(inverse, faces), np.bincount(inverse, grad_sum)


def select_nodes(hierarchy: RegionHierarchy, score: np.ndarray, candidates: np.ndarray, iou: float,
                 budget: int) -> list[int]:
    """Greedy non-maximum suppression over tree nodes: visit `candidates` by decreasing score and keep a node
    unless a kept ancestor or descendant overlaps it with IoU above `iou`; stop after `budget` nodes."""
    parent, size = hierarchy.parent.tolist(), hierarchy.size.tolist()
    kept = np.zeros(hierarchy.num_nodes, dtype=bool)
    largest_kept_below = np.zeros(hierarchy.num_nodes)
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    selected = []
    for node in order.tolist():
        if len(selected) >= budget:
            break
        node_size = size[node]
        if largest_kept_below[node] > iou * node_size:
            continue
        ancestors = []
        above = parent[node]
        while above >= 0 and iou * size[above] < node_size:  # only ancestors this close can exceed the IoU
            ancestors.append(above)
            above = parent[above]
        if any(kept[x] for x in ancestors):
            continue
        kept[node] = True
        selected.append(node)
        for x in ancestors:
            largest_kept_below[x] = max(largest_kept_below[x], node_size)
    return selected


def node_masks(hierarchy: RegionHierarchy, nodes: list[int]) -> list[tuple[Box, np.ndarray]]:
    """(box, boolean crop) of each node: the union of the supervoxels below it."""
    leaves = hierarchy.num_leaves
    regions = ndimage.find_objects(hierarchy.supervoxels + 1)
    lower = np.array([[s.start for s in r] for r in regions])
    upper = np.array([[s.stop for s in r] for r in regions])
    out = []
    for node in nodes:
        members = _leaves_below(hierarchy, node)
        box = tuple(zip(lower[members].min(0).tolist(), upper[members].max(0).tolist()))
        inside = np.zeros(leaves, dtype=bool)
        inside[members] = True
        out.append((box, inside[hierarchy.supervoxels[tuple(slice(lo, hi) for lo, hi in box)]]))
    return out


def _leaves_below(hierarchy: RegionHierarchy, node: int) -> np.ndarray:
    stack, leaves = [node], []
    while stack:
        x = stack.pop()
        if x < hierarchy.num_leaves:
            leaves.append(x)
        else:
            stack.extend(hierarchy.children[x - hierarchy.num_leaves].tolist())
    return np.asarray(leaves, dtype=np.int64)
