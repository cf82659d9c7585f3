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


@pytest.mark.parametrize("preset", ["dilated", "lean"])
@pytest.mark.parametrize("name,layers,bottleneck", [("resnet18", (2, 2, 2, 2), False),
                                                    ("resnet34", (3, 4, 6, 3), False),
                                                    ("resnet50", (3, 4, 6, 3), True)])
def test_torchvision_imagenet_state_dict_loads_by_name(tmp_path, name, layers, bottleneck,
                                                       preset):
    model = SuperSegmentation({"preset": preset, "encoder": name, "encoder_width": 64})
    state = torchvision_resnet_state_dict(layers, bottleneck)
    path = tmp_path / f"{name}-imagenet.pth"
    torch.save(state, path)
    report = model.load_imagenet_encoder(str(path))
    assert report == {"missing": [], "unexpected": ["fc.bias", "fc.weight"]}
    assert torch.equal(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_var, state["bn1.running_var"])
    # dilated: DeepLab-style dilation instead of stride, still stride 8 with the ImageNet
    # weights; lean: torchvision's own strides (the neck brings them back to stride 8)
    conv = model.encoder.layer4[0].conv2 if bottleneck else model.encoder.layer4[0].conv1
    assert conv.stride == ((1, 1) if preset == "dilated" else (2, 2))
    with torch.inference_mode():
        out = model.eval()(torch.rand(1, 3, 64, 96))
    assert out["descriptors"].shape[-2:] == (8, 12) and out["segmentation"].shape[-2:] == (16, 24)


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


# --- architecture presets ----------------------------------------------------------------------

