"""Bags: superseg-make-bag from folders / Cityscapes / video, reading back with rosbags, summaries,
and superseg-play / superseg-record over real DDS (loopback only, via ros_helpers).

Every fixture is made here (tiny PNGs, a Cityscapes-layout tree, an MJPG video); nothing from
../shared/data is used.
"""

import json
import time

import cv2
import numpy as np
import pytest
import yaml

from superseg_ros import bags
from superseg_ros.cli import make_bag, play, record

START_NS = 1_600_000_000_000_000_000  # fixed first stamp, so periods can be checked exactly
# A real Cityscapes camera JSON (for 2048x1024 images) ...
CAMERA_JSON_FULL = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0,
                                  "yaw": -0.0195, "x": 1.7, "y": 0.1, "z": 1.22},
                    "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}
# ... and the same scaled to the 64x32 test frames (c' = (c + 0.5) / 32 - 0.5).
CAMERA_JSON = {**CAMERA_JSON_FULL,
               "intrinsic": {"fx": 70.70375, "fy": 70.790625, "u0": 33.7337, "v0": 15.5511}}


def frame_image(i, w=32, h=24):
    """A BGR image whose colour encodes its index (to check order and channel order)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10 + 40 * i, 100, 200  # B, G, R
    return img


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame_image(i))
    return folder


@pytest.fixture
def cityscapes(tmp_path):
    city = tmp_path / "leftImg8bit_sequence" / "val" / "frankfurt"
    city.mkdir(parents=True)
    for i, frame in enumerate((19, 20, 21)):
        cv2.imwrite(str(city / f"frankfurt_000000_{frame:06d}_leftImg8bit.png"),
                    frame_image(i, 64, 32))
    camera = tmp_path / "camera" / "val" / "frankfurt"
    camera.mkdir(parents=True)
    (camera / "frankfurt_000000_000019_camera.json").write_text(json.dumps(CAMERA_JSON))
    return city


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (32, 24))
    assert writer.isOpened(), "this OpenCV cannot write MJPG .avi"
    for i in range(6):
        writer.write(frame_image(i))
    writer.release()
    return path


def make(args, *extra):
    return make_bag.main([str(a) for a in (*args, "--start-time", START_NS / 1e9, "-q", *extra)])


def read_bag(path):
    """{topic: [(bag time, message)]} and the bag's topic → (type, count) table."""
    out = {}
    for topic, t_ns, msg, _ in bags.iter_bag(path, deserialize=True):
        out.setdefault(topic, []).append((t_ns, msg))
    return out


def stamp_ns(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# --------------------------------------------------------------------------- make-bag


@pytest.mark.parametrize("storage,suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_folder_bag_round_trip(image_folder, tmp_path, storage, suffix):
    out = tmp_path / "bag"
    assert make([image_folder, "--output", out, "--rate", 20, "--storage", storage,
                 "--fx", 30, "--cx", 15.5, "--cy", 11.5]) == 0

    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == storage
    assert (out / f"bag{suffix}").is_file()
    assert not list(tmp_path.glob(".bag.*")), "temp folder left behind"

    msgs = read_bag(out)
    images, infos = msgs["/camera/image_raw"], msgs["/camera/camera_info"]
    assert len(images) == len(infos) == 5
    for i, ((t_img, img), (t_info, info)) in enumerate(zip(images, infos)):
        assert img.encoding == "rgb8" and (img.width, img.height, img.step) == (32, 24, 96)
        rgb = np.asarray(img.data).reshape(24, 32, 3)
        assert tuple(rgb[0, 0]) == (200, 100, 10 + 40 * i)  # RGB order, frames in order
        expected = START_NS + round(i * 1e9 / 20)
        assert stamp_ns(img) == stamp_ns(info) == t_img == t_info == expected
        assert img.header.frame_id == info.header.frame_id == "camera"
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3),
                                   [[30, 0, 15.5], [0, 30, 11.5], [0, 0, 1]])
        assert (info.width, info.height) == (32, 24)
    # Each stamp maps back to its source file (in the metadata, for mcap and sqlite3 alike).
    assert bags.bag_frame_names(out) == {stamp_ns(img): f"{i:04d}.png"
                                         for i, (_, img) in enumerate(images)}


