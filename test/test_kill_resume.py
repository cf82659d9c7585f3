"""Crash and restart (issue 13, item 4): superseg-train and superseg-adapt killed by a real
SIGKILL in a real subprocess (no `finally`, no `except` runs), then the same command again.

Checked: nothing the killed process leaves is half-written (write_atomically leaves at most its
temp file, which the next run deletes); the restarted command resumes (train: from
checkpoints/last.pt, losing at most checkpoint_every steps; adapt: skipping every finished label
file) and ends with a loadable model / one valid label file per image. The measured figures are
printed: run with `pytest -s` to read them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from superseg_ros.checkpoint import load_model, read_checkpoint, save_checkpoint
from superseg_ros.network import SuperSegmentation
from superseg_ros.training.adaptation import read_pseudo_labels

ROOT = Path(__file__).resolve().parents[1]
TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # fileio.write_atomically's temp files
DEADLINE = 180.0  # s: a hang fails the test instead of blocking it (never a timing assertion)


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def command(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """The command in its own session (process group), output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=log.parent, env=child_env(), start_new_session=True)


def run_to_end(cmd: list[str], log: Path) -> int:
    proc = start(cmd, log)
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{cmd} did not finish in {DEADLINE} s:\n{log.read_text()[-3000:]}")


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp") if TEMP.match(p.name))


def temp_in(folder: Path) -> bool:
    try:
        return any(TEMP.match(name) for name in os.listdir(folder))
    except FileNotFoundError:
        return False


def kill_when(proc: subprocess.Popen, progress, start_at: int, give_up_at: int | None = None,
              in_flight=None, log: Path | None = None) -> tuple[int, bool]:
    """SIGKILL the process group once progress() >= start_at: at once, or with `in_flight`, at
    the first moment in_flight() is true (a write caught half-way), at the latest once
    progress() >= give_up_at. Returns (progress when killed, whether a write was in flight)."""
    deadline = time.monotonic() + DEADLINE
    done, checked, caught = 0, 0.0, False
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) at progress {done}, before "
                        f"the kill:\n{log.read_text()[-3000:] if log else ''}")
        now = time.monotonic()
        if now > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"no progress to {start_at} in {DEADLINE} s (at {done})")
        if now - checked >= 0.01:
            done, checked = progress(), now
        if done < start_at:
            time.sleep(0.01)
            continue
        if in_flight is None or done >= give_up_at:
            break
        if in_flight():
            caught = True
            break
        time.sleep(0.0002)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return done, caught


