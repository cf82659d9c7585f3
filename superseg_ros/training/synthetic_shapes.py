"""Synthetic Shapes: SuperPoint's stage-1 (MagicPoint) data with exact sub-pixel corner labels.

    shapes = SyntheticShapes({"height": 240, "width": 320}, seed=0)
    image, corners, valid, primitive = shapes.sample(index)   # same (seed, index) -> same item
    labels, offsets = corner_heatmap(corners, 240, 320, rng)   # cell labels, sub-pixel targets

Coordinates (DEVELOPERS.md): (0, 0) is the centre of the top-left pixel, x right, y down.

How a label is made exact
    Shapes are rasterised on a canvas S times larger (S = `supersample`) and reduced with
    cv2.resize(INTER_AREA), an exact S x S box mean. Output pixel i covers [i - 0.5, i + 0.5], i.e.
    canvas pixels iS .. iS + S - 1, so a canvas position X maps to x = (X + 0.5) / S - 0.5.
    Every vertex is snapped to a canvas-pixel *boundary* (X = k + 0.5, so x = m / S - 0.5 for an
    integer m, the "grid unit") before anything is drawn or labelled, and the label is computed
    from the snapped vertex with that mapping. The rasteriser fills exactly the canvas pixels
    whose centres lie inside the polygon (a centre exactly on an edge: see convex_polygon_mask;
    adjacent polygons tile without gaps or double cover). An axis-aligned edge on a pixel boundary
    is then reproduced exactly (the output pixel it crosses has coverage = the fraction of the
    pixel inside), so the label is exactly where the rendered corner is. A slanted edge is a
    staircase within 1/(2S) px of the true edge; corners measured from fitted edges are off by
    0.007 px on average, 0.09 px at worst (a nearly axis-aligned edge with one step), at S = 8.
    cv2.fillPoly is not used: it rounds vertices to canvas-pixel centres and fills boundary
    pixels, growing every shape by half a canvas pixel (corner error 0.08 px mean, 0.17 max).

Which corners are labelled
    A corner is kept when (1) it lies inside the image, margin <= x <= W - 1 - margin (same for
    y), and (2) it is not occluded: every canvas pixel within `occlusion_radius` output px of it
    that its own shape painted still shows that shape when the image is finished. "Own shape" is a
    whole primitive (all cells of a checkerboard, all faces of a cube), so a checkerboard's inner
    X-junction needs all four cells intact and a line's end needs its cap intact. A corner whose
    own pixels are partly covered by a later shape, or that has no own pixels at all (a sliver),
    is dropped. Shapes drawn *around* a corner without covering its own pixels do not remove it:
    the corner is still a corner of its shape against a different grey (colours are chosen with
    `min_contrast` to the background and to earlier shapes nearby).
    By default shapes do not overlap (SuperPoint does the same): an overlap creates T-junctions
    that are corners in the image but no shape's vertex, and they are not labelled.
    `overlap_probability` > 0 lets shapes overlap; the occlusion rule then removes hidden corners.

Nothing is written to disk unless `SyntheticShapes.write` is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..config import ConfigError, merge_config

CELL = 8                 # detector cell size (SuperPoint)
DUSTBIN = CELL * CELL    # cell label meaning "no corner in this cell"

DEFAULT_CONFIG = {
    "height": 240,                   # output image size, multiples of 8
    "width": 320,
    "supersample": 8,                # canvas scale S; labels lie on a 1/S px grid
    "primitives": {                  # relative probabilities of each image type; 0 disables
        "lines": 1.0,
        "polygon": 1.0,              # one triangle / quadrilateral (see polygon_sides)
        "multiple_polygons": 1.0,
        "ellipses": 1.0,             # no corners: teaches the dustbin
        "star": 1.0,
        "checkerboard": 1.0,
        "cube": 1.0,
        "noise": 0.3,                # background noise only, no corners
    },
    "size": [0.12, 0.45],            # shape radius as a fraction of min(height, width)
    "polygon_sides": [3, 4],         # inclusive range of vertex counts
    "shape_count": [2, 5],           # shapes in multiple_polygons / ellipses
    "line_count": [1, 5],
    "line_thickness": [1.0, 4.0],    # px
    "star_branches": [3, 6],
    "checkerboard_cells": [3, 7],    # rows and columns, inclusive range
    "corner_angle_deg": [20.0, 150.0],  # interior angles outside this are not clear corners
    "min_edge": 6.0,                 # px, shortest polygon edge / checkerboard cell side
    "min_contrast": 30.0,            # grey levels between a shape and what is around it
    "gap": 3.0,                      # px kept free between non-overlapping shapes
    "overlap_probability": 0.0,      # chance that a shape ignores the no-overlap rule
    "occlusion_radius": 2.0,         # px around a corner its own shape must still own
    "border_margin": 0.0,            # px; corners closer to the image edge are dropped
    "background": {
        "blurred_noise_probability": 0.7,  # otherwise a flat grey
        "noise_amplitude": 12.0,     # max std of the smooth background variation, grey levels
        "noise_scale": [4.0, 40.0],  # px, size of the background blobs
    },
    "blur_sigma": [0.0, 1.0],        # Gaussian blur of the final image, px (uniform range)
    "noise_std": [0.0, 6.0],         # additive Gaussian noise, grey levels (uniform range)
    "max_attempts": 50,              # placements tried per shape before giving up on it
}

PRIMITIVES = tuple(DEFAULT_CONFIG["primitives"])


def shapes_config(overrides: dict | None = None) -> dict:
    """DEFAULT_CONFIG merged with `overrides` and checked; raises ConfigError naming the key."""
    conf = merge_config(DEFAULT_CONFIG, overrides, where="synthetic_shapes")
    for key in ("height", "width"):
        if not isinstance(conf[key], int) or conf[key] < 2 * CELL or conf[key] % CELL:
            raise ConfigError(f"synthetic_shapes.{key} must be a multiple of {CELL} and >= "
                              f"{2 * CELL}, got {conf[key]!r}")
    if not isinstance(conf["supersample"], int) or not 1 <= conf["supersample"] <= 32:
        raise ConfigError("synthetic_shapes.supersample must be an integer in 1..32, "
                          f"got {conf['supersample']!r}")
    probs = conf["primitives"]
    if any(not isinstance(p, (int, float)) or p < 0 for p in probs.values()) \
            or sum(probs.values()) <= 0:
        raise ConfigError("synthetic_shapes.primitives: probabilities must be >= 0 with a "
                          f"positive sum, got {probs}")
    ranges = ["size", "polygon_sides", "shape_count", "line_count", "line_thickness",
              "star_branches", "checkerboard_cells", "corner_angle_deg", "blur_sigma", "noise_std"]
    for key in ranges:
        _check_range(conf[key], f"synthetic_shapes.{key}")
    _check_range(conf["background"]["noise_scale"], "synthetic_shapes.background.noise_scale")
    for key in ("polygon_sides", "shape_count", "line_count", "star_branches",
                "checkerboard_cells"):
        if not all(isinstance(v, int) and v >= 1 for v in conf[key]):
            raise ConfigError(f"synthetic_shapes.{key} must be two positive integers")
    if conf["polygon_sides"][0] < 3 or conf["star_branches"][0] < 2 \
            or conf["checkerboard_cells"][0] < 2:
        raise ConfigError("synthetic_shapes: polygons need >= 3 sides, stars >= 2 branches, "
                          "checkerboards >= 2 cells per side")
    if not 0.0 <= conf["overlap_probability"] <= 1.0:
        raise ConfigError("synthetic_shapes.overlap_probability must be in [0, 1]")
    for key in ("min_contrast", "gap", "occlusion_radius", "border_margin", "min_edge"):
        if conf[key] < 0:
            raise ConfigError(f"synthetic_shapes.{key} must be >= 0, got {conf[key]!r}")
    if conf["max_attempts"] < 1:
        raise ConfigError("synthetic_shapes.max_attempts must be >= 1")
    return conf


def _check_range(value, name):
    if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) \
            or value[0] > value[1] or value[0] < 0:
        raise ConfigError(f"{name} must be [low, high] with 0 <= low <= high, got {value!r}")


# --- coordinates ---------------------------------------------------------------------------------


def to_grid(xy, supersample: int) -> np.ndarray:
    """Output-pixel positions -> nearest canvas-pixel boundary, in integer grid units m, where
    output x = m / S - 0.5 (canvas X = m - 0.5)."""
    return np.round((np.asarray(xy, np.float64) + 0.5) * supersample).astype(np.int64)


def grid_to_pixels(m, supersample: int) -> np.ndarray:
    """Grid units (possibly half-integers, e.g. a line cap's midpoint) -> output pixels."""
    return np.asarray(m, np.float64) / supersample - 0.5


# --- rasterisation -------------------------------------------------------------------------------


def convex_polygon_mask(vertices: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Canvas pixels [y0, y1) x [x0, x1) whose centres lie inside a convex polygon.

    `vertices` (n, 2) are integer grid units (pixel boundaries), so pixel u's centre is u + 0.5.
    Everything is doubled to stay in exact integers (vertices even, centres odd). Axis-aligned
    edges never pass through a centre; slanted ones can (slope 1, 3, 1/3, ...). Such a centre is
    inside for one of the two directions an edge can be walked and, alternating with the parity
    of its column, so polygons sharing an edge tile it exactly (no gap, no double cover) and a
    lone edge is not biased by half a canvas pixel (0.044 px at S = 8 on a 45-degree edge).
    Each row of a convex polygon is one span [lo, hi): 2 comparisons per pixel.
    """
    v = 2 * np.asarray(vertices, np.int64)
    if _twice_area(v) < 0:
        v = v[::-1]
    rows = 2 * np.arange(y0, y1, dtype=np.int64) + 1
    lo = np.full(len(rows), x0, np.int64)
    hi = np.full(len(rows), x1, np.int64)
    for (ax, ay), (bx, by) in zip(v, np.roll(v, -1, axis=0)):
        dx, dy = bx - ax, by - ay
        if dx == 0 and dy == 0:
            continue
        owns_ties = dy > 0 or (dy == 0 and dx < 0)   # the reversed edge gets the other parity
        # inside iff cross(b - a, centre - a) > 0 with centre = (2u + 1, row): k - 2 dy u > 0
        k = dx * (rows - ay) + dy * (ax - 1)
        if dy > 0:
            edge = -((-k) // (2 * dy))                    # first u with k - 2 dy u <= 0
            tie = (k % (2 * dy) == 0) & (((edge & 1) == 0) == owns_ties)
            hi = np.minimum(hi, edge + tie)
        elif dy < 0:
            edge = (-k) // (-2 * dy)                      # last u with k - 2 dy u <= 0
            tie = ((-k) % (-2 * dy) == 0) & (((edge & 1) == 0) == owns_ties)
            lo = np.maximum(lo, edge + 1 - tie)
        else:
            hi = np.where(k > 0, hi, lo)                  # whole row in or out (never a tie)
    u = np.arange(x0, x1, dtype=np.int64)
    return (u >= lo[:, None]) & (u < hi[:, None])


def _twice_area(v: np.ndarray) -> int:
    """Shoelace sum; > 0 when the interior is where cross(edge, point - start) > 0."""
    x, y = v[:, 0], v[:, 1]
    return int(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def is_convex(vertices: np.ndarray) -> bool:
    """Strictly convex, non-degenerate polygon (any winding)."""
    v = np.asarray(vertices, np.int64)
    edges = np.roll(v, -1, axis=0) - v
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1,
                                                                                     axis=0)[:, 0]
    return bool(np.all(turns > 0) or np.all(turns < 0))


def interior_angles_deg(vertices: np.ndarray) -> np.ndarray:
    """Interior angle at each vertex of a convex polygon."""
    v = np.asarray(vertices, np.float64)
    to_prev = np.roll(v, 1, axis=0) - v
    to_next = np.roll(v, -1, axis=0) - v
    cos = np.sum(to_prev * to_next, 1) / (np.linalg.norm(to_prev, axis=1)
                                          * np.linalg.norm(to_next, axis=1) + 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# --- shapes and the canvas -----------------------------------------------------------------------


@dataclass
class Shape:
    """One primitive: convex parts in grid units, each with a tone (index into its greys).

    `corners` are output pixels. `greys` None: the canvas picks contrasting greys when it is drawn.
    """

    parts: list
    corners: np.ndarray
    tones: list = field(default_factory=list)
    greys: list | None = None

    def __post_init__(self):
        self.parts = [np.asarray(p, np.int64) for p in self.parts]
        self.corners = np.asarray(self.corners, np.float64).reshape(-1, 2)
        if not self.tones:
            self.tones = [0] * len(self.parts)


def polygon_shape(vertices, supersample: int, grey: float | None = None) -> Shape:
    """A convex polygon given in output pixels; its corners are the snapped vertices."""
    grid = to_grid(vertices, supersample)
    return Shape([grid], grid_to_pixels(grid, supersample),
                 greys=None if grey is None else [float(grey)])


class Canvas:
    """The S-times canvas, a per-pixel shape-id map (0 = background) and the corner probes."""

    def __init__(self, background: np.ndarray, supersample: int):
        self.height, self.width = background.shape
        self.s = supersample
        self.background = background.astype(np.float32)
        self.image = cv2.resize(self.background, (self.width * supersample,
                                                  self.height * supersample),
                                interpolation=cv2.INTER_LINEAR)
        self.ids = np.zeros(self.image.shape, np.uint16)
        self.occupied = np.zeros((self.height, self.width), bool)  # dilated footprints
        self.drawn: list = []     # (output-pixel bbox, greys) of every shape, for contrast
        self.probes: list = []    # (corner xy, shape id, own canvas pixels ys, xs)

    def part_masks(self, shape: Shape):
        """Per part: (canvas bbox x0, y0, x1, y1, exact mask), None when off the canvas."""
        out = []
        for vertices in shape.parts:
            x0, y0 = np.maximum(vertices.min(0), 0)               # pixel u's centre is u + 0.5
            x1, y1 = np.minimum(vertices.max(0), self.ids.shape[::-1])
            out.append(((x0, y0, x1, y1), convex_polygon_mask(vertices, x0, y0, x1, y1))
                       if x1 > x0 and y1 > y0 else None)
        return out

    def footprint(self, shape: Shape) -> np.ndarray:
        """Output pixels the shape touches, conservatively (cv2.fillPoly includes boundary
        pixels): a cheap test against `occupied` before the exact canvas masks are made."""
        touched = np.zeros((self.height, self.width), np.uint8)
        shift = 4
        for vertices in shape.parts:
            points = np.round(grid_to_pixels(vertices, self.s) * (1 << shift)).astype(np.int32)
            cv2.fillPoly(touched, [points], 1, lineType=cv2.LINE_8, shift=shift)
        return touched.astype(bool)

    def add(self, shape: Shape, rng: np.random.Generator, conf: dict,
            allow_overlap: bool = False) -> bool:
        """Draw `shape` unless it would overlap (or touch) earlier shapes; True when drawn."""
        touched = self.footprint(shape)
        if not touched.any() or (not allow_overlap and (touched & self.occupied).any()):
            return False
        ys, xs = np.nonzero(touched)
        bbox = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        if shape.greys is None:
            shape.greys = self.contrasting_greys(bbox, max(shape.tones) + 1, rng,
                                                 conf["min_contrast"], conf["gap"])
        shape_id = len(self.drawn) + 1
        for item, tone in zip(self.part_masks(shape), shape.tones):
            if item is not None:
                (x0, y0, x1, y1), mask = item
                self.image[y0:y1, x0:x1][mask] = shape.greys[tone]
                self.ids[y0:y1, x0:x1][mask] = shape_id
        self.drawn.append((bbox, list(shape.greys)))
        gap = int(np.ceil(conf["gap"]))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
        self.occupied |= cv2.dilate(touched.astype(np.uint8), kernel).astype(bool)
        self.probe_corners(shape.corners, shape_id, conf["occlusion_radius"])
        return True

    def contrasting_greys(self, bbox, count: int, rng, min_contrast: float, gap: float):
        """`count` greys, each >= min_contrast from the background in bbox, from earlier shapes
        whose bboxes come within `gap` of it, and from each other."""
        x0, y0, x1, y1 = bbox
        region = self.background[y0:y1, x0:x1]
        forbidden = [(float(region.min()) - min_contrast, float(region.max()) + min_contrast)]
        for (a0, b0, a1, b1), greys in self.drawn:
            if a0 < x1 + gap and x0 < a1 + gap and b0 < y1 + gap and y0 < b1 + gap:
                forbidden += [(g - min_contrast, g + min_contrast) for g in greys]
        chosen = []
        for _ in range(count):
            grey = pick_grey(rng, forbidden)
            chosen.append(grey)
            forbidden.append((grey - min_contrast, grey + min_contrast))
        return chosen

    def probe_corners(self, corners: np.ndarray, shape_id: int, radius_px: float):
        """Remember, per corner, the canvas pixels near it that its shape owns right now."""
        r = radius_px * self.s
        for xy in corners:
            cx, cy = (xy + 0.5) * self.s - 0.5          # canvas coordinates of the corner
            x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, self.ids.shape[1])
            y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, self.ids.shape[0])
            if x1 <= x0 or y1 <= y0:
                self.probes.append((xy, shape_id, np.empty(0, int), np.empty(0, int)))
                continue
            ys, xs = np.mgrid[y0:y1, x0:x1]
            own = ((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r) & (self.ids[y0:y1, x0:x1] == shape_id)
            self.probes.append((xy, shape_id, ys[own], xs[own]))

    def visible_corners(self, margin: float) -> np.ndarray:
        """Corners inside the image whose own pixels were not painted over (module docstring)."""
        keep = []
        for xy, shape_id, ys, xs in self.probes:
            inside = (margin <= xy[0] <= self.width - 1 - margin
                      and margin <= xy[1] <= self.height - 1 - margin)
            if inside and len(ys) and np.all(self.ids[ys, xs] == shape_id):
                keep.append(xy)
        return np.asarray(keep, np.float32).reshape(-1, 2)

    def reduce(self) -> np.ndarray:
        """The output image (float32): an exact S x S box mean of the canvas."""
        return cv2.resize(self.image, (self.width, self.height), interpolation=cv2.INTER_AREA)


def pick_grey(rng: np.random.Generator, forbidden) -> float:
    """A random grey level 0..255 outside every (low, high) interval; if none is left, the level
    farthest from all of them."""
    levels = np.arange(256, dtype=np.float64)
    distance = np.full(256, np.inf)
    for low, high in forbidden:
        distance = np.minimum(distance, np.maximum(low - levels, levels - high))
    allowed = levels[distance >= 0]
    if len(allowed):
        return float(rng.choice(allowed))
    return float(levels[np.argmax(distance)])


def render_shapes(shapes, height: int, width: int, supersample: int = 8,
                  background: float = 0.0, occlusion_radius: float = 2.0):
    """Draw shapes in order (later on top) on a flat background, no blur or noise, overlaps
    allowed. Returns (float32 image, visible corners float32 (N, 2)). For tests and inspection."""
    conf = dict(DEFAULT_CONFIG, occlusion_radius=occlusion_radius)
    canvas = Canvas(np.full((height, width), background, np.float32), supersample)
    rng = np.random.default_rng(0)
    for shape in shapes:
        canvas.add(shape, rng, conf, allow_overlap=True)
    return canvas.reduce(), canvas.visible_corners(0.0)


def render_polygon(vertices, height: int, width: int, supersample: int = 8,
                   grey: float = 255.0, background: float = 0.0):
    """One convex polygon (output pixels), snapped and drawn; returns (float32 image, corners)."""
    return render_shapes([polygon_shape(vertices, supersample, grey)], height, width,
                         supersample, background)


# --- primitives ----------------------------------------------------------------------------------
# Each draws onto the canvas with geometry in output pixels, snapped to the grid before the
# corners are computed, and retries a placement that is invalid or overlaps.


def _uniform(rng, bounds):
    return float(rng.uniform(bounds[0], bounds[1]))


def _integer(rng, bounds):
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _radius(rng, conf, scale=1.0):
    return _uniform(rng, conf["size"]) * min(conf["height"], conf["width"]) * scale


def _centre(rng, conf, inset=0.1):
    return np.array([rng.uniform(inset, 1 - inset) * conf["width"],
                     rng.uniform(inset, 1 - inset) * conf["height"]])


def _place(canvas, rng, conf, make_shape) -> bool:
    """Try `make_shape(rng)` (None = invalid geometry) up to max_attempts times."""
    allow_overlap = rng.random() < conf["overlap_probability"]
    for _ in range(conf["max_attempts"]):
        shape = make_shape(rng)
        if shape is not None and canvas.add(shape, rng, conf, allow_overlap):
            return True
    return False


def _good_polygon(grid: np.ndarray, conf) -> bool:
    """Convex after snapping, clear corner angles, no tiny edges."""
    if not is_convex(grid):
        return False
    angles = interior_angles_deg(grid)
    low, high = conf["corner_angle_deg"]
    edges = np.linalg.norm(np.diff(np.vstack([grid, grid[:1]]), axis=0), axis=1)
    return bool(angles.min() >= low and angles.max() <= high
                and edges.min() >= conf["min_edge"] * conf["supersample"])


def make_polygon(rng, conf, scale=1.0):
    """A convex polygon: random angles on a circle, then a random anisotropic stretch."""
    n = _integer(rng, conf["polygon_sides"])
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    points = np.stack([np.cos(angles), np.sin(angles)], 1)
    stretch = np.diag([1.0, rng.uniform(0.5, 1.0)])
    rotation = _rotation(rng.uniform(0, 2 * np.pi))
    points = points @ stretch.T @ rotation.T * _radius(rng, conf, scale) + _centre(rng, conf)
    grid = to_grid(points, conf["supersample"])
    if not _good_polygon(grid, conf):
        return None
    return Shape([grid], grid_to_pixels(grid, conf["supersample"]))


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def thick_segment(start, end, thickness, supersample):
    """A rectangle from `start` to `end` (output px); returns (grid corners, end labels). The label
    of each end is the midpoint of its snapped cap, exactly where the rendered end is."""
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    direction = (end - start) / max(np.linalg.norm(end - start), 1e-9)
    normal = np.array([-direction[1], direction[0]]) * thickness / 2
    grid = to_grid([start - normal, end - normal, end + normal, start + normal], supersample)
    caps = np.array([(grid[0] + grid[3]) / 2, (grid[1] + grid[2]) / 2])
    return grid, grid_to_pixels(caps, supersample)


def make_line(rng, conf):
    h, w = conf["height"], conf["width"]
    start = rng.uniform([0, 0], [w - 1, h - 1])
    end = rng.uniform([0, 0], [w - 1, h - 1])
    if np.linalg.norm(end - start) < 0.15 * min(h, w):
        return None
    grid, ends = thick_segment(start, end, _uniform(rng, conf["line_thickness"]),
                               conf["supersample"])
    return Shape([grid], ends) if is_convex(grid) else None


def make_ellipse(rng, conf, scale=0.6):
    """An ellipse as a convex polygon fine enough that its facets are < 0.05 px deep; no corners."""
    a = _radius(rng, conf, scale)
    b = a * rng.uniform(0.3, 1.0)
    n = int(np.clip(np.ceil(np.pi / np.arccos(1 - 0.05 / a)), 16, 512))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = np.stack([a * np.cos(t), b * np.sin(t)], 1) @ _rotation(rng.uniform(0, np.pi)).T
    grid = to_grid(points + _centre(rng, conf), conf["supersample"])
    # snapping can dent the fine polygon; its hull is convex and moves no point by > 1/S px
    grid = cv2.convexHull(grid.astype(np.int32))[:, 0].astype(np.int64)
    return Shape([grid], np.empty((0, 2)))


def make_star(rng, conf):
    """Thick spokes from a centre; corners: the centre junction and every tip."""
    s = conf["supersample"]
    n = _integer(rng, conf["star_branches"])
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    gaps = np.diff(np.append(angles, angles[0] + 2 * np.pi))
    if gaps.min() < np.radians(max(conf["corner_angle_deg"][0], 25.0)):
        return None
    centre = grid_to_pixels(to_grid(_centre(rng, conf), s), s)
    thickness = _uniform(rng, conf["line_thickness"])
    radius = _radius(rng, conf)
    parts, corners = [], [centre]
    for angle in angles:
        direction = np.array([np.cos(angle), np.sin(angle)])
        tip = centre + direction * radius * rng.uniform(0.5, 1.0)
        # start half a thickness behind the centre so the spokes cover the junction
        grid, ends = thick_segment(centre - direction * thickness / 2, tip, thickness, s)
        if not is_convex(grid):
            return None
        parts.append(grid)
        corners.append(ends[1])
    return Shape(parts, np.array(corners))


def make_checkerboard(rng, conf):
    """rows x cols cells under a random homography; corners: every grid point."""
    s = conf["supersample"]
    rows, cols = (_integer(rng, conf["checkerboard_cells"]) for _ in range(2))
    size = min(conf["height"], conf["width"]) * rng.uniform(0.5, 1.3)
    cell = size / max(rows, cols)
    gx, gy = np.meshgrid(np.arange(cols + 1) * cell, np.arange(rows + 1) * cell)
    board = np.stack([gx, gy], -1).reshape(-1, 2) - [cols * cell / 2, rows * cell / 2]
    outline = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [cols * cell / 2, rows * cell / 2]
    moved = (outline + rng.uniform(-0.15, 0.15, (4, 2)) * size) @ \
        _rotation(rng.uniform(0, 2 * np.pi)).T + _centre(rng, conf, inset=0.3)
    homography = cv2.getPerspectiveTransform(outline.astype(np.float32), moved.astype(np.float32))
    warped = cv2.perspectiveTransform(board[None].astype(np.float64), homography)[0]
    grid = to_grid(warped, s).reshape(rows + 1, cols + 1, 2)
    parts, tones = [], []
    for i in range(rows):
        for j in range(cols):
            quad = np.array([grid[i, j], grid[i, j + 1], grid[i + 1, j + 1], grid[i + 1, j]])
            if not _good_cell(quad, conf):
                return None
            parts.append(quad)
            tones.append((i + j) % 2)
    return Shape(parts, grid_to_pixels(grid.reshape(-1, 2), s), tones)


def _good_cell(quad, conf):
    edges = np.linalg.norm(np.diff(np.vstack([quad, quad[:1]]), axis=0), axis=1)
    return is_convex(quad) and edges.min() >= conf["min_edge"] * conf["supersample"]


def make_cube(rng, conf):
    """A box rotated in 3-D, orthographic view: its three visible faces in three greys; corners:
    the seven visible vertices (six on the outline + the Y-junction)."""
    s = conf["supersample"]
    half = _radius(rng, conf, 0.6) * rng.uniform(0.5, 1.0, 3)
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    rotation = cv2.Rodrigues(rng.normal(size=3) * np.pi)[0]
    vertices = (signs * half) @ rotation.T                    # camera looks along +z
    normals = rotation                                        # column k = normal of axis k faces
    faces = []
    for axis in range(3):
        sign = -1.0 if normals[2, axis] > 0 else 1.0         # the face turned towards the camera
        if abs(normals[2, axis]) < 0.25:                      # nearly edge-on: a sliver
            return None
        on_face = np.nonzero(signs[:, axis] == sign)[0]
        faces.append(_face_cycle(on_face, signs, axis))
    projected = to_grid(vertices[:, :2] + _centre(rng, conf, inset=0.25), s)
    parts = [projected[face] for face in faces]
    if not all(_good_polygon(p, dict(conf, corner_angle_deg=[10.0, 170.0])) for p in parts):
        return None
    visible = np.unique(np.concatenate(faces))
    return Shape(parts, grid_to_pixels(projected[visible], s), tones=[0, 1, 2])


def _face_cycle(on_face, signs, axis):
    """The four vertex indices of a box face in cyclic order."""
    a, b = [k for k in range(3) if k != axis]
    order = {(-1, -1): 0, (1, -1): 1, (1, 1): 2, (-1, 1): 3}
    return np.array(sorted(on_face, key=lambda i: order[(signs[i, a], signs[i, b])]))


def draw_lines(canvas, rng, conf):
    for _ in range(_integer(rng, conf["line_count"])):
        _place(canvas, rng, conf, lambda r: make_line(r, conf))


def draw_polygon(canvas, rng, conf):
    _place(canvas, rng, conf, lambda r: make_polygon(r, conf))


def draw_multiple_polygons(canvas, rng, conf):
    for _ in range(_integer(rng, conf["shape_count"])):
        _place(canvas, rng, conf, lambda r: make_polygon(r, conf, scale=0.5))


def draw_ellipses(canvas, rng, conf):
    for _ in range(_integer(rng, conf["shape_count"])):
        _place(canvas, rng, conf, lambda r: make_ellipse(r, conf))


def draw_star(canvas, rng, conf):
    _place(canvas, rng, conf, lambda r: make_star(r, conf))


def draw_checkerboard(canvas, rng, conf):
    _place(canvas, rng, conf, lambda r: make_checkerboard(r, conf))


def draw_cube(canvas, rng, conf):
    _place(canvas, rng, conf, lambda r: make_cube(r, conf))


def draw_nothing(canvas, rng, conf):
    pass


DRAW = {"lines": draw_lines, "polygon": draw_polygon, "multiple_polygons": draw_multiple_polygons,
        "ellipses": draw_ellipses, "star": draw_star, "checkerboard": draw_checkerboard,
        "cube": draw_cube, "noise": draw_nothing}


# --- backgrounds and photometry ------------------------------------------------------------------


def make_background(rng, conf, primitive: str) -> np.ndarray:
    """Flat grey, or grey plus smooth (blurred, upsampled) noise; `noise`: i.i.d. uniform noise."""
    h, w = conf["height"], conf["width"]
    if primitive == "noise":
        return rng.uniform(0, 255, (h, w)).astype(np.float32)
    level = rng.uniform(0, 255)
    bg = conf["background"]
    if rng.random() >= bg["blurred_noise_probability"]:
        return np.full((h, w), level, np.float32)
    scale = _uniform(rng, bg["noise_scale"])
    coarse = rng.standard_normal((int(np.ceil(h / scale)) + 1, int(np.ceil(w / scale)) + 1))
    smooth = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    smooth /= smooth.std() + 1e-6
    amplitude = rng.uniform(0, bg["noise_amplitude"])
    return np.clip(level + amplitude * smooth, 0, 255).astype(np.float32)


def photometric(image: np.ndarray, rng, conf) -> np.ndarray:
    """Gaussian blur (symmetric: it does not move a corner) and additive noise -> uint8."""
    sigma = _uniform(rng, conf["blur_sigma"])
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = _uniform(rng, conf["noise_std"])
    image = image + rng.standard_normal(image.shape).astype(np.float32) * noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# --- the dataset ---------------------------------------------------------------------------------


class ShapesSample(NamedTuple):
    image: np.ndarray      # (H, W) uint8 grey
    corners: np.ndarray    # (N, 2) float32 x, y in output pixels
    valid: np.ndarray      # (H, W) bool: pixels with image content (all True here)
    primitive: str


class SyntheticShapes:
    """Item `index` of the stream seeded `seed`; any item can be regenerated on its own."""

    def __init__(self, config: dict | None = None, seed: int = 0):
        self.config = shapes_config(config)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        probs = np.array([self.config["primitives"][p] for p in PRIMITIVES], np.float64)
        self.probabilities = probs / probs.sum()

    def sample(self, index: int) -> ShapesSample:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        conf = self.config
        rng = np.random.default_rng((self.seed, int(index)))
        primitive = PRIMITIVES[rng.choice(len(PRIMITIVES), p=self.probabilities)]
        canvas = Canvas(make_background(rng, conf, primitive), conf["supersample"])
        DRAW[primitive](canvas, rng, conf)
        image = photometric(canvas.reduce(), rng, conf)
        corners = canvas.visible_corners(conf["border_margin"])
        valid = np.ones(image.shape, bool)
        return ShapesSample(image, corners, valid, primitive)

    def write(self, folder, n: int, start: int = 0) -> list[Path]:
        """Items start .. start + n - 1 as `<index>.png` + `<index>.npy` (corners), to look at."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for index in range(start, start + n):
            item = self.sample(index)
            path = folder / f"{index:06d}.png"
            if not cv2.imwrite(str(path), item.image):
                raise OSError(f"could not write {path}")
            np.save(folder / f"{index:06d}.npy", item.corners)
            written.append(path)
        return written


# --- detector / sub-pixel targets ----------------------------------------------------------------


def corner_heatmap(corners, height: int, width: int, rng=None):
    """SuperPoint's 8x8-cell labels and the sub-pixel targets of the labelled corners.

    A corner at x maps to pixel column c = floor(x + 0.5) (round half up, so a corner on a pixel
    boundary goes right/down) and offset dx = x - c in [-0.5, 0.5); same for y. Within its cell
    (i, j) = (r // 8, c // 8) its label is (r % 8) * 8 + (c % 8). A cell with several corners
    takes one of them at random (SuperPoint's convention), a cell with none is 64 (dustbin).
    Corners whose pixel lies outside the image are ignored.

    Returns labels (H/8, W/8) int64 and offsets (H/8, W/8, 2) float32 (dx, dy of the chosen
    corner, 0 in dustbin cells). The corner's pixel is (8 j + label % 8, 8 i + label // 8).
    `rng`: a numpy Generator or a seed (None = 0), so labels are reproducible.
    """
    if height % CELL or width % CELL:
        raise ValueError(f"height and width must be multiples of {CELL}, got {height}x{width}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    hc, wc = height // CELL, width // CELL
    xy = np.asarray(corners, np.float64).reshape(-1, 2)
    pixel = np.floor(xy + 0.5).astype(np.int64)
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < width) & (pixel[:, 1] >= 0) & \
        (pixel[:, 1] < height)
    xy, pixel = xy[inside], pixel[inside]
    cell = (pixel[:, 1] // CELL) * wc + pixel[:, 0] // CELL
    # a random key per corner; the first corner of each cell in (cell, key) order wins
    order = np.lexsort((rng.random(len(cell)), cell))
    cells, first = np.unique(cell[order], return_index=True)
    chosen = order[first]
    labels = np.full(hc * wc, DUSTBIN, np.int64)
    labels[cells] = (pixel[chosen, 1] % CELL) * CELL + pixel[chosen, 0] % CELL
    offsets = np.zeros((hc * wc, 2), np.float32)
    offsets[cells] = xy[chosen] - pixel[chosen]
    return labels.reshape(hc, wc), offsets.reshape(hc, wc, 2)
