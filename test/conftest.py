import numpy as np
import pytest
import torch

from superseg_ros.network import SuperSegmentation

# Small widths keep every test on the CPU fast while exercising the same code paths.
TINY = {"encoder": "vgg", "encoder_width": 8, "head_channels": 16, "descriptor_dim": 32,
        "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return SuperSegmentation(TINY).eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
