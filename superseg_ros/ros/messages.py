"""FrameResult -> superseg_msgs messages (arrays are assigned from numpy in one go)."""

from __future__ import annotations

import array

import numpy as np

from ..frame_processor import FrameResult
from .image_conversion import make_image


def as_array(values: np.ndarray, typecode: str) -> array.array:
    """rclpy copies an array.array of the field's typecode as is, but converts a numpy array
    element by element (256k descriptor floats: ~30 ms vs ~0.1 ms)."""
    dtype = {"f": np.float32, "B": np.uint8}[typecode]
    out = array.array(typecode)
    out.frombytes(np.ascontiguousarray(values, dtype).tobytes())
    return out


def keypoints_msg(result: FrameResult, header, width: int, height: int):
    from superseg_msgs.msg import Keypoints

    msg = Keypoints(header=header, width=int(width), height=int(height))
    xy, normalized = result.keypoints, result.normalized
    msg.x, msg.y = as_array(xy[:, 0], "f"), as_array(xy[:, 1], "f")
    msg.score = as_array(result.scores, "f")
    msg.class_id, msg.group_id = as_array(result.labels, "B"), as_array(result.groups, "B")
    msg.stable = result.stable.tolist()  # bool[] is a Python list in rclpy
    msg.x_normalized = as_array(normalized[:, 0], "f")
    msg.y_normalized = as_array(normalized[:, 1], "f")
    return msg


def descriptors_msg(result: FrameResult, header):
    from superseg_msgs.msg import Descriptors

    count, dim = result.descriptors.shape
    return Descriptors(header=header, dimension=dim, count=count,
                       data=as_array(result.descriptors, "f"))


def stability_mask_msg(result: FrameResult, header, semantics: dict, stable_groups, threshold):
    """`semantics`: the model's class table (classes, groups, class_to_group)."""
    from superseg_msgs.msg import StabilityMask

    return StabilityMask(header=header, mask=mask_image(result, header),
                         group_names=list(semantics["groups"]),
                         class_names=list(semantics["classes"]),
                         class_groups=as_array(semantics["class_to_group"], "B"),
                         stable_groups=as_array(stable_groups, "B"),
                         threshold=float(threshold))


def mask_image(result: FrameResult, header):
    return make_image(result.stability_mask.astype(np.uint8) * 255, "mono8", header)