def jsonl_records(path: Path) -> list[dict]:
    """Every line of a JSON-lines file; fails on a line that is cut short or not JSON."""
    text = path.read_text()
    assert not text or text.endswith("\n"), f"{path}: last line cut short: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def complete_lines(path: Path) -> list[dict]:
    """The finished lines of a JSON-lines file another process is appending to."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("\n")]


def check_files(folder: Path) -> list[Path]:
    """Every file under `folder` is complete (loads as what its name says), or is a temp file
    of write_atomically; returns those temp files."""
    temps = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if TEMP.match(path.name):
            temps.append(path)
        elif path.suffix == ".pt":
            load_model(path)
        elif path.suffix == ".npz":
            read_pseudo_labels(path)
        elif path.suffix == ".jsonl":
            jsonl_records(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        elif path.suffix == ".png":
            assert cv2.imread(str(path)) is not None, f"{path}: not a readable PNG"
        else:
            pytest.fail(f"unexpected file {path}")
    return temps


def plant_stale_temp(target: Path, data: bytes) -> Path:
    """What a process killed inside write_atomically leaves: a part of the new file."""
    path = target.parent / f".{target.name}.k1ll9res.tmp"
    path.write_bytes(data)
    return path


# --- superseg-train ------------------------------------------------------------------------------


def test_superseg_train_killed_twice_resumes_from_its_last_checkpoint(tmp_path):
    every, total = 5, 200
    run, log = tmp_path / "run", tmp_path / "train.log"
    checkpoints = run / "checkpoints"
    last = checkpoints / "last.pt"
    config = tmp_path / "mp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "kill", "stage": "magicpoint", "output": str(run), "device": "cpu", "threads": 1,
        "model": dict(TINY), "data": {"shapes": {"height": 48, "width": 64}},
        "schedule": {"iterations": total, "decay": "constant"}, "batch_size": 2,
        "log_every": 1, "image_every": 7, "checkpoint_every": every, "validate_every": 0,
        "validation": {"images": 2}, "tensorboard": False}))
    cmd = command("superseg_ros.training.cli", config, "--no-progress")

    def logged() -> int:
        steps = [r["step"] for r in complete_lines(run / "metrics.jsonl") if r["kind"] == "train"]
        return steps[-1] if steps else 0

    def after_kill(name: str, caught: bool) -> tuple[int, int]:
        temps = check_files(run)
        steps = [r["step"] for r in jsonl_records(run / "metrics.jsonl") if r["kind"] == "train"]
        assert steps == list(range(1, steps[-1] + 1)), "one record per step, none twice"
        saved = read_checkpoint(last)["training_state"]["step"]
        lost = steps[-1] - saved
        print(f"\n[train] {name} kill: last step logged {steps[-1]}, last.pt at step {saved}, "
              f"steps lost {lost} (checkpoint_every {every}); write in flight caught: {caught}; "
              f"temp files left: {[p.relative_to(run).as_posix() for p in temps]}")
        assert saved % every == 0 and saved >= 2 * every
        assert 0 <= lost <= every
        return steps[-1], saved

    # 1) killed between checkpoints, after at least two of them
    proc = start(cmd, log)
    kill_when(proc, logged, 2 * every + 1, log=log)
    logged1, saved1 = after_kill("first", False)

    # 2) the same command resumes; killed again, if the poll catches it, while it writes last.pt
    proc = start(cmd, log)
    _, caught = kill_when(proc, logged, logged1 + 2 * every + 1, logged1 + 2 * every + 60,
                          in_flight=lambda: temp_in(checkpoints), log=log)
    logged2, saved2 = after_kill("second", caught)
    text = log.read_text()
    assert f"resuming {run} at step {saved1}" in text
    assert saved2 > saved1
    records = jsonl_records(run / "metrics.jsonl")
    first_new = next(r["step"] for r in records if r["kind"] == "train" and r["step"] > saved1)
    assert first_new == saved1 + 1
    if logged1 > saved1:  # the killed run's records after its checkpoint were dropped, not kept
        assert f"record(s) after step {saved1} dropped" in text

    # 3) to the end, past what a process killed inside write_atomically leaves behind
    stale = [plant_stale_temp(last, last.read_bytes()[:1000]),
             plant_stale_temp(run / "config.yaml", b"name: ki")]
    left = temp_files(run)
    assert run_to_end(cmd, log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"resuming {run} at step {saved2}" in text
    assert not any(p.exists() for p in stale) and check_files(run) == []
    for path in left:
        assert f"removed {path}" in text
    steps = [r["step"] for r in jsonl_records(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, total + 1))
    assert read_checkpoint(last)["training_state"]["step"] == total
    model = load_model(run / "model.pt")
    assert model.meta["step"] == total and model.trained_heads["detector"]
    print(f"[train] restart: resumed at {saved2}, first new step {saved2 + 1}, finished at "
          f"{total}; temp files removed on resume: {len(left)} ({len(left) - len(stale)} left "
          f"by the kills, {len(stale)} planted)")


# --- superseg-adapt ------------------------------------------------------------------------------


def write_images(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = np.full((48, 64, 3), 40, np.uint8)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, [56, 40]))
            colour = tuple(int(c) for c in rng.integers(80, 256, 3))
            cv2.rectangle(image, (x, y), (x + 12, y + 9), colour, -1)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)


def test_superseg_adapt_killed_resumes_without_redoing_finished_images(tmp_path):
    n = 30
    images, out, log = tmp_path / "images", tmp_path / "labels", tmp_path / "adapt.log"
    write_images(images, n)
    torch.manual_seed(0)
    model = save_checkpoint(SuperSegmentation(TINY), tmp_path / "tiny.pt")
    cmd = command("superseg_ros.training.adapt_cli", "--model", model, "--images", images,
                  "--output", out, "--set", "num_homographies=30", "--device", "cpu",
                  "--preview", "3")

    def labelled() -> int:
        return len(list(out.glob("*.npz")))

    proc = start(cmd, log)
    _, caught = kill_when(proc, labelled, 5, 20, in_flight=lambda: temp_in(out), log=log)
    temps = check_files(out)  # every .npz is read with read_pseudo_labels
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert 0 < len(done) < n and not (out / "adaptation.json").exists()
    for name in done:
        assert read_pseudo_labels(out / name)["source"] == name.replace(".npz", ".png")
    print(f"\n[adapt] killed with {len(done)}/{n} label files done; write in flight caught: "
          f"{caught}; temp files left: {[p.relative_to(out).as_posix() for p in temps]}")

    stale = plant_stale_temp(out / f"{n - 1:03d}.npz", b"PK\x03\x04 half a zip")
    left = temp_files(out)
    assert run_to_end(cmd, log) == 0, log.read_text()[-3000:]
    summary = json.loads((out / "adaptation.json").read_text())
    redone = sorted(name for name, mtime in done.items()
                    if (out / name).stat().st_mtime_ns != mtime)
    print(f"[adapt] rerun: {summary['skipped_existing']} skipped, {summary['labelled']} "
          f"labelled (all {n - len(done)} not done at the kill), {len(redone)} "
          f"finished files redone; temp files before the rerun: {len(left)} ({len(temps)} left "
          "by the kill, 1 planted), after: 0")
    assert summary["skipped_existing"] == len(done) and summary["labelled"] == n - len(done)
    assert summary["failed"] == 0 and redone == []
    assert f"{n - len(done)} labelled, {len(done)} already done, 0 failed of {n} images" \
        in log.read_text()
    assert not stale.exists() and check_files(out) == []
    labels = sorted(out.glob("*.npz"))
    assert [p.stem for p in labels] == [f"{i:03d}" for i in range(n)]
    assert all(read_pseudo_labels(p)["image_size"] == (48, 64) for p in labels)


# --- the node, killed in the middle of a bag replay ----------------------------------------------


def test_node_killed_mid_replay_serves_again_after_a_restart(tmp_path):
    """superseg_node (the bundled model) fed by superseg-play (a looping bag, reliable QoS) is
    SIGKILLed while frames flow; a new node process with the same command must serve the same
    replay again. Measured: the cold start-up time (process start -> first keypoints) and the
    restart's."""
    import ros_helpers
    from superseg_ros import bags
    from superseg_ros.demo import render_scene

    ros_helpers.import_rclpy()
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from superseg_msgs.msg import Keypoints

    calib = bags.intrinsics(100.0, None, 79.5, 59.5).for_size(160, 120)
    frames = [bags.Frame(cv2.cvtColor(render_scene(120, 160, seed=i), cv2.COLOR_RGB2BGR), calib,
                         f"{i:03d}.png") for i in range(20)]
    bag = tmp_path / "bag"
    bags.write_bag(frames, bag, 10.0, progress=False)
    # the bundled model (no --model): the start-up time measured is the one users get
    node_cmd = command("superseg_ros.ros.launch_cli", "--namespace", "killed",
                       "--image", "/camera/image_raw", "--camera-info", "/camera/camera_info",
                       "--param", "qos.profile:=reliable")
    player = start(command("superseg_ros.cli.play", bag, "--loop", "--restamp",
                           "--wait-for-subscribers", "120"), tmp_path / "play.log")
    got = []
    try:
        with ros_helpers.ros_node("kill_client") as client:
            client.create_subscription(
                Keypoints, "/killed/superseg/keypoints",
                lambda m: got.append(time.monotonic()),
                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
            started = time.monotonic()
            node = start(node_cmd, tmp_path / "node.log")
            assert ros_helpers.spin_until(client, lambda: len(got) >= 10, DEADLINE), \
                (tmp_path / "node.log").read_text()[-3000:]
            cold_start = got[0] - started
            os.killpg(node.pid, signal.SIGKILL)  # in the middle of the replay
            node.wait()
            ros_helpers.spin_until(client, lambda: False, 1.0)
            assert player.poll() is None, "the player must outlive the node"
            before = len(got)
            restarted = time.monotonic()
            node = start(node_cmd, tmp_path / "node.log")
            try:
                assert ros_helpers.spin_until(client, lambda: len(got) >= before + 10, DEADLINE), \
                    (tmp_path / "node.log").read_text()[-3000:]
                restart = got[before] - restarted
                print(f"\nnode: cold start to first keypoints {cold_start:.1f} s; after kill -9, "
                      f"restart to first keypoints {restart:.1f} s; frames before the kill "
                      f"{before}, after the restart {len(got) - before}")
            finally:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    finally:
        os.killpg(player.pid, signal.SIGKILL)
        player.wait()
