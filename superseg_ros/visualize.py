"""Pictures a person would rather look at than read: keypoint overlays and stability maps."""

from __future__ import annotations

import cv2
import numpy as np

# BGR colours per stability group: static, flat, dynamic, unstable (then extra groups)
GROUP_COLOURS = np.array([[70, 70, 70], [128, 64, 128], [60, 20, 220], [35, 142, 107],
                          [0, 220, 220], [255, 0, 255]], dtype=np.uint8)
UNKNOWN_COLOUR = np.array([0, 0, 0], dtype=np.uint8)
STABLE_COLOUR, REJECTED_COLOUR = (0, 230, 0), (0, 0, 255)


def colorize_groups(group_map: np.ndarray) -> np.ndarray:
    """(H, W) group ids -> (H, W, 3) BGR image; ids without a colour are black."""
    palette = np.vstack([GROUP_COLOURS, np.repeat(UNKNOWN_COLOUR[None], 256 - len(GROUP_COLOURS),
                                                  axis=0)])
    return palette[group_map.astype(np.uint8)]


def draw_keypoints(image_rgb: np.ndarray, keypoints: np.ndarray, stable: np.ndarray,
                   title: str = "", group_map: np.ndarray | None = None) -> np.ndarray:
    """BGR overlay: stable keypoints as green circles, rejected ones as red crosses.

    With `group_map`, the stability groups are blended underneath. Sub-pixel positions are drawn
    with cv2's fixed-point `shift` so they are not rounded to the pixel grid.
    """
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else \
        cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2BGR)
    if group_map is not None:
        canvas = cv2.addWeighted(canvas, 0.6, colorize_groups(group_map), 0.4, 0)
    shift = 4
    points = np.round(np.asarray(keypoints, np.float64) * (1 << shift)).astype(np.int64)
    radius = max(2, round(min(canvas.shape[:2]) / 200)) << shift
    for (x, y), ok in zip(points, np.asarray(stable, bool)):
        if ok:
            cv2.circle(canvas, (int(x), int(y)), radius, STABLE_COLOUR, 1, cv2.LINE_AA, shift)
        else:
            d = radius * 7 // 10
            cv2.line(canvas, (int(x - d), int(y - d)), (int(x + d), int(y + d)), REJECTED_COLOUR,
                     1, cv2.LINE_AA, shift)
            cv2.line(canvas, (int(x - d), int(y + d)), (int(x + d), int(y - d)), REJECTED_COLOUR,
                     1, cv2.LINE_AA, shift)
    if title:
        put_title(canvas, title)
    return canvas


def put_title(canvas: np.ndarray, text: str) -> None:
    """White text on a black band at the top; shrinks, then wraps at ' | ', to fit the width."""
    font, width = cv2.FONT_HERSHEY_SIMPLEX, canvas.shape[1] - 10
    scale = max(0.4, canvas.shape[1] / 1400)
    lines = [text]
    if cv2.getTextSize(text, font, scale, 1)[0][0] > width:
        lines = text.split(" | ")
        longest = max(lines, key=lambda line: cv2.getTextSize(line, font, scale, 1)[0][0])
        scale = max(0.3, scale * width / max(1, cv2.getTextSize(longest, font, scale, 1)[0][0]))
    (_, h), base = cv2.getTextSize(text, font, scale, 1)
    step = h + base + 4
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], step * len(lines) + 4), (0, 0, 0), -1)
    for i, line in enumerate(lines):
        cv2.putText(canvas, line, (5, h + 4 + i * step), font, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
