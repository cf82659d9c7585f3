"""Burst test: 1,000 frames in about one second into a running superseg_node; its memory peak.

    tools/ros_env.sh .venv/bin/python tools/burst.py [--frames 1000] [--duration 1.0]
        [--width 640 --height 480] [--after 5] [--model PATH|random] [--param NAME:=VALUE]
        [--output runs/burst]                                          (or: make burst)

Issue: "The node's queues are bounded. A burst of 1,000 frames in one second must not grow memory
without limit. Measure the peak and say what bounds it."

superseg_node runs as a child process (as in tools/soak.py: bundled model, namespace /burst,
reliable input QoS, keypoints + descriptors + stability_mask published, its default qos.depth
and sync.queue_size unless --param sets them). After a paced warm-up (so the "before" RSS is the
steady state), this process publishes --frames rgb8 frames, each with a CameraInfo of the same
stamp, evenly spread over --duration seconds (as fast as it can if that is slower), --repeat
times with the node settling in between (a leak adds up over bursts, a bound does not), from a
reliable publisher of depth --pub-depth (default: the whole burst, so the sender drops nothing
and whatever the node does not take is dropped by the node's own input queues). A thread reads
the node's /proc/<pid>/status every --interval s during the burst and for --after s once the
node has settled (VmRSS, RssAnon, RssShmem; VmHWM, the peak, is reset before the burst through
/proc/<pid>/clear_refs where the kernel allows it).

Prints the figures per burst (RSS before / sampled peak / VmHWM / after, the node's counts) and
what bounds the memory, from the node's parameters; writes burst.json and burst.png to --output.
Exit 0; 1 if the node died or did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402  (tools/soak.py: the node, the wire, /proc reading)

REPO = soak.REPO
NAMESPACE = "burst"
WARMUP = 10


def parse_args(argv):
    p = argparse.ArgumentParser(prog="burst", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--duration", type=float, default=1.0, help="s to spread the burst over")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--pub-depth", type=int, default=None,
                   help="the publisher's history depth (default: --frames)")
    p.add_argument("--interval", type=float, default=0.05, help="s between RSS samples")
    p.add_argument("--after", type=float, default=5.0,
                   help="s of sampling once the node has settled")
    p.add_argument("--repeat", type=int, default=3,
                   help="bursts one after the other on the same node: a leak grows with each")
    p.add_argument("--model", default=None, metavar="PATH|random")
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for the node, e.g. MALLOC_MMAP_THRESHOLD_=131072")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter, e.g. qos.depth:=50")
    p.add_argument("--output", type=Path, default=REPO / "runs" / "burst")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.frames < 1 or args.duration <= 0 or args.width < 8 or args.height < 8 \
            or args.repeat < 1 or any("=" not in item for item in args.node_env):
        p.error("--frames and --repeat >= 1, --duration > 0, an image of at least 8x8, "
                "--node-env NAME=VALUE")
    args.pub_depth = args.pub_depth or args.frames
    return args


def node_settings(params: list[str]) -> dict:
    """The settings the node runs with: config/superseg.yaml for /burst/superseg_node plus the
    --param overrides (as superseg-launch and rclpy apply them)."""
    import yaml

    from superseg_ros.config import read_parameters
    from superseg_ros.ros.launch_cli import default_config
    from superseg_ros.ros.parameters import NODE_NAME, flatten
    from superseg_ros.ros.parameters import node_settings as settings_of

    given = flatten(read_parameters(default_config(), NODE_NAME, NAMESPACE))
    for item in params:
        name, _, value = item.partition(":=")
        given[name] = yaml.safe_load(value)
    return settings_of(given)


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float, t0: float):
        super().__init__(daemon=True, name="rss_sampler")
        self.pid, self.interval, self.t0 = pid, interval, t0
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            s = soak.proc_status(self.pid)
            if not s:
                break
            self.samples.append({"t_s": round(time.monotonic() - self.t0, 3),
                                 "rss_mib": round(s.get("VmRSS", 0.0), 1),
                                 "anon_mib": round(s.get("RssAnon", 0.0), 1),
                                 "shmem_mib": round(s.get("RssShmem", 0.0), 1),
                                 "hwm_mib": round(s.get("VmHWM", 0.0), 1),
                                 "threads": s.get("Threads")})
            self.stop.wait(self.interval)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: echo 5 > /proc/PID/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def explain(settings: dict, args, bursts: list[dict]) -> str:
    """What bounds the node's memory, with this run's numbers."""
    worst = max(bursts, key=lambda b: b["peak_delta_mib"])
    figures = bursts[-1]
    from superseg_ros.ros.node import WINDOW
    from superseg_ros.ros.time_sync import message_filters_available

    frame_mib = args.width * args.height * 3 / 2**20
    depth, queue = settings["qos"]["depth"], settings["sync"]["queue_size"]
    sync = ("message_filters.ApproximateTimeSynchronizer" if message_filters_available()
            else "the built-in ApproximateTimeSync (superseg_ros/ros/time_sync.py; "
                 "message_filters is not installed)")
    held = depth + queue + 2
    return "\n".join([
        "## What bounds the node's memory",
        "",
        f"One {args.width}x{args.height} rgb8 frame is {frame_mib:.2f} MiB. Between DDS and the "
        "network a frame can only be in these places, each of fixed size:",
        "",
        f"1. The input subscriptions' DDS reader histories: KEEP_LAST, depth qos.depth = {depth}"
        f" (SuperSegNode._create_inputs: QoSProfile(depth=qos.depth, reliability=...)), one for "
        f"image and one for camera_info: at most {depth} images ({depth * frame_mib:.1f} MiB) "
        "wait to be taken. When the node's executor takes them slower than they arrive, a new "
        "sample replaces the oldest one; with RELIABLE QoS the reader has still acknowledged the"
        " replaced sample, so the publisher is not held up and nothing piles up anywhere. These "
        "replaced frames never reach a callback and are counted nowhere in the node (frames "
        "sent - frames_received).",
        "2. The executor takes one message per callback (one deserialised Image at a time) and "
        "hands it to the synchroniser.",
        f"3. The synchroniser: {sync}, sync.queue_size = {queue} messages per input, oldest "
        "dropped beyond that; a matched pair leaves its queues at once, and older unmatched "
        f"entries are purged on each match: at most {queue} images ({queue * frame_mib:.1f} MiB)"
        " wait for a CameraInfo. This CameraInfo is sent before its image, but when the reader "
        "history of (1) replaced a CameraInfo, its image waits here until a newer pair matches "
        f"and is then dropped (sync_dropped {figures.get('sync_dropped')} in all, both inputs; "
        f"{', '.join(str(b['burst_unaccounted']) for b in bursts)} images of the bursts).",
        "4. LatestFrame (superseg_ros/ros/latest_frame.py): one slot; a pair arriving while "
        "one waits replaces it (frames_skipped), plus the one frame the worker thread is "
        "processing, with that frame's tensors and output messages (the steady-state working "
        "set, already in the RSS before the burst).",
        f"5. The outputs: publishers of depth qos.depth = {depth} for keypoints, descriptors "
        "and stability_mask, i.e. a few small messages (descriptors are N x 256 float32).",
        f"6. Statistics: the latency/processing/stage windows are deques of maxlen {WINDOW} "
        "floats; the error log set is capped at 1000 keys.",
        "7. DDS shared memory: same-host samples travel through the publisher's SHM segment, "
        "16 MiB (superseg_ros/ros/fastdds_loopback.xml); the node maps it and the pages it "
        "reads count in its RSS (RssShmem), at most the segment size per remote participant.",
        "",
        f"So at most about {held} frames ({depth} + {queue} + slot + in process) = "
        f"{held * frame_mib:.1f} MiB of frame data can be held at once, plus at most 16 MiB of "
        "mapped SHM, whatever the burst's length or rate. Around them: the copies of the one "
        "message being taken (DDS payload -> Python Image -> numpy array), the DDS reader's "
        "payload buffers (Fast DDS keeps the frame-sized buffers it allocated for reuse) and "
        "the allocator's free lists (glibc per-thread arenas keep "
        "freed frame-sized blocks; MALLOC_MMAP_THRESHOLD_=131072 in the node's environment "
        "returns them to the kernel at once).",
        "",
        f"Measured here: at most {worst['peak_delta_mib']:+.1f} MiB over the RSS before a burst "
        f"(RssAnon {worst['anon_peak_delta_mib']:+.1f}, RssShmem "
        f"{worst['shmem_peak_delta_mib']:+.1f}). Peak RSS per burst: "
        + ", ".join(f"{b['rss_peak_sampled_mib']:.1f}" for b in bursts)
        + f" MiB; RSS {args.after:g} s after each: "
        + ", ".join(f"{b['rss_after_mib']:.1f}" for b in bursts)
        + f" MiB (before the first: {bursts[0]['rss_before_mib']:.1f}). "
        + ("Repeated bursts of the same node reach the same peak and settle at the same level: "
           "bounded, not growing with the frames sent."
           if len(bursts) > 1 and max(b["rss_peak_sampled_mib"] for b in bursts[1:])
           <= bursts[0]["rss_peak_sampled_mib"] * 1.05
           else "The peaks of later bursts are higher than the first's: run with more --repeat "
                "to see whether they level off." if len(bursts) > 1 else
           "Run with --repeat > 1 to see whether repeated bursts add up."),
    ]) + "\n"


def plot(path: Path, trace: list[dict], windows: list[tuple[float, float]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    t = [s["t_s"] for s in trace]
    ax.plot(t, [s["rss_mib"] for s in trace], label="VmRSS")
    ax.plot(t, [s["hwm_mib"] for s in trace], "--", label="VmHWM (peak)")
    ax.plot(t, [s["anon_mib"] for s in trace], lw=1, label="RssAnon")
    for i, window in enumerate(windows):
        ax.axvspan(*window, color="orange", alpha=0.3, label="burst published" if i == 0 else None)
    ax.set_xlabel("s")
    ax.set_ylabel("node MiB")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_burst(wire, pid, images, info, args, t0, sampler) -> dict:
    """One burst on the warm node: publish, wait until it settled, sample --after s more."""
    def wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return predicate()

    before_values = dict(wire.values)
    peak_reset = reset_peak(pid)
    time.sleep(0.5)
    before = soak.proc_status(pid)
    period = args.duration / args.frames
    start = time.monotonic()
    for i in range(args.frames):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        wire.send(images[i % len(images)], info)
    end = time.monotonic()
    # settled: every frame the node took is processed, skipped or an error, or (images the
    # synchroniser dropped for want of their CameraInfo are in none of those) its counts have
    # not moved for 2 s
    wait(lambda: wire.settled(quiet=2.0), args.timeout)
    settled_at = time.monotonic()
    time.sleep(args.after)
    after = soak.proc_status(pid)
    values = dict(wire.values)
    trace = [s for s in sampler.samples if start - t0 <= s["t_s"] <= time.monotonic() - t0]
    peak = max(trace, key=lambda s: s["rss_mib"]) if trace else {"rss_mib": 0.0, "t_s": 0.0}
    counts = {k: int(values.get(k, 0)) - int(before_values.get(k, 0)) for k in soak.COUNTS}
    hwm = after.get("VmHWM", 0.0)
    return {
        "frames_published": args.frames,
        "publish_s": round(end - start, 3),
        "publish_rate_hz": round(args.frames / (end - start), 1),
        "window_s": (round(start - t0, 3), round(end - t0, 3)),
        "rss_before_mib": round(before["VmRSS"], 1),
        "rss_peak_sampled_mib": peak["rss_mib"],
        "rss_peak_at_s_after_burst_start": round(peak["t_s"] - (start - t0), 2),
        "vmhwm_mib": round(hwm, 1),
        "vmhwm_reset_before_burst": peak_reset,
        "rss_after_mib": round(after["VmRSS"], 1),
        "peak_delta_mib": round(max(peak["rss_mib"], hwm if peak_reset else 0.0)
                                - before["VmRSS"], 1),
        "anon_peak_delta_mib": round(max((s["anon_mib"] for s in trace), default=0.0)
                                     - before["RssAnon"], 1),
        "shmem_peak_delta_mib": round(max((s["shmem_mib"] for s in trace), default=0.0)
                                      - before["RssShmem"], 1),
        "after_delta_mib": round(after["VmRSS"] - before["VmRSS"], 1),
        "settle_s_after_burst_end": round(settled_at - end, 2),
        **{f"burst_{k}": n for k, n in counts.items()},
        "burst_unaccounted": counts["frames_received"] - counts["frames_processed"]
        - counts["frames_skipped"] - counts["errors"],
        "not_taken_by_node": args.frames - counts["frames_received"],
        "sync_dropped": values.get("sync_dropped"),
        "keypoints_received_total": wire.outputs["keypoints"],
        "frames_processed_total": int(values.get("frames_processed", 0)),
        "node_latency_ms_p95_after": values.get("node_latency_ms_p95"),
        "after_diagnostics": values,
    }


def table(args, bursts: list[dict], first_rss: float, died) -> str:
    cols = [f"burst {i + 1}" for i in range(len(bursts))]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "--:|" * len(cols)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(b) for b in bursts) + " |")
    row("published (frames in s, Hz)",
        lambda b: f"{b['frames_published']} in {b['publish_s']:.2f} s ({b['publish_rate_hz']:.0f})")
    row("RSS before, MiB", lambda b: f"{b['rss_before_mib']}")
    row(f"RSS peak sampled every {args.interval * 1000:.0f} ms, MiB (s after start)",
        lambda b: f"{b['rss_peak_sampled_mib']} (+{b['rss_peak_at_s_after_burst_start']})")
    row("VmHWM, MiB (kernel's peak, reset before each burst)",
        lambda b: f"{b['vmhwm_mib']}" + ("" if b["vmhwm_reset_before_burst"] else " (not reset)"))
    row("peak - before, MiB (anon / shmem)",
        lambda b: f"{b['peak_delta_mib']:+.1f} ({b['anon_peak_delta_mib']:+.1f} / "
                  f"{b['shmem_peak_delta_mib']:+.1f})")
    row(f"RSS after (settled + {args.after:g} s), MiB (vs before)",
        lambda b: f"{b['rss_after_mib']} ({b['after_delta_mib']:+.1f})")
    row("RSS after vs before the first burst, MiB",
        lambda b: f"{b['rss_after_mib'] - first_rss:+.1f}")
    row("received / processed / skipped / errors",
        lambda b: f"{b['burst_frames_received']} / {b['burst_frames_processed']} / "
                  f"{b['burst_frames_skipped']} / {b['burst_errors']}")
    row("received, then dropped by the synchroniser", lambda b: str(b["burst_unaccounted"]))
    row("not taken by the node (replaced in its DDS reader history)",
        lambda b: str(b["not_taken_by_node"]))
    row("sync_dropped (node total, both inputs)", lambda b: str(b["sync_dropped"]))
    row("keypoints received / frames processed (totals)",
        lambda b: f"{b['keypoints_received_total']} / {b['frames_processed_total']}")
    row("node latency p95 after, ms (last 100 frames)",
        lambda b: str(b["node_latency_ms_p95_after"]))
    row("settled, s after the burst", lambda b: f"{b['settle_s_after_burst_end']}")
    lines.append(f"\nnode alive at the end: {'yes' if died is None else died}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from superseg_ros.ros.processes import child_environment, start_python, stop_process

    os.environ.update(child_environment())
    import rclpy

    settings = node_settings(soak.NODE_PARAMS + args.param)
    args.output.mkdir(parents=True, exist_ok=True)
    log = args.output / "node.log"
    images = soak.frame_messages(args.width, args.height)
    info = soak.camera_info(args.width, args.height)
    node_env = dict(os.environ, **dict(item.split("=", 1) for item in args.node_env))
    process = start_python(soak.node_arguments(args.model, NAMESPACE, args.param), log,
                           env=node_env, cwd=REPO)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("superseg_burst_client", context=context)
    wire = soak.Wire(node, NAMESPACE, depth=args.pub_depth)
    spinning = threading.Event()
    spinner = sampler = None
    bursts: list[dict] = []
    died = None
    try:
        try:
            wire.wait_for_node(process, args.timeout)
        except RuntimeError as exc:
            return soak.report_node_error("burst", exc, log)
        pid = soak.node_pid(process.pid)

        def spin():
            while not spinning.is_set():
                wire.executor.spin_once(timeout_sec=0.05)
        spinner = threading.Thread(target=spin, daemon=True, name="spin")
        spinner.start()

        # warm-up, one frame at a time: the RSS before the burst is the steady state
        for i in range(WARMUP):
            done = wire.outputs["keypoints"]
            wire.send(images[i % len(images)], info)
            deadline = time.monotonic() + 60
            while wire.outputs["keypoints"] <= done:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("no keypoints for a warm-up frame")
                time.sleep(0.01)
        time.sleep(1.5)
        rss_start = soak.proc_status(pid)["VmRSS"]
        t0 = time.monotonic()
        sampler = Sampler(pid, args.interval, t0)
        sampler.start()
        for _ in range(args.repeat):
            bursts.append(run_burst(wire, pid, images, info, args, t0, sampler))
            if process.poll() is not None:
                break
        died = None if process.poll() is None else f"exited with {process.returncode}"
    except RuntimeError as exc:
        return soak.report_node_error("burst", exc, log)
    finally:
        spinning.set()
        if spinner is not None:
            spinner.join()
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
        wire.close()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process(process)

    params = {"qos.depth": settings["qos"]["depth"], "qos.profile": settings["qos"]["profile"],
              "sync.queue_size": settings["sync"]["queue_size"],
              "sync.slop": settings["sync"]["slop"], "publisher_depth": args.pub_depth,
              "node_env": args.node_env}
    title = (f"burst: {args.repeat} x {args.frames} frames {args.width}x{args.height} rgb8 in "
             f"~{args.duration:g} s, qos.depth {params['qos.depth']}, sync.queue_size "
             f"{params['sync.queue_size']}" + (f", {' '.join(args.node_env)}"
                                              if args.node_env else ""))
    (args.output / "burst.json").write_text(json.dumps(
        {"config": {**vars(args), "output": str(args.output), "node_params": soak.NODE_PARAMS
                    + args.param, "node_pid": pid, "rss_after_warmup_mib": rss_start},
         "params": params, "bursts": bursts, "trace": sampler.samples},
        indent=2, default=str) + "\n")
    plot(args.output / "burst.png", sampler.samples, [b["window_s"] for b in bursts], title)
    print(f"# {title}\n")
    print(table(args, bursts, bursts[0]["rss_before_mib"], died))
    print(explain(settings, args, bursts))
    print(f"wrote {args.output / 'burst.json'}, {args.output / 'burst.png'} (node log {log})")
    return 0 if died is None else 1


if __name__ == "__main__":
    sys.exit(main())
