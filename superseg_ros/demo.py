"""`make demo`: run the extractor on a scene the project renders itself and write an overlay.

Uses the bundled model when one ships in models/; until then an explicitly labelled randomly
initialised network (its keypoints show the pipeline works, not what a trained model finds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import RANDOM, bundled_model_path
from .cli import extract


def render_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB street-like scene: facades with windows, a checkerboard, a road."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), (150, 180, 215), np.uint8)  # sky
    horizon = height // 2
    cv2.rectangle(img, (0, horizon), (width, height), (90, 90, 95), -1)  # road
    cv2.fillPoly(img, [np.array([[width // 2 - 8, horizon], [width // 2 + 8, horizon],
                                 [width // 2 + 40, height], [width // 2 - 40, height]])],
                 (230, 230, 230))
    x = 0
    while x < width:  # facades of random widths and heights, with window grids
        w, h = int(rng.integers(70, 140)), int(rng.integers(height // 5, horizon - 10))
        colour = tuple(int(c) for c in rng.integers(60, 200, 3))
        cv2.rectangle(img, (x, horizon - h), (x + w, horizon), colour, -1)
        for wy in range(horizon - h + 12, horizon - 20, 28):
            for wx in range(x + 10, x + w - 18, 24):
                cv2.rectangle(img, (wx, wy), (wx + 12, wy + 16), (40, 50, 70), -1)
        x += w + int(rng.integers(0, 12))
    cell = max(8, width // 40)  # a calibration-board-like patch on the road
    x0, y0 = width // 8, horizon + height // 8
    for i in range(4):
        for j in range(6):
            if (i + j) % 2 == 0:
                cv2.rectangle(img, (x0 + j * cell, y0 + i * cell),
                              (x0 + (j + 1) * cell, y0 + (i + 1) * cell), (20, 20, 20), -1)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=Path("demo_output"))
    p.add_argument("--input", type=Path, help="your own image or folder (default: rendered scene)")
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    source = args.input
    if source is None:
        source = args.output / "scene.png"
        cv2.imwrite(str(source), cv2.cvtColor(render_scene(), cv2.COLOR_RGB2BGR))
    model = None if bundled_model_path() else RANDOM
    if model == RANDOM:
        print("demo: no trained model ships in models/ yet, so this demo runs a RANDOMLY "
              "INITIALISED network (labelled as such on the overlay)")
    code = extract.main([*(["--model", model] if model else []), "--input", str(source),
                         "--output", str(args.output), "--overlay", "--keep-unstable"])
    if code == 0:
        overlays = sorted(args.output.glob("*_overlay.png"))
        print("demo: overlay written to " + ", ".join(map(str, overlays)))
    return code


if __name__ == "__main__":
    sys.exit(main())