def test_cityscapes_camera_json_gives_k(cityscapes, tmp_path):
    out = tmp_path / "cs_bag"
    assert make([cityscapes, "--output", out, "--encoding", "bgr8"]) == 0
    msgs = read_bag(out)
    images, infos = msgs["/camera/image_raw"], msgs["/camera/camera_info"]
    assert len(images) == len(infos) == 3
    stamps = [stamp_ns(m) for _, m in images]
    assert stamps == [stamp_ns(m) for _, m in infos]
    assert np.all(np.diff(stamps) > 0)
    assert np.allclose(np.diff(stamps), 1e9 / 17, atol=1)  # Cityscapes sequences: 17 Hz
    intr = CAMERA_JSON["intrinsic"]
    for _, info in infos:  # frames 20 and 21 have no JSON: the snippet's 000019 one is used
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3),
                                   [[intr["fx"], 0, intr["u0"]], [0, intr["fy"], intr["v0"]],
                                    [0, 0, 1]])
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3],
                                   np.asarray(info.k).reshape(3, 3))
        assert info.distortion_model == "plumb_bob" and not np.any(info.d)
    img = images[0][1]
    assert img.encoding == "bgr8" and tuple(np.asarray(img.data)[:3]) == (10, 100, 200)


def test_cityscapes_without_camera_json(cityscapes, tmp_path, capsys):
    for f in (cityscapes.parents[2] / "camera").rglob("*.json"):
        f.unlink()
    assert make([cityscapes, "--output", tmp_path / "a"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "frankfurt_000000_000019_camera.json" in err and "--no-camera-info" in err
    assert not (tmp_path / "a").exists()

    assert make([cityscapes, "--output", tmp_path / "b", "--no-camera-info"]) == 0
    assert "no CameraInfo" in capsys.readouterr().out
    assert set(bags.bag_topics(tmp_path / "b")) == {"/camera/image_raw"}


def test_video_bag_uses_its_fps(video, tmp_path, capsys):
    out = tmp_path / "video_bag"
    assert make([video, "--output", out, "--max-frames", 4]) == 0
    assert "no CameraInfo" in capsys.readouterr().out
    images = read_bag(out)["/camera/image_raw"]
    assert len(images) == 4 and set(bags.bag_topics(out)) == {"/camera/image_raw"}
    stamps = np.array([stamp_ns(m) for _, m in images])
    assert np.allclose(np.diff(stamps), 1e9 / 12, atol=1)
    means = [np.asarray(m.data).reshape(24, 32, 3)[..., 2].mean() for _, m in images]
    assert np.all(np.diff(means) > 20)  # blue channel (last in rgb8) grows frame by frame
    assert sorted(bags.bag_frame_names(out).values()) == [f"frame {i}" for i in range(4)]


def test_camera_yaml_and_resize_scale_k(image_folder, tmp_path):
    calib = tmp_path / "cam.yaml"
    calib.write_text(yaml.safe_dump({
        "image_width": 32, "image_height": 24, "camera_name": "test",
        "camera_matrix": {"rows": 3, "cols": 3, "data": [30, 0, 15.5, 0, 31, 11.5, 0, 0, 1]},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": [-0.1, 0.01, 0, 0, 0]}}))
    out = tmp_path / "bag"
    assert make([image_folder, "--output", out, "--camera-info", calib, "--resize", "64x48",
                 "--max-frames", 2]) == 0
    msgs = read_bag(out)
    img, info = msgs["/camera/image_raw"][0][1], msgs["/camera/camera_info"][0][1]
    assert (img.width, img.height) == (info.width, info.height) == (64, 48)
    # scaled about pixel centres: c' = (c + 0.5) * 2 - 0.5
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3),
                               [[60, 0, 31.5], [0, 62, 23.5], [0, 0, 1]])
    np.testing.assert_allclose(info.d, [-0.1, 0.01, 0, 0, 0])

    # A calibration made for another image size is an error, not a silently wrong K.
    calib_other = tmp_path / "other.yaml"
    calib_other.write_text(calib.read_text().replace("image_width: 32", "image_width: 640"))
    assert make([image_folder, "--output", tmp_path / "c", "--camera-info", calib_other]) == 2


def test_force_replaces_only_bags(image_folder, tmp_path, capsys):
    out = tmp_path / "bag"
    assert make([image_folder, "--output", out, "--max-frames", 2]) == 0
    capsys.readouterr()
    assert make([image_folder, "--output", out]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert make([image_folder, "--output", out, "--force"]) == 0
    assert len(read_bag(out)["/camera/image_raw"]) == 5
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert make([image_folder, "--output", precious, "--force"]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args,expect", [
    (["{tmp}/nothing", "--output", "{tmp}/o"], "does not exist"),
    (["{frames}", "--output", "{tmp}/o", "--fx", "30"], "--cx"),
    (["{frames}", "--output", "{tmp}/o", "--rate", "0"], "--rate"),
    (["{frames}", "--output", "{tmp}/o", "--camera-info", "{tmp}/missing.yaml"], "missing.yaml"),
    (["{garbage}", "--output", "{tmp}/o"], "cannot read video"),
    (["{empty}", "--output", "{tmp}/o"], "no images"),
    (["{mixed}", "--output", "{tmp}/o"], "--resize"),
])
def test_make_bag_errors_exit_2(image_folder, tmp_path, capsys, args, expect):
    garbage = tmp_path / "broken.avi"
    garbage.write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    mixed = tmp_path / "mixed"  # fails on the third frame: nothing may be left behind
    mixed.mkdir()
    for i, size in enumerate(((32, 24), (32, 24), (48, 24))):
        cv2.imwrite(str(mixed / f"{i}.png"), frame_image(i, *size))
    fill = {"tmp": tmp_path, "frames": image_folder, "garbage": garbage,
            "empty": tmp_path / "empty", "mixed": mixed}
    assert make_bag.main([a.format(**fill) for a in args] + ["-q"]) == 2
    err = "\n".join(ln for ln in capsys.readouterr().err.splitlines() if ": note: " not in ln)
    assert len(err.splitlines()) == 1 and err.startswith("superseg-make-bag: error:")
    assert expect in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_argparse_errors_exit_2(image_folder, tmp_path):
    for argv in ([str(image_folder), "--output", str(tmp_path / "o"), "--storage", "rosbag1"],
                 [str(image_folder), "--output", str(tmp_path / "o"), "--resize", "64by48"]):
        with pytest.raises(SystemExit) as exc:
            make_bag.main(argv)
        assert exc.value.code == 2


def test_play_and_record_reject_bad_input_before_ros(image_folder, tmp_path, capsys):
    bag = tmp_path / "bag"
    assert make([image_folder, "--output", bag, "--max-frames", 2]) == 0
    capsys.readouterr()
    cases = [
        (play.main, [str(tmp_path / "missing")], "does not exist"),
        (play.main, [str(image_folder)], "not a readable ROS 2 bag"),
        (play.main, [str(bag), "--topics", "/nope"], "/camera/image_raw"),
        (play.main, [str(bag), "--remap", "/camera/image_raw=/x"], "OLD:=NEW"),
        (play.main, [str(bag), "--rate-factor", "0"], "--rate-factor"),
        (play.main, [str(bag), "--start-offset", "5"], "past the end"),
        (record.main, ["--output", str(bag)], "--force"),
        (record.main, ["--output", str(tmp_path / "r"), "--max-messages", "0"], "--max-messages"),
        (record.main, ["--output", str(tmp_path / "r"), "--topics", "relative"], "absolute"),
    ]
    for main, argv, expect in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, (argv, err)


def test_summary_of_recorded_keypoints(tmp_path):
    """summarize_bag on a hand-made bag of superseg_msgs/Keypoints (types from the .msg files)."""
    out = tmp_path / "rec"
    keypoints_bag(out, [(START_NS + i * 100_000_000, START_NS + i * 100_000_000
                         + 5_000_000 * (i + 1), n, 5, 0) for i, n in enumerate((10, 20, 30))])
    summary = bags.summarize_bag(out)["topics"]["/superseg/keypoints"]
    assert summary["messages"] == 3 and summary["type"] == bags.KEYPOINTS_TYPE
    assert summary["keypoints_per_frame"] == {"mean": 20.0, "min": 10.0, "max": 30.0}
    assert summary["unstable_share"] == pytest.approx(15 / 60, abs=1e-4)
    assert summary["latency_ms"]["p50"] == pytest.approx(10.0)
    assert summary["latency_ms"]["max"] == pytest.approx(15.0)
    assert bags.bag_frame_names(out) == {}  # not made by make-bag: no frame names, no error


# --------------------------------------------------------------------------- unreadable images


@pytest.fixture
def damaged_folder(image_folder):
    """The 5 frames with 0001.png garbage and an empty 0005.png: 4 readable frames."""
    (image_folder / "0001.png").write_bytes(b"not a png at all")
    (image_folder / "0005.png").write_bytes(b"")
    return image_folder


def test_unreadable_images_are_skipped_and_reported(damaged_folder, tmp_path, capsys):
    out = tmp_path / "bag"
    assert make([damaged_folder, "--output", out, "--rate", 10]) == 1  # a bag, but not all of it
    captured = capsys.readouterr()
    skipped = [ln for ln in captured.err.splitlines() if "skipped" in ln]
    assert skipped == [
        f"superseg-make-bag: skipped {damaged_folder / '0001.png'}: not an image, a damaged one, "
        f"or an unsupported format",
        f"superseg-make-bag: skipped {damaged_folder / '0005.png'}: empty file"]
    assert "4 frames (image folder, 2 unreadable files skipped)" in captured.out
    images = read_bag(out)["/camera/image_raw"]
    blue = [int(np.asarray(m.data)[2]) for _, m in images]
    assert blue == [10 + 40 * i for i in (0, 2, 3, 4)]
    stamps = [stamp_ns(m) for _, m in images]
    assert np.allclose(np.diff(stamps), 1e8, atol=1)  # the bag's frames stay evenly spaced
    assert bags.bag_frame_names(out) == dict(zip(stamps, ["0000.png", "0002.png", "0003.png",
                                                          "0004.png"]))


def test_skipped_files_in_bag_report_and_max_frames_counts_frames(damaged_folder, tmp_path):
    source = bags.open_source(damaged_folder)
    report = bags.write_bag(source.frames(max_frames=2), tmp_path / "bag", 10.0,
                            progress=False)
    assert report.frames == 2  # 0000 and 0002: the skipped 0001 does not count
    assert report.skipped == [(str(damaged_folder / "0001.png"),
                               "not an image, a damaged one, or an unsupported format")]
    assert sorted(bags.bag_frame_names(tmp_path / "bag").values()) == ["0000.png", "0002.png"]


def test_strict_stops_at_the_first_unreadable_image(damaged_folder, tmp_path, capsys):
    assert make([damaged_folder, "--output", tmp_path / "o", "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("superseg-make-bag: error: cannot read ") and "0001.png" in err
    assert "--strict" in err and "0005.png" not in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_no_readable_image_at_all_exits_2(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"junk")
    assert make([folder, "--output", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("superseg-make-bag: error: no readable frame: all 2 input files")
    assert "a.png" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_size_mismatch_still_aborts_among_skipped_files(damaged_folder, tmp_path, capsys):
    cv2.imwrite(str(damaged_folder / "0003.png"), frame_image(3, 48, 24))
    assert make([damaged_folder, "--output", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "0003.png is 48x24 but the first frame is 32x24; use --resize" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- calibration checks


def k_text(fx, cx, cy):
    return f"{fx} 0 {cx}\n0 {fx} {cy}\n0 0 1\n"


@pytest.mark.parametrize("calibration,expect", [
    (["--fx", "500", "--cx", "900", "--cy", "700"],
     ["cx=900, cy=700", "32x24", "--fx/--fy/--cx/--cy", "another resolution"]),
    (["--fx", "30", "--cx", "31.6", "--cy", "11.5"], ["cx=31.6", "cx <= 31.5"]),  # just outside
    (["--fx", "30", "--cx", "15", "--cy", "-0.6"], ["cy=-0.6", "-0.5 <= cy"]),
    (["--camera-info", "{tmp}/k.txt"], ["cx=320, cy=240", "32x24", "k.txt"]),
    (["--camera-info", "{tmp}/cam.yaml"], ["cx=320, cy=240", "32x24", "cam.yaml"]),
    (["--camera-info", "{tmp}/nan.txt"], ["non-finite", "nan.txt"]),
    (["--fx", "0", "--cx", "15", "--cy", "11"], ["fx=0", "positive", "--fx/--fy/--cx/--cy"]),
])
def test_calibration_must_fit_the_images(image_folder, tmp_path, capsys, calibration, expect):
    (tmp_path / "k.txt").write_text(k_text(500, 320, 240))  # K for 640x480, frames are 32x24
    (tmp_path / "nan.txt").write_text(k_text("nan", 15, 11))
    (tmp_path / "cam.yaml").write_text(yaml.safe_dump({
        "image_width": 32, "image_height": 24,
        "camera_matrix": {"rows": 3, "cols": 3, "data": [500, 0, 320, 0, 500, 240, 0, 0, 1]}}))
    args = [a.format(tmp=tmp_path) for a in calibration]
    assert make([image_folder, "--output", tmp_path / "o", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("superseg-make-bag: error: calibration from ")
    for text in expect:
        assert text in err, err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_principal_point_on_the_image_border_is_accepted(image_folder, tmp_path):
    assert make([image_folder, "--output", tmp_path / "a", "--fx", 30, "--cx", -0.5,
                 "--cy", 23.5, "--max-frames", 1]) == 0


def test_cityscapes_json_for_another_resolution_is_refused(cityscapes, tmp_path, capsys):
    camera = cityscapes.parents[2] / "camera" / "val" / "frankfurt"
    (camera / "frankfurt_000000_000019_camera.json").write_text(json.dumps(CAMERA_JSON_FULL))
    assert make([cityscapes, "--output", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cx=1096.98, cy=513.137" in err and "64x32" in err
    assert "frankfurt_000000_000019_camera.json" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- folder rate and K


def named_folder(tmp_path, names):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), frame_image(i))
    return folder


def notes(err):
    return [ln.removeprefix("superseg-make-bag: note: ") for ln in err.splitlines()
            if ln.startswith("superseg-make-bag: note: ")]


def bag_period_ns(path):
    stamps = [stamp_ns(m) for _, m in read_bag(path)["/camera/image_raw"]]
    return np.diff(stamps)


# Four frames 0.1 s apart with one dropped (0.2 s): the median spacing gives 10 Hz.
TIMES = [0.0, 0.1, 0.3, 0.4]


@pytest.mark.parametrize("times_file,text,origin", [
    ("times.txt", "".join(f"{t:e}\n" for t in TIMES), "times.txt"),
    ("timestamps.txt", "".join(f"2011-09-26 13:02:{25 + t:012.9f}\n" for t in TIMES),
     "timestamps.txt"),
    (None, None, "the image file names"),
])
def test_folder_frame_times_give_the_rate(tmp_path, capsys, times_file, text, origin):
    if times_file is None:  # TUM style: the names are the times
        folder = named_folder(tmp_path, [f"{1341847980.722988 + t:.6f}.png" for t in TIMES])
    else:
        folder = named_folder(tmp_path, [f"{i:06d}.png" for i in range(4)])
        (folder / times_file).write_text(text)
    out = tmp_path / "bag"
    assert make([folder, "--output", out]) == 0
    assert f"rate 10 Hz from {origin}" in notes(capsys.readouterr().err)
    assert np.allclose(bag_period_ns(out), 1e8, atol=1)


def test_frame_times_count_mismatch_is_noted(tmp_path, capsys):
    folder = named_folder(tmp_path, [f"{i:06d}.png" for i in range(3)])
    (folder / "times.txt").write_text("0.0\n0.05\n0.1\n0.15\n0.2\n")
    assert make([folder, "--output", tmp_path / "bag"]) == 0
    found = notes(capsys.readouterr().err)
    assert "rate 20 Hz from times.txt" in found
    assert any("times.txt has 5 times for 3 images" in n for n in found), found


def test_malformed_times_file_names_file_and_line(tmp_path, capsys):
    folder = named_folder(tmp_path, [f"{i:06d}.png" for i in range(3)])
    (folder / "timestamps.txt").write_text("2011-09-26 13:02:25.0\n2011-09-26 13:02:25.1\n"
                                           "yesterday\n")
    assert make([folder, "--output", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("superseg-make-bag: error:") and len(err.splitlines()) == 1
    assert f"{folder / 'timestamps.txt'} line 3" in err and "'yesterday'" in err
    assert "--rate" in err
    # --rate wins over the folder's times, which are then not read at all.
    assert make([folder, "--output", tmp_path / "o", "--rate", 5]) == 0
    assert not any("rate" in n for n in notes(capsys.readouterr().err))
    assert np.allclose(bag_period_ns(tmp_path / "o"), 2e8, atol=1)


def test_folder_without_times_or_calibration_says_so(image_folder, tmp_path, capsys):
    assert make([image_folder, "--output", tmp_path / "bag"]) == 0  # names 0000..: not times
    found = notes(capsys.readouterr().err)
    assert found == [
        f"no frame times in {image_folder} (times.txt, timestamps.txt or timestamped file "
        f"names): using 10 Hz; pass --rate",
        f"no calibration file in {image_folder} (camera_info.yaml, camera.yaml, "
        f"calibration.yaml, cam.txt, K.txt): no CameraInfo; pass --camera-info or --fx/--cx/--cy"]
    assert np.allclose(bag_period_ns(tmp_path / "bag"), 1e8, atol=1)


def camera_yaml(fx, cx, cy, width=32, height=24):
    return yaml.safe_dump({"image_width": width, "image_height": height,
                           "camera_matrix": {"rows": 3, "cols": 3,
                                             "data": [fx, 0, cx, 0, fx, cy, 0, 0, 1]}})


def first_k(path):
    return np.asarray(read_bag(path)["/camera/camera_info"][0][1].k).reshape(3, 3)


def test_folder_calibration_file_gives_k(image_folder, tmp_path, capsys):
    (image_folder / "cam.txt").write_text(k_text(30, 15.5, 11.5))
    assert make([image_folder, "--output", tmp_path / "a"]) == 0
    assert "intrinsics from cam.txt" in notes(capsys.readouterr().err)
    np.testing.assert_allclose(first_k(tmp_path / "a"), [[30, 0, 15.5], [0, 30, 11.5], [0, 0, 1]])

    # The ROS YAML comes first in the search order.
    (image_folder / "camera_info.yaml").write_text(camera_yaml(40, 16, 12))
    assert make([image_folder, "--output", tmp_path / "b"]) == 0
    assert "intrinsics from camera_info.yaml" in notes(capsys.readouterr().err)
    np.testing.assert_allclose(first_k(tmp_path / "b"), [[40, 0, 16], [0, 40, 12], [0, 0, 1]])

    # The command line overrides the folder, and --no-camera-info drops it.
    assert make([image_folder, "--output", tmp_path / "c", "--fx", 50, "--cx", 10,
                 "--cy", 10]) == 0
    assert not any("intrinsics" in n for n in notes(capsys.readouterr().err))
    np.testing.assert_allclose(first_k(tmp_path / "c"), [[50, 0, 10], [0, 50, 10], [0, 0, 1]])
    assert make([image_folder, "--output", tmp_path / "d", "--no-camera-info"]) == 0
    assert set(bags.bag_topics(tmp_path / "d")) == {"/camera/image_raw"}


def test_folder_calibration_is_checked_like_any_other(image_folder, tmp_path, capsys):
    (image_folder / "K.txt").write_text(k_text(500, 320, 240))
    assert make([image_folder, "--output", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"calibration from {image_folder / 'K.txt'}" in err and "cx=320" in err


# --------------------------------------------------------------------------- over real DDS


@pytest.fixture
def ros_node(request):
    """A test-process node on loopback DDS; skips when ROS or the workspace is missing."""
    pytest.importorskip("rclpy")
    msgs = pytest.importorskip("superseg_msgs.msg")
    if not hasattr(msgs, "Keypoints"):  # only the source folder, as a namespace package
        pytest.skip("superseg_msgs is not built and sourced (make build; tools/ros_env.sh)")
    return request.getfixturevalue("rclpy_node")


@pytest.fixture
def ros_helpers():
    import ros_helpers as helpers  # applies the loopback environment on import

    return helpers


def test_play_replays_in_order_at_rate(ros_node, ros_helpers, image_folder, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    rate, n = 10.0, 5
    bag = tmp_path / "bag"
    assert make([image_folder, "--output", bag, "--rate", rate, "--fx", 30, "--cx", 16,
                 "--cy", 12]) == 0
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    images, infos = [], []
    ros_node.create_subscription(Image, "/test_bags/image",
                                 lambda m: images.append((time.time_ns(), m)), qos)
    ros_node.create_subscription(CameraInfo, "/camera/camera_info", infos.append, qos)
    args = ["-m", "superseg_ros.cli.play", str(bag), "--remap",
            "/camera/image_raw:=/test_bags/image", "--restamp", "--wait-for-subscribers", "20",
            "--delay", "0", "--ack-timeout", "1"]
    with ros_helpers.python_process(args, tmp_path / "play.log") as child:
        def finished():
            return len(images) == n and len(infos) == n and child.popen.poll() is not None

        done = ros_helpers.spin_until(ros_node, finished, 30.0)
        assert done, child.output()
        assert child.popen.returncode == 0, child.output()
    blue = [int(np.asarray(m.data)[2]) for _, m in images]  # rgb8: byte 2 is blue
    assert blue == [10 + 40 * i for i in range(n)], "frames out of order"
    stamps = [stamp_ns(m) for _, m in images]
    assert stamps == [stamp_ns(m) for m in infos]  # --restamp keeps Image/CameraInfo pairs equal
    assert np.allclose(np.diff(stamps), 1e9 / rate, atol=1)
    assert abs(stamps[0] - time.time_ns()) < 60e9  # restamped to replay time, not 2020
    # Pacing without a timed bound: a restamped header carries the wall time the player scheduled
    # the message for, so a paced player can never deliver a message before its stamp (delivery
    # delays only make it later). A player that ignored the rate would deliver the last frame about
    # (n - 1) / rate = 0.4 s early. 5 ms allows for the wall clock read once per pass.
    early = [(stamp - received) / 1e9 for (received, _), stamp in zip(images, stamps)]
    assert max(early) < 0.005, f"frames delivered before their scheduled time: {early}"


def publish_keypoints(node, publisher, counts, latency_ns=50_000_000):
    from superseg_msgs.msg import Keypoints

    for n in counts:
        msg = Keypoints()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns() - latency_ns,
                                                                10**9)
        msg.header.frame_id, msg.width, msg.height = "camera", 32, 24
        zeros = np.zeros(n, np.float32)
        msg.x, msg.y, msg.score = np.arange(n, dtype=np.float32), zeros, zeros
        msg.x_normalized, msg.y_normalized = zeros, zeros
        msg.class_id, msg.group_id = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        msg.stable = [j >= n // 2 for j in range(n)]  # first half flagged unstable
        publisher.publish(msg)
        time.sleep(0.02)


def start_recorder(ros_helpers, node, tmp_path, name, extra):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from superseg_msgs.msg import Keypoints

    pub = node.create_publisher(Keypoints, "/test_bags/keypoints",
                                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    args = ["-m", "superseg_ros.cli.record", "--output", str(tmp_path / name), "--topics",
            "/test_bags/keypoints", "--duration", "30", *extra]
    return pub, ros_helpers.python_process(args, tmp_path / f"{name}.log")


def test_record_keypoints_and_summary(ros_node, ros_helpers, tmp_path):
    pub, process = start_recorder(ros_helpers, ros_node, tmp_path, "rec", ["--max-messages", "4"])
    with process as child:
        assert ros_helpers.spin_until(ros_node, lambda: pub.get_subscription_count() > 0, 20.0), \
            child.output()
        publish_keypoints(ros_node, pub, [10, 20, 30, 40])
        assert ros_helpers.spin_until(ros_node, lambda: child.popen.poll() is not None, 20.0), \
            child.output()
        assert child.popen.returncode == 0, child.output()

    summary = json.loads((tmp_path / "rec.summary.json").read_text())
    assert summary["stopped_by"] == "max-messages" and summary["messages"] == 4
    topic = summary["topics"]["/test_bags/keypoints"]
    assert topic["type"] == "superseg_msgs/msg/Keypoints" and topic["messages"] == 4
    assert topic["keypoints_per_frame"] == {"mean": 25.0, "min": 10.0, "max": 40.0}
    assert topic["unstable_share"] == 0.5
    assert 50.0 <= topic["latency_ms"]["p50"] < 10_000.0
    assert topic["rate_hz"] > 0
    recorded = [m for _, _, m, _ in bags.iter_bag(tmp_path / "rec", deserialize=True)]
    assert [len(m.x) for m in recorded] == [10, 20, 30, 40]
    np.testing.assert_array_equal(recorded[-1].x, np.arange(40))


def test_record_finalises_bag_on_sigint(ros_node, ros_helpers, tmp_path):
    pub, process = start_recorder(ros_helpers, ros_node, tmp_path, "rec_int",
                                  ["--storage", "sqlite3"])
    with process as child:
        assert ros_helpers.spin_until(ros_node, lambda: pub.get_subscription_count() > 0, 20.0), \
            child.output()
        publish_keypoints(ros_node, pub, [5, 6])
        from rclpy.duration import Duration

        assert pub.wait_for_all_acked(Duration(seconds=5))
        ros_helpers.stop_process(child.popen)  # SIGINT first
        assert child.popen.returncode == 0, child.output()
    meta = yaml.safe_load((tmp_path / "rec_int" / "metadata.yaml").read_text())
    assert meta["rosbag2_bagfile_information"]["storage_identifier"] == "sqlite3"
    summary = json.loads((tmp_path / "rec_int.summary.json").read_text())
    assert summary["stopped_by"] == "SIGINT"
    assert summary["topics"]["/test_bags/keypoints"]["messages"] == 2


def keypoints_bag(path, frames, diagnostics=None):
    """A bag of superseg_msgs/Keypoints (types from the .msg files), one message per
    (stamp ns, receive ns, keypoints, of them flagged unstable, group_id of all), and optionally
    one /diagnostics message with these values."""
    with bags.BagWriter(path) as writer:
        writer.add_topic("/superseg/keypoints", bags.KEYPOINTS_TYPE)
        store = writer.store
        Keypoints = store.types[bags.KEYPOINTS_TYPE]
        Header = store.types["std_msgs/msg/Header"]
        Time = store.types["builtin_interfaces/msg/Time"]
        for stamp, received, n, unstable, group_id in frames:
            f32 = np.zeros(n, np.float32)
            msg = Keypoints(header=Header(stamp=Time(*divmod(stamp, 10**9)), frame_id="camera"),
                            width=32, height=24, x=f32, y=f32, score=f32,
                            class_id=np.full(n, group_id, np.uint8),
                            group_id=np.full(n, group_id, np.uint8),
                            stable=np.arange(n) >= unstable, x_normalized=f32, y_normalized=f32)
            writer.write("/superseg/keypoints", received, msg)
        if diagnostics is not None:
            writer.add_topic("/diagnostics", bags.DIAGNOSTICS_TYPE)
            types = store.types
            status = types["diagnostic_msgs/msg/DiagnosticStatus"](
                level=0, name="/front/superseg_node: keypoint extraction", message="ok",
                hardware_id="cpu", values=[types["diagnostic_msgs/msg/KeyValue"](key=k, value=v)
                                           for k, v in diagnostics.items()])
            array = types["diagnostic_msgs/msg/DiagnosticArray"](
                header=Header(stamp=Time(0, 0), frame_id=""), status=[status])
            writer.write("/diagnostics", frames[-1][1], array)


def test_summary_says_filter_off_and_withholds_latency_of_replayed_stamps(tmp_path):
    """Outputs of a bag replayed without --restamp: stamps 40 s old, semantic filter off."""
    old = [(START_NS + i * 10**8, START_NS + 40 * 10**9 + i * 10**8, 5, 2, 255) for i in range(3)]
    keypoints_bag(tmp_path / "replayed", old,
                  diagnostics={"node_latency_ms_p50": "85.0", "node_latency_ms_p95": "97.5"})
    summary = bags.summarize_bag(tmp_path / "replayed")
    topic = summary["topics"]["/superseg/keypoints"]
    assert topic["unstable_share"] == "filter off"
    assert topic["latency_ms"] is None and "not live" in topic["latency"]
    assert "40.0 s older" in topic["latency"]
    assert summary["node_latency_ms"] == {"/front/superseg_node": {"p50": 85.0, "p95": 97.5}}

    live = [(START_NS + i * 10**8, START_NS + i * 10**8 + 30_000_000, 5, 2, 0) for i in range(3)]
    keypoints_bag(tmp_path / "live", live)
    topic = bags.summarize_bag(tmp_path / "live")["topics"]["/superseg/keypoints"]
    assert topic["unstable_share"] == pytest.approx(2 / 5)
    assert topic["latency_ms"]["p50"] == pytest.approx(30.0) and "latency" not in topic
