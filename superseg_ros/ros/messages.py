"""FrameResult -> superseg_msgs messages (arrays are assigned from numpy in one go)."""

from __future__ import annotations

import numpy as np

from ..frame_processor import FrameResult
from .image_conversion import make_image


def keypoints_msg(result: FrameResult, header, width: int, height: int):
    from superseg_msgs.msg import Keypoints

    msg = Keypoints(header=header, width=int(width), height=int(height))
    xy, normalized = result.keypoints, result.normalized
    msg.x, msg.y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    msg.score = np.ascontiguousarray(result.scores, np.float32)
    msg.class_id = np.ascontiguousarray(result.labels, np.uint8)
    msg.group_id = np.ascontiguousarray(result.groups, np.uint8)
    msg.stable = result.stable.tolist()  # bool[] is a Python list in rclpy
    msg.x_normalized = np.ascontiguousarray(normalized[:, 0])
    msg.y_normalized = np.ascontiguousarray(normalized[:, 1])
    return msg


def descriptors_msg(result: FrameResult, header):
    from superseg_msgs.msg import Descriptors

    count, dim = result.descriptors.shape
    return Descriptors(header=header, dimension=dim, count=count,
                       data=np.ascontiguousarray(result.descriptors, np.float32).reshape(-1))


def stability_mask_msg(result: FrameResult, header, group_names, stable_groups, threshold):
    from superseg_msgs.msg import StabilityMask

    return StabilityMask(header=header, mask=mask_image(result, header),
                         group_names=list(group_names),
                         stable_groups=np.asarray(stable_groups, np.uint8),
                         threshold=float(threshold))


def mask_image(result: FrameResult, header):
    return make_image(result.stability_mask.astype(np.uint8) * 255, "mono8", header)
