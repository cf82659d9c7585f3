"""Pixel -> normalised camera coordinates from a sensor_msgs/CameraInfo, without rclpy.

    model = CameraModel.from_camera_info(info_msg)
    model.check_image_size(image.shape[1], image.shape[0])
    xy_norm = model.normalized_coordinates(keypoints_xy)   # (N, 2) float32, z = 1 plane

Pixel convention: (0, 0) is the centre of the top-left pixel. ROS CameraInfo and OpenCV share it,
and so do the extractor's keypoints, so pixels go to OpenCV unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..homography import scaling_matrix


class CameraInfoError(ValueError):
    """A CameraInfo that cannot be used, or one that does not belong to the image. `reason`:
    camera_info_invalid, or camera_info_size_mismatch when it is for another image size."""

    def __init__(self, message: str, reason: str = "camera_info_invalid"):
        super().__init__(message)
        self.reason = reason


# ROS distortion_model -> (OpenCV family, allowed numbers of coefficients). An empty D means none.
_MODELS = {
    "plumb_bob": ("standard", (4, 5, 8, 12, 14)),
    "rational_polynomial": ("standard", (8, 12, 14)),
    "equidistant": ("fisheye", (4,)),
}
# Iterate the undistortion to convergence: OpenCV's default (5 iterations) leaves ~0.02 px of
# re-projection error at the corners of a k1 = -0.2 lens; this reaches ~1e-12 px.
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


@dataclass(frozen=True, eq=False)  # eq on numpy fields would be ambiguous
class CameraModel:
    K: np.ndarray               # (3, 3) float64 intrinsics
    D: np.ndarray               # (n,) float64 distortion coefficients, OpenCV order
    model: str                  # "standard" (cv2) | "fisheye" (cv2.fisheye)
    width: int = 0              # 0: unknown
    height: int = 0
    distortion_model: str = ""  # the ROS name, for messages

    @classmethod
    def from_camera_info(cls, msg, rectified: bool = False) -> "CameraModel":
        """Build from a sensor_msgs/CameraInfo (or any object with k, d, distortion_model,
        width, height and optionally p, binning_x/y, roi).

        rectified=True is for images already rectified by image_proc (image_rect topics): their
        intrinsics are P's left 3x3 and there is no distortion; K and D describe the raw image.
        """
        try:
            k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
            p = np.asarray(getattr(msg, "p", np.zeros(12)), dtype=np.float64).reshape(3, 4)
            d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise CameraInfoError(f"CameraInfo k/p/d have the wrong size or type ({exc})") from None
        if not (np.isfinite(k).all() and np.isfinite(d).all() and np.isfinite(p).all()):
            raise CameraInfoError("CameraInfo k, d or p contains NaN or infinity")
        _check_full_resolution(msg)
        name = str(msg.distortion_model)
        width, height = int(msg.width), int(msg.height)
        if rectified:
            return cls._validated(p[:, :3].copy(), np.zeros(0), "standard", width, height,
                                  f"{name} (rectified, P)", source="P")
        if name == "":
            if d.any():
                raise CameraInfoError("CameraInfo distortion_model is empty but D is non-zero "
                                      f"({d.tolist()}); set it to one of {', '.join(_MODELS)}")
            family = "standard"  # simulators often leave the model empty with no distortion
        elif name in _MODELS:
            family, lengths = _MODELS[name]
            if d.size and d.size not in lengths:
                raise CameraInfoError(f"distortion_model '{name}' needs {_or(lengths)} D "
                                      f"coefficients, got {d.size}")
        else:
            raise CameraInfoError(f"unknown distortion_model '{name}' (supported: "
                                  f"{', '.join(_MODELS)})")
        if family == "fisheye" and d.size == 0:
            d = np.zeros(4)
        return cls._validated(k, d, family, width, height, name, source="K")

    @classmethod
    def _validated(cls, k, d, family, width, height, name, source) -> "CameraModel":
        if not k.any():
            raise CameraInfoError(f"CameraInfo {source} is all zeros: the camera is not calibrated")
        if k[0, 0] <= 0 or k[1, 1] <= 0 or k[2, 2] != 1 or k[2, 0] or k[2, 1]:
            raise CameraInfoError(f"CameraInfo {source} is not an intrinsic matrix (need fx, fy "
                                  f"> 0 and last row 0 0 1): {k.reshape(-1).tolist()}")
        k.setflags(write=False)
        d.setflags(write=False)
        return cls(k, d, family, width, height, name)

    def check_image_size(self, width: int, height: int) -> None:
        """Raise CameraInfoError if the image is not the calibrated size (0 in CameraInfo: any)."""
        if self.width and self.height and (int(width), int(height)) != (self.width, self.height):
            raise CameraInfoError(
                f"image is {width}x{height} but its CameraInfo is {self.width}x{self.height}: "
                "pair the image with its own camera_info topic, or scale the model if the image "
                "was resized",
                reason="camera_info_size_mismatch")

    def normalized_coordinates(self, points_xy: np.ndarray) -> np.ndarray:
        """(N, 2) pixel x, y -> (N, 2) float32 undistorted normalised coordinates (x/z, y/z)."""
        pts = np.asarray(points_xy, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must be an (N, 2) array of x, y pixels, got {pts.shape}")
        if len(pts) == 0:
            return np.zeros((0, 2), np.float32)
        src = np.ascontiguousarray(pts).reshape(-1, 1, 2)
        # No R and no P: OpenCV then returns normalised coordinates on the z = 1 plane.
        if self.model == "fisheye":
            out = cv2.fisheye.undistortPoints(src, self.K, self.D, criteria=_CRITERIA)
        else:
            out = cv2.undistortPoints(src, self.K, self.D, criteria=_CRITERIA)
        return out.reshape(-1, 2).astype(np.float32)

    def scaled(self, sx: float, sy: float | None = None) -> "CameraModel":
        """The model for the image resized by sx (width) and sy (height, default sx).

        Distortion acts on normalised coordinates, so only K changes; with pixel centres at
        integers, a pixel edge at -0.5 stays at -0.5, hence c' = (c + 0.5) * s - 0.5.
        """
        sy = sx if sy is None else sy
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scale factors must be > 0, got {sx}, {sy}")
        k = scaling_matrix(sx, sy) @ self.K
        k.setflags(write=False)
        return CameraModel(k, self.D, self.model, round(self.width * sx), round(self.height * sy),
                           self.distortion_model)


def _check_full_resolution(msg) -> None:
    """Binning or an ROI changes which pixels K refers to; refuse rather than be silently wrong."""
    bx, by = int(getattr(msg, "binning_x", 0)), int(getattr(msg, "binning_y", 0))
    if bx > 1 or by > 1:
        raise CameraInfoError(f"CameraInfo binning {bx}x{by} is not supported (only full "
                              "resolution); publish unbinned images or a matching CameraInfo")
    roi = getattr(msg, "roi", None)
    if roi is None:
        return
    x0, y0, w, h = (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
    full = (w, h) in ((0, 0), (int(msg.width), int(msg.height)))
    if x0 or y0 or not full:
        raise CameraInfoError(f"CameraInfo roi (x={x0}, y={y0}, {w}x{h}) is not supported (only "
                              "the full image)")


def _or(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
