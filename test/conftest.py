import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ros_helpers  # imported first thing so every test process applies loopback-only DDS
from superseg_ros.network import SuperSegmentation

# Small widths keep every test on the CPU fast while exercising the same code paths.
TINY = {"encoder": "vgg", "encoder_width": 8, "head_channels": 16, "descriptor_dim": 32,
        "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return SuperSegmentation(TINY).eval()


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after): tiny models run faster without
    OpenMP synchronisation, and a test never competes with itself for the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


CAR, BUILDING = 13, 2


class ImageAsHeatmap(SuperSegmentation):
    """Heatmap = channel 0 of the input; offsets, descriptors and class logits set by the test."""

    def __init__(self, offset=(0.0, 0.0), class_left=BUILDING, class_right=BUILDING):
        super().__init__(TINY)
        self.offset, self.classes = offset, (class_left, class_right)
        self.trained_heads = {h: True for h in self.trained_heads}

    def forward(self, image, semantics=True):
        b, _, h, w = image.shape
        gen = torch.Generator().manual_seed(1)
        desc = F.normalize(torch.randn(b, 32, h // 8, w // 8, generator=gen), dim=1)
        offsets = torch.tensor(self.offset, dtype=torch.float32).view(1, 2, 1, 1).expand(b, 2, h, w)
        out = {"heatmap": image[:, 0], "descriptors": desc, "offsets": offsets.clone()}
        if semantics:
            seg = torch.zeros(b, 19, h // 4, w // 4)
            seg[:, self.classes[0], :, : w // 8] = 10.0   # left half of the image
            seg[:, self.classes[1], :, w // 8:] = 10.0    # right half
            out["segmentation"] = seg
        return out


# --- ROS 2 ---------------------------------------------------------------------------------------


@pytest.fixture
def rclpy_node():
    """A node on its own initialised rclpy context (`rclpy_node.context`), loopback DDS only;
    node and context are shut down after the test."""
    with ros_helpers.ros_node(f"superseg_test_{os.getpid()}") as node:
        yield node
