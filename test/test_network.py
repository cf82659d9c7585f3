"""The network: shapes for every encoder, config errors, torchvision-name ImageNet loading."""

import pytest
import torch

from superseg_ros.config import ConfigError
from superseg_ros.network import ENCODERS, SuperSegmentation


@pytest.mark.parametrize("encoder", ENCODERS)
def test_output_shapes_for_every_encoder(encoder):
    model = SuperSegmentation({"encoder": encoder, "descriptor_dim": 64, "num_classes": 7},
                              semantics={"classes": [str(i) for i in range(7)],
                                         "groups": ["a", "b"], "class_to_group": [0] * 4 + [1] * 3})
    model.eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 48, 80))
    assert out["logits"].shape == (2, 65, 6, 10)
    assert out["heatmap"].shape == (2, 48, 80)
    assert out["descriptors"].shape == (2, 64, 6, 10)
    assert out["segmentation"].shape == (2, 7, 12, 20)
    assert out["offsets"].shape == (2, 2, 48, 80)
    assert torch.allclose(out["descriptors"].norm(dim=1), torch.ones(2, 6, 10), atol=1e-5)
    # the heatmap is the softmax without the dustbin: each 8x8 cell sums to 1 - P(dustbin)
    cell_sums = out["heatmap"].reshape(2, 6, 8, 10, 8).sum((2, 4))
    assert torch.allclose(cell_sums, 1 - out["logits"].softmax(1)[:, 64], atol=1e-5)
    assert out["offsets"].abs().max() <= model.config["subpixel_max_offset"]


def test_heatmap_is_depth_to_space_of_the_cell_logits(tiny_model):
    with torch.inference_mode():
        out = tiny_model(torch.rand(1, 3, 16, 24))
    prob = out["logits"].softmax(1)
    # channel k of cell (i, j) is pixel (8i + k // 8, 8j + k % 8)
    for k in (0, 7, 9, 63):
        assert torch.allclose(out["heatmap"][0, 8 + k // 8, 16 + k % 8], prob[0, k, 1, 2])


def test_semantics_can_be_skipped(tiny_model):
    with torch.inference_mode():
        assert "segmentation" not in tiny_model(torch.rand(1, 3, 32, 32), semantics=False)


def test_input_must_be_padded_to_a_multiple_of_eight(tiny_model):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_model(torch.rand(1, 3, 30, 32))


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown model key 'encodr'.*did you mean 'encoder'"):
        SuperSegmentation({"encodr": "vgg"})
    with pytest.raises(ConfigError, match="model.encoder must be one of"):
        SuperSegmentation({"encoder": "resnet101"})


def test_class_table_must_match_num_classes():
    with pytest.raises(ConfigError, match="predicts 5 classes"):
        SuperSegmentation({"num_classes": 5})


def torchvision_resnet_state_dict(layers, bottleneck, width=64):
    """torchvision's ResNet state_dict keys and shapes, written out from its architecture
    (torchvision is not installed here), including fc and num_batches_tracked."""
    sd = {}

    def bn(prefix, c):
        sd.update({f"{prefix}.weight": torch.randn(c), f"{prefix}.bias": torch.randn(c),
                   f"{prefix}.running_mean": torch.randn(c), f"{prefix}.running_var": torch.rand(c),
                   f"{prefix}.num_batches_tracked": torch.tensor(7)})

    sd["conv1.weight"] = torch.randn(width, 3, 7, 7)
    bn("bn1", width)
    expansion, inplanes = (4 if bottleneck else 1), width
    for li, blocks in enumerate(layers, start=1):
        planes = width * 2 ** (li - 1)
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if bottleneck:
                shapes = [(planes, inplanes, 1, 1), (planes, planes, 3, 3),
                          (planes * 4, planes, 1, 1)]
            else:
                shapes = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            for ci, shape in enumerate(shapes, start=1):
                sd[f"{p}.conv{ci}.weight"] = torch.randn(shape)
                bn(f"{p}.bn{ci}", shape[0])
            if b == 0 and (li > 1 or inplanes != planes * expansion):
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = torch.randn(1000, inplanes)
    sd["fc.bias"] = torch.randn(1000)
    return sd


@pytest.mark.parametrize("name,layers,bottleneck", [("resnet18", (2, 2, 2, 2), False),
                                                    ("resnet34", (3, 4, 6, 3), False),
                                                    ("resnet50", (3, 4, 6, 3), True)])
def test_torchvision_imagenet_state_dict_loads_by_name(tmp_path, name, layers, bottleneck):
    model = SuperSegmentation({"encoder": name})
    state = torchvision_resnet_state_dict(layers, bottleneck)
    path = tmp_path / f"{name}-imagenet.pth"
    torch.save(state, path)
    report = model.load_imagenet_encoder(str(path))
    assert report == {"missing": [], "unexpected": ["fc.bias", "fc.weight"]}
    assert torch.equal(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_var, state["bn1.running_var"])
    # DeepLab-style dilation instead of stride: still stride 8 with the ImageNet weights
    assert model.encoder.layer4[0].conv1.stride == (1, 1) if not bottleneck else \
        model.encoder.layer4[0].conv2.stride == (1, 1)


def test_imagenet_weights_of_the_wrong_architecture_are_refused():
    model = SuperSegmentation({"encoder": "resnet18", "encoder_width": 32})
    with pytest.raises(ValueError, match="do not fit this encoder"):
        model.load_imagenet_encoder(torchvision_resnet_state_dict((2, 2, 2, 2), False))
    with pytest.raises(ConfigError, match="needs a ResNet"):
        SuperSegmentation({"encoder": "vgg"}).load_imagenet_encoder({})


def test_unreadable_imagenet_weights_say_what_the_file_is(tmp_path):
    """A pickled module is refused without relaying PyTorch's advice to unpickle code."""
    path = tmp_path / "resnet18.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    model = SuperSegmentation({"encoder": "resnet18", "encoder_width": 8})
    with pytest.raises(ValueError, match="pickled nn.Module") as info:
        model.load_imagenet_encoder(str(path))
    assert "weights_only" not in str(info.value)
    with pytest.raises(ValueError, match="no such file"):
        model.load_imagenet_encoder(str(tmp_path / "missing.pth"))
