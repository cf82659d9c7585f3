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


# --- CamVid fixture ------------------------------------------------------------------------------

# SegNet CamVid label values (semantics.CAMVID_LABELS)
CV_SKY, CV_BUILDING, CV_ROAD, CV_CAR, CV_PEDESTRIAN, CV_UNLABELLED = 0, 1, 3, 8, 9, 11


def camvid_frame(index: int, height: int = 48, width: int = 64):
    """(RGB image, label PNG values) of a tiny street-like frame: sky on top, building in the
    middle, road at the bottom, a car (a textured box) whose position depends on `index`, and an
    unlabelled strip at the right edge."""
    rng = np.random.default_rng(index)
    image = np.zeros((height, width, 3), np.uint8)
    labels = np.full((height, width), CV_BUILDING, np.uint8)
    labels[: height // 4] = CV_SKY
    labels[3 * height // 4:] = CV_ROAD
    image[labels == CV_SKY] = (150, 190, 240)
    image[labels == CV_ROAD] = (90, 90, 90)
    building = labels == CV_BUILDING
    image[building] = rng.integers(100, 200, (int(building.sum()), 3))
    left = 4 + (index * 7) % (width // 2)
    top, bottom = height // 2, 3 * height // 4 + 4
    labels[top:bottom, left:left + 16] = CV_CAR
    image[top:bottom, left:left + 16] = (200, 30, 30)
    image[top + 3:top + 6, left + 2:left + 14] = (20, 20, 20)   # windows: corners to detect
    labels[:, -3:] = CV_UNLABELLED
    return image, labels


def make_camvid(root, n_train: int = 3, n_val: int = 2, height: int = 48, width: int = 64,
                pair_lists: bool = True):
    """A tiny CamVid in the SegNet layout: train/, trainannot/, val/, valannot/ (+ train.txt,
    val.txt). Returns the root."""
    import cv2
    from pathlib import Path
    root = Path(root)
    index = 0
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            image, labels = camvid_frame(index, height, width)
            index += 1
            name = f"0001TP_{i * 30:06d}.png" if split == "train" else f"0016E5_{i * 2:05d}.png"
            cv2.imwrite(str(root / split / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"{split}annot" / name), labels)
            lines.append(f"{split}/{name} {split}annot/{name}")
        if pair_lists:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


# --- ROS 2 ---------------------------------------------------------------------------------------


@pytest.fixture
def rclpy_node():
    """A node on its own initialised rclpy context (`rclpy_node.context`), loopback DDS only;
    node and context are shut down after the test."""
    with ros_helpers.ros_node(f"superseg_test_{os.getpid()}") as node:
        yield node