TINY_LEAN = {"encoder_width": 8, "neck_channels": 16, "head_channels": 16, "descriptor_dim": 32,
             "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16}


def test_the_default_architecture_is_the_lean_preset():
    model = SuperSegmentation()
    conf = model.config
    assert conf["preset"] == "lean" and not conf["encoder_dilation"] and conf["separable"]
    assert (conf["aspp_stride"], conf["decoder_stride"]) == (16, 8)
    dilated = SuperSegmentation({"preset": "dilated", "encoder_width": 32, "head_channels": 128,
                                 "aspp_channels": 128, "decoder_channels": 128})

    def multiply_adds(m):  # conv multiply-adds per output pixel of a 480x640 input
        total, x = 0, torch.rand(1, 3, 480, 640)

        def count(module, _, out):
            nonlocal total
            k = module.weight[0].numel()  # cin/groups * kh * kw
            total += out.numel() * k
        hooks = [c.register_forward_hook(count) for c in m.modules()
                 if isinstance(c, torch.nn.Conv2d)]
        with torch.inference_mode():
            m.eval()(x)
        for h in hooks:
            h.remove()
        return total
    # the point of the preset: far fewer multiply-adds than the old architecture (~5x here)
    assert multiply_adds(model) * 4 < multiply_adds(dilated)


@pytest.mark.parametrize("height,width", [(104, 136), (72, 200)])
def test_lean_outputs_keep_the_contract_at_odd_cell_counts(height, width):
    """13x17 and 9x25 cells: the neck's stride-16/32 maps are ceil-sized and resized back."""
    model = SuperSegmentation(TINY_LEAN).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, height, width))
    assert out["logits"].shape == (2, 65, height // 8, width // 8)
    assert out["descriptors"].shape == (2, 32, height // 8, width // 8)
    assert out["segmentation"].shape == (2, 19, height // 4, width // 4)
    assert out["offsets"].shape == (2, 2, height, width) and out["heatmap"].shape == (2, height,
                                                                                      width)


def test_a_checkpoint_from_before_presets_loads_as_the_dilated_architecture(tmp_path):
    """Old files have no `preset` in their config: they must build the dilated network they
    were trained as, not the new default."""
    from superseg_ros.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    old = SuperSegmentation({"preset": "dilated", "encoder_width": 8, "head_channels": 16,
                             "descriptor_dim": 32, "aspp_channels": 16,
                             "decoder_channels": 16}).eval()
    path = save_checkpoint(old, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["preset"]
    for key in ("encoder_dilation", "neck_channels", "aspp_stride", "decoder_stride",
                "separable"):  # keys that did not exist then
        del payload["model_config"][key]
    torch.save(payload, path)
    loaded = load_model(path)
    assert loaded.config["preset"] == "dilated" and loaded.config["encoder_dilation"]
    x = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(loaded(x)["descriptors"], old(x)["descriptors"])


@pytest.mark.parametrize("config,message", [
    ({"encoder": "vgg", "encoder_dilation": False}, "needs a ResNet"),
    ({"preset": "lean", "neck_channels": 0}, "neck_channels > 0"),
    ({"preset": "dilated", "aspp_stride": 16}, "need encoder_dilation false"),
    ({"preset": "fast"}, "model.preset must be one of"),
])
def test_inconsistent_architectures_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        SuperSegmentation(config)


def test_other_encoders_take_the_lean_heads_without_the_resnet_neck():
    model = SuperSegmentation({"encoder": "mobilenet", "encoder_width": 8})
    assert model.config["encoder_dilation"] and model.config["neck_channels"] == 0
    assert model.config["separable"]  # the lean ASPP and decoder still apply


def test_heatmap_centroid_matches_a_brute_force_window_mean():
    from superseg_ros.network.heads import heatmap_centroid
    torch.manual_seed(0)
    heatmap = torch.rand(2, 9, 11)
    r = 2
    got = heatmap_centroid(heatmap, r)
    for b, y, x in ((0, 0, 0), (0, 4, 5), (1, 8, 10), (1, 3, 1)):
        weight = sx = sy = 0.0
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if 0 <= y + dy < 9 and 0 <= x + dx < 11:  # zero outside the image
                    v = float(heatmap[b, y + dy, x + dx])
                    weight, sx, sy = weight + v, sx + v * dx, sy + v * dy
        assert got[b, :, y, x].tolist() == pytest.approx([sx / weight, sy / weight], abs=1e-5)


def test_subpixel_window_adds_the_heatmap_centroid_to_the_head_offsets():
    from superseg_ros.network.heads import heatmap_centroid
    torch.manual_seed(0)
    plain = SuperSegmentation({"encoder": "vgg", "head_channels": 32, "descriptor_dim": 32}).eval()
    windowed = SuperSegmentation({"encoder": "vgg", "head_channels": 32, "descriptor_dim": 32,
                                  "subpixel_window": 2}).eval()
    windowed.load_state_dict(plain.state_dict())  # no new weights
    image = torch.rand(1, 3, 32, 40)
    with torch.inference_mode():
        a, b = plain(image, semantics=False), windowed(image, semantics=False)
    assert torch.allclose(b["offsets"], a["offsets"] + heatmap_centroid(a["heatmap"], 2),
                          atol=1e-6)
    assert b["offsets"].abs().max() <= 1.0 + 2


def test_subpixel_window_must_be_a_non_negative_integer():
    with pytest.raises(ConfigError, match="subpixel_window must be an integer >= 0"):
        SuperSegmentation({"subpixel_window": -1})
    with pytest.raises(ConfigError, match="subpixel_window must be int"):
        SuperSegmentation({"subpixel_window": 1.5})


def test_without_the_subpixel_head_the_heatmap_centroid_alone_refines():
    from superseg_ros.network.heads import heatmap_centroid
    torch.manual_seed(0)
    small = {"encoder": "vgg", "head_channels": 32, "descriptor_dim": 32, "subpixel_window": 3}
    with_head = SuperSegmentation(small).eval()
    centroid_only = SuperSegmentation({**small, "subpixel_head": False}).eval()
    assert centroid_only.subpixel is None
    state = with_head.state_dict()
    assert sorted(set(state) - set(centroid_only.state_dict())) == sorted(
        k for k in state if k.startswith("subpixel."))  # the head's weights, nothing else
    centroid_only.load_state_dict({k: v for k, v in state.items()
                                   if not k.startswith("subpixel.")})
    image = torch.rand(1, 3, 32, 40)
    with torch.inference_mode():
        a, b = with_head(image, semantics=False), centroid_only(image, semantics=False)
    assert torch.equal(b["offsets"], heatmap_centroid(b["heatmap"], 3))
    assert not torch.equal(a["offsets"], b["offsets"])  # the head did move the peaks
    for key in ("heatmap", "descriptors"):
        assert torch.equal(a[key], b[key])
    assert b["offsets"].abs().max() <= 3


def test_without_the_subpixel_head_a_centroid_window_is_required():
    with pytest.raises(ConfigError, match="subpixel_head false needs model.subpixel_window > 0"):
        SuperSegmentation({"subpixel_head": False})
