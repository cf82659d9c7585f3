"""FrameProcessor: scaled inference, results mapped back to the input resolution."""

import numpy as np
import pytest

from superseg_ros.config import ConfigError
from superseg_ros.extractor import Extractor
from superseg_ros.frame_processor import FrameProcessor

from conftest import BUILDING, CAR, ImageAsHeatmap


class PinholeCamera:
    """Zero-distortion camera: the frame processor only needs these two methods."""

    def __init__(self, fx, fy, cx, cy, width, height):
        self.k, self.size = (fx, fy, cx, cy), (width, height)

    def check_image_size(self, width, height):
        if (width, height) != self.size:
            raise ValueError(f"CameraInfo is {self.size}, image is {(width, height)}")

    def normalized_coordinates(self, xy):
        fx, fy, cx, cy = self.k
        return (xy - [cx, cy]) / [fx, fy]


def block_image(h, w, blocks):
    img = np.zeros((h, w), np.float32)
    for x, y, v in blocks:  # 2x2 blocks: one network pixel at half resolution
        img[y:y + 2, x:x + 2] = v
    return img


@pytest.mark.parametrize("kwargs", [{"scale": 0.5}, {"max_side": 40}])
def test_scaled_input_gives_coordinates_in_the_original_frame(kwargs):
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off", "subpixel": False,
                                             "remove_borders": 0, "nms_radius": 1})
    processor = FrameProcessor(extractor, **kwargs)
    result = processor.process(block_image(48, 80, [(10, 20, 0.9), (60, 30, 0.8)]))
    assert result.network_size == (24, 40)
    # block (10..11, 20..21) is network pixel (5, 10), whose centre is input (10.5, 20.5)
    np.testing.assert_allclose(result.keypoints, [[10.5, 20.5], [60.5, 30.5]])
    assert np.isnan(result.normalized).all()  # no camera


def test_masks_come_back_at_input_resolution():
    extractor = Extractor(ImageAsHeatmap(class_left=CAR, class_right=BUILDING),
                          {"keep_unstable": True})
    result = FrameProcessor(extractor, scale=0.5).process(block_image(48, 80, [(60, 30, 0.9)]))
    assert result.stability_mask.shape == (48, 80) and result.group_map.shape == (48, 80)
    assert not result.stability_mask[:, :30].any() and result.stability_mask[:, 50:].all()


def test_normalised_coordinates_from_the_camera():
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off", "subpixel": False,
                                             "remove_borders": 0})
    camera = PinholeCamera(100.0, 50.0, 40.0, 24.0, 80, 48)
    result = FrameProcessor(extractor).process(block_image(48, 80, [(60, 30, 0.9)]), camera)
    np.testing.assert_allclose(result.normalized, (result.keypoints - [40, 24]) / [100, 50],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="CameraInfo is"):
        FrameProcessor(extractor).process(block_image(40, 80, []), camera)


def test_invalid_scale_settings():
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off"})
    with pytest.raises(ConfigError, match="scale"):
        FrameProcessor(extractor, scale=0)
    with pytest.raises(ConfigError, match="max_side"):
        FrameProcessor(extractor, max_side=-1)
