"""A fixed-seed fuzz budget per entry point that takes outside bytes (test/fuzz.py has the
strategies and checks; `make fuzz` runs >= 1000 cases each and prints the table). Every case
must end in a correct result or the project's own clear error."""

import pytest

import fuzz

CASES = 25  # per entry point: a few seconds in all; `make fuzz` is the long run


@pytest.mark.parametrize("name", list(fuzz.ENTRY_POINTS))
def test_entry_point_survives_fuzzing(name, one_thread):
    outcomes, crashes = fuzz.fuzz_entry_point(name, CASES)
    assert not crashes, "\n".join(crashes[:5])
    assert sum(outcomes.values()) == CASES
    assert outcomes["correct"] + outcomes["error"] == CASES


def test_a_declared_huge_image_is_refused_before_allocation():
    """100000 x 100000 rgb8 declared with 12 bytes of data: refused at once (30 GB otherwise)."""
    import types

    from superseg_ros.ros.image_conversion import ImageConversionError, compressed_to_array, \
        image_to_array
    msg = types.SimpleNamespace(encoding="rgb8", height=fuzz.HUGE, width=fuzz.HUGE,
                                step=3 * fuzz.HUGE, is_bigendian=False, data=bytes(12))
    with pytest.raises(ImageConversionError, match="truncated"):
        image_to_array(msg)
    for data in (fuzz.png_declaring(fuzz.HUGE, fuzz.HUGE), fuzz.png_declaring(30_000, 30_000),
                 fuzz.jpeg_declaring(30_000, 30_000)):
        with pytest.raises(ImageConversionError, match="declares"):
            compressed_to_array(types.SimpleNamespace(format="png", data=data))


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    from superseg_ros.config import ConfigError, read_parameters
    path = tmp_path / "bomb.yaml"
    path.write_text("superseg_node:\n  ros__parameters:\n" + "".join(
        "    " + line + "\n" for line in fuzz.alias_bomb(30).splitlines()))
    with pytest.raises(ConfigError, match="more than 10000 settings"):
        read_parameters(path)
    deep = tmp_path / "deep.yaml"
    deep.write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_parameters(deep)


def test_a_checkpoint_config_for_a_huge_network_is_refused_without_building_it(tmp_path):
    import io

    import torch

    from superseg_ros.checkpoint import CheckpointError, load_model
    _, payload = fuzz.valid_checkpoint()
    payload = {**payload, "model_config": {**payload["model_config"], "encoder_width": 10**6}}
    path = tmp_path / "huge.pt"
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="do not match the model config"):
        load_model(path)  # a real build would need terabytes


def test_a_damaged_mcap_record_length_is_refused_before_reading(tmp_path):
    from superseg_ros import bags
    files = dict(fuzz.valid_bags()["mcap"])
    name = next(n for n in files if n.endswith(".mcap"))
    data = bytearray(files[name])
    data[16] = 0x14  # the top byte of the header record's u64 length: ~1.4e18 bytes
    folder = tmp_path / "bag"
    folder.mkdir()
    for n, d in files.items():
        (folder / n).write_bytes(bytes(data) if n == name else d)
    with pytest.raises(bags.BagError, match="declares .* bytes, more than"):
        bags.bag_topics(folder)
