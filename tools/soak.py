"""Soak test: many frames through a running superseg_node; memory, latency and skips over time.

    tools/ros_env.sh .venv/bin/python tools/soak.py [--frames 10000] [--rate HZ] [--every 1000]
        [--width 320 --height 240] [--model PATH|random] [--output runs/soak]   (or: make soak)

superseg_node runs as a child process (python -m superseg_ros.ros.launch_cli, loopback-only DDS,
its own ROS domain) on the bundled model, namespace /soak, reliable input QoS, publishing what a
VO user subscribes to: keypoints, descriptors and stability_mask (the RViz images, mask, groups
and overlay, are off). This process publishes --frames rgb8 frames, each with a CameraInfo of the
same stamp, at a fixed --rate; the frames cycle through 50 different rendered scenes
(superseg_ros.demo.render_scene), built once as messages. It subscribes to the three outputs and
counts them.

Every --every frames it records the node process's RSS (VmRSS in /proc/<pid>/status, also VmHWM
and the anonymous/shared-memory parts) at once; the end-to-end latency p50/p95 of every keypoints
message that arrived here since the previous sample (the frame's stamp, set here when it was
sent, -> its keypoints received here: the whole window, not a snapshot); the machine's CPU busy
and steal shares over the window (/proc/stat: steal is time the hypervisor gave to other guests);
and the node's next /diagnostics: its own latency p50/p95 over its last 100 frames (header stamp
-> published), node latency (received -> published), processing p50/p95 (dequeued ->
published), frames received/processed/skipped, errors. RSS is also traced every second.

Output in --output: soak.json (config, samples, trace, final counts, verdict) and soak.png (RSS,
latency and skipped frames against the frame index); a markdown table of the samples and the
verdict goes to stdout. Targets (issue: "RSS growth below 5 % between frame 1,000 and frame
10,000, no error, and no latency drift"): the RSS of the last sample within 5 % of the first
sample's (frame --every), no error, the node alive to the end, and the window latency p50 of the
last sample at most 1.5x the first sample's (each over the --every frames before it). Exit 1 if one is missed, 0 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Targets of the issue.
MAX_RSS_GROWTH_PCT = 5.0
MAX_LATENCY_DRIFT = 1.5
SCENES = 50           # distinct frames, cycled
TRACE_PERIOD_S = 1.0  # RSS trace between samples
NAMESPACE = "soak"
# What the node runs with: reliable input QoS (the publisher here is reliable), the outputs a VO
# stack consumes, diagnostics twice a second so each sample is at most 0.5 s behind.
NODE_PARAMS = ["qos.profile:=reliable", "publish.overlay:=false", "publish.mask_image:=false",
               "publish.group_image:=false", "diagnostics_period:=0.5"]
OUTPUTS = ("keypoints", "descriptors", "stability_mask")
COUNTS = ("frames_received", "frames_processed", "frames_skipped", "errors")


# ------------------------------------------------------------------------------- /proc reading
def proc_status(pid: int) -> dict:
    """The kB fields of /proc/<pid>/status we use, in MiB; {} if the process is gone."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize")
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in fields:
                    out[key] = int(value.split()[0]) / 1024.0
                elif key == "Threads":
                    out[key] = int(value)
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    fields += [0] * (8 - len(fields))
    idle = fields[3] + fields[4]          # idle + iowait
    steal = fields[7]
    total = sum(fields[:8])               # guest time is already inside user/nice
    return total - idle - steal, steal, total


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """(p50, p95) of `values`, linear interpolation; (None, None) if empty."""
    if not values:
        return None, None
    ordered = sorted(values)

    def at(q):
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return round(at(0.5), 1), round(at(0.95), 1)


def report_node_error(tool: str, exc: Exception, log: Path) -> int:
    """Prints what went wrong with the node and the end of its log; the tool's exit code (1)."""
    print(f"{tool}: error: {exc}; the node's log ({log}):\n{log.read_text()[-4000:]}",
          file=sys.stderr)
    return 1


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's /proc/<pid>/task/<tid>/children)."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(k) for k in f.read().split()]
            except FileNotFoundError:
                pass
    except FileNotFoundError:
        pass
    return kids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def node_pid(root: int) -> int:
    """The process that runs superseg_node: `root` itself unless it started children (a launcher
    that spawns), then the deepest descendant whose command line names the node."""
    found, stack = root, [root]
    while stack:
        pid = stack.pop()
        for kid in children(pid):
            if any(s in cmdline(kid) for s in ("superseg_node", "launch_cli", "superseg_ros")):
                found = kid
            stack.append(kid)
    return found


# ------------------------------------------------------------------------------------ the node
def node_arguments(model: str | None, namespace: str, extra=()) -> list[str]:
    args = ["-m", "superseg_ros.ros.launch_cli", "--namespace", namespace]
    if model:
        args += ["--model", model]
    for param in [*NODE_PARAMS, *extra]:
        args += ["--param", param]
    return args


def camera_info(width: int, height: int):
    from sensor_msgs.msg import CameraInfo

    f = 0.9 * width
    return CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0])


def frame_messages(width: int, height: int, count: int = SCENES):
    """`count` different rgb8 Image messages (rendered street scenes)."""
    from superseg_ros.demo import render_scene
    from superseg_ros.ros.image_conversion import make_image

    return [make_image(render_scene(height, width, seed=i), "rgb8") for i in range(count)]


class Wire:
    """This side: publishes Image + CameraInfo to the namespaced node, counts its outputs and
    keeps its newest /diagnostics values."""

    def __init__(self, node, namespace: str, depth: int = 10):
        import rclpy.executors
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from superseg_msgs.msg import Descriptors, Keypoints, StabilityMask

        prefix = f"/{namespace.strip('/')}"
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.node, self.node_name = node, f"{prefix}/superseg_node"
        self.image_pub = node.create_publisher(Image, f"{prefix}/image", qos)
        self.info_pub = node.create_publisher(CameraInfo, f"{prefix}/camera_info", qos)
        self.keypoints_topic = f"{prefix}/superseg/keypoints"
        self.outputs = dict.fromkeys(OUTPUTS, 0)
        self.keypoints_total = 0
        self.latencies_ms: list[float] = []  # stamp (sent here) -> keypoints received here
        self._lock = threading.Lock()
        for name, kind in zip(OUTPUTS, (Keypoints, Descriptors, StabilityMask)):
            node.create_subscription(kind, f"{prefix}/superseg/{name}",
                                     lambda msg, name=name: self._on_output(name, msg), qos)
        self.values: dict = {}
        self.diag_seq = 0
        self._counts, self._counts_since = None, time.monotonic()
        self._diag_time = 0.0
        self.diag_waiters: list = []  # callables fed each new /diagnostics of the node
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)

    def _on_output(self, name, msg):
        with self._lock:
            self.outputs[name] += 1
            if name == "keypoints":
                self.keypoints_total += len(msg.x)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                now = self.node.get_clock().now().nanoseconds
                self.latencies_ms.append((now - stamp) / 1e6)

    def _on_diagnostics(self, array):
        for status in array.status:
            if status.name.startswith(f"{self.node_name}:"):
                self.values = {kv.key: kv.value for kv in status.values}
                self.diag_seq += 1
                self._diag_time = time.monotonic()
                counts = tuple(self.values.get(k) for k in COUNTS)
                if counts != self._counts:
                    self._counts, self._counts_since = counts, time.monotonic()
                for waiter in list(self.diag_waiters):
                    waiter(self.values)

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.executor.spin_once(timeout_sec=min(left, 0.05))
        return predicate()

    def wait_for_node(self, process, timeout: float) -> None:
        def ready():
            return process.poll() is not None or (
                self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0
                and self.node.count_publishers(self.keypoints_topic) > 0)
        if not self.spin_until(ready, timeout) or process.poll() is not None:
            raise RuntimeError("superseg_node did not start")
        self.spin_for(0.5)  # discovery settles both ways

    def send(self, image, info) -> None:
        """Publishes `info` then `image`, both stamped now (the node measures latency from it)."""
        stamp = self.node.get_clock().now().to_msg()
        image.header.stamp = stamp
        info.header.stamp = stamp
        self.info_pub.publish(info)
        self.image_pub.publish(image)

    def count(self, key: str) -> int:
        return int(self.values.get(key, 0))

    def unaccounted(self) -> int:
        """Images the node received but neither processed, skipped nor counted as an error: in
        the synchroniser (waiting for, or dropped without, a CameraInfo: sync_dropped), the
        LatestFrame slot, or being processed."""
        v = self.values
        return int(v["frames_received"]) - int(v["frames_processed"]) - \
            int(v["frames_skipped"]) - int(v["errors"]) if v else 0

    def quiet_for(self) -> float:
        """Seconds since the node's counts (received, processed, skipped, errors) last changed."""
        return time.monotonic() - self._counts_since

    def settled(self, sent: int | None = None, quiet: float = 2.0) -> bool:
        """The node got every frame sent (if `sent`) and is done with them: each one processed,
        skipped or an error, or else its counts have not moved for `quiet` s (an image the
        synchroniser dropped for want of its CameraInfo is in none of those counts)."""
        v = self.values
        if not v or (sent is not None and int(v["frames_received"]) < sent):
            return False
        if time.monotonic() - self._diag_time > 1.5:  # diagnostics (every 0.5 s) are stale
            return False
        return self.unaccounted() == 0 or self.quiet_for() >= quiet

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.executor.shutdown()


def ms(values: dict, key: str):
    value = values.get(key)
    return None if value is None else float(value)


def diag_fields(values: dict) -> dict:
    out = {k: ms(values, k) for k in ("latency_ms_p50", "latency_ms_p95", "node_latency_ms_p50",
                                      "node_latency_ms_p95", "processing_ms_p50",
                                      "processing_ms_p95", "stage_inference_ms_p50")}
    for key in ("frames_received", "frames_processed", "frames_skipped", "errors"):
        out[key] = int(values[key]) if key in values else None
    out["sync_dropped"] = values.get("sync_dropped")
    out["rate_hz"] = ms(values, "rate_hz")
    return out


# -------------------------------------------------------------------------------------- report
def verdict(samples: list[dict], final: dict, died: str | None) -> dict:
    timed = [s for s in samples if s["frame"] > 0]
    first, last = (timed[0], timed[-1]) if timed else (None, None)
    v: dict = {"node_died": died, "checks": {}}
    if first and first.get("rss_mib") and last.get("rss_mib"):
        growth = 100.0 * (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"]
        v.update(rss_first_frame=first["frame"], rss_first_mib=first["rss_mib"],
                 rss_last_frame=last["frame"], rss_last_mib=last["rss_mib"],
                 rss_growth_pct=round(growth, 2))
        v["checks"]["rss_growth"] = growth < MAX_RSS_GROWTH_PCT
    else:
        v["checks"]["rss_growth"] = False
    # latency: over every frame of a sample's window (not the node's last-100 snapshot, which a
    # few seconds of load elsewhere on the machine can move)
    if first and first.get("window_latency_ms_p50") and \
            last.get("window_latency_ms_p50") is not None:
        drift = last["window_latency_ms_p50"] / first["window_latency_ms_p50"]
        v.update(latency_p50_first_ms=first["window_latency_ms_p50"],
                 latency_p50_last_ms=last["window_latency_ms_p50"],
                 latency_p50_drift=round(drift, 3))
        if first.get("window_latency_ms_p95") and last.get("window_latency_ms_p95") is not None:
            v["latency_p95_drift"] = round(last["window_latency_ms_p95"]
                                           / first["window_latency_ms_p95"], 3)
        p50s = [(s["frame"], s["window_latency_ms_p50"]) for s in timed
                if s.get("window_latency_ms_p50") is not None]
        if len(p50s) >= 2:  # least-squares slope, informative
            xs, ys = zip(*p50s)
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            v["latency_p50_slope_ms_per_1000_frames"] = round(
                1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3) if den else 0.0
        v["checks"]["latency_drift"] = drift <= MAX_LATENCY_DRIFT
    else:
        v["checks"]["latency_drift"] = False
    errors = final.get("errors")
    v["errors"] = errors
    v["checks"]["no_errors"] = errors == 0
    v["checks"]["node_alive"] = died is None
    processed = final.get("frames_processed")
    v["keypoints_received"] = final.get("outputs", {}).get("keypoints")
    v["frames_processed"] = processed
    v["frames_skipped"] = final.get("frames_skipped")
    # informative (not a target): every processed frame's keypoints reached this subscriber
    v["outputs_complete"] = processed is not None and all(
        n == processed for n in final.get("outputs", {}).values())
    v["passed"] = all(v["checks"].values())
    return v


def fmt(value, spec=".1f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def markdown(samples: list[dict], v: dict, config: dict, final: dict) -> str:
    rows = [
        f"# soak: {config['frames']} frames {config['width']}x{config['height']} rgb8 at "
        f"{config['rate']} Hz, model {config['model_name']}, node pid {config['node_pid']}",
        "",
        "Latency over the window: every keypoints message received since the previous row (stamp "
        "-> received here). The node's columns are its /diagnostics snapshot (its last 100 "
        "frames). CPU: the whole machine over the window.",
        "",
        "| frame | RSS MiB | RSS vs first % | latency p50/p95 ms (window) | msgs | "
        "node: latency p50/p95 ms | node: processing p50/p95 ms | received | processed | "
        "skipped | errors | CPU busy / steal % | load 1m |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    base = v.get("rss_first_mib")
    for s in samples:
        rel = "-" if not base or s["frame"] == 0 else \
            f"{100 * (s['rss_mib'] - base) / base:+.2f}"
        rows.append(
            f"| {s['frame']} | {fmt(s.get('rss_mib'))} | {rel} | "
            f"{fmt(s.get('window_latency_ms_p50'))} / {fmt(s.get('window_latency_ms_p95'))} | "
            f"{fmt(s.get('window_messages'))} | "
            f"{fmt(s.get('latency_ms_p50'))} / {fmt(s.get('latency_ms_p95'))} | "
            f"{fmt(s.get('processing_ms_p50'))} / {fmt(s.get('processing_ms_p95'))} | "
            f"{fmt(s.get('frames_received'))} | {fmt(s.get('frames_processed'))} | "
            f"{fmt(s.get('frames_skipped'))} | {fmt(s.get('errors'))} | "
            f"{fmt(s.get('cpu_busy_pct'))} / {fmt(s.get('cpu_steal_pct'))} | "
            f"{fmt(s.get('loadavg_1m'), '.2f')} |")
    c = v["checks"]

    def ok(name):
        return "met" if c.get(name) else "MISSED"
    rows += [
        "",
        "| target | value | |",
        "|---|---|---|",
        f"| RSS growth < {MAX_RSS_GROWTH_PCT:g} % (frame {v.get('rss_first_frame', '-')} -> "
        f"{v.get('rss_last_frame', '-')}) | {fmt(v.get('rss_first_mib'))} -> "
        f"{fmt(v.get('rss_last_mib'))} MiB, {fmt(v.get('rss_growth_pct'), '+.2f')} % | "
        f"{ok('rss_growth')} |",
        f"| no error | {fmt(v.get('errors'))} | {ok('no_errors')} |",
        f"| node alive | {'yes' if v['node_died'] is None else v['node_died']} | "
        f"{ok('node_alive')} |",
        f"| window latency p50 drift <= {MAX_LATENCY_DRIFT:g}x | {fmt(v.get('latency_p50_first_ms'))}"
        f" -> {fmt(v.get('latency_p50_last_ms'))} ms, x{fmt(v.get('latency_p50_drift'), '.2f')}"
        f" (p95 x{fmt(v.get('latency_p95_drift'), '.2f')}, slope "
        f"{fmt(v.get('latency_p50_slope_ms_per_1000_frames'), '+.2f')} ms/1000 frames) | "
        f"{ok('latency_drift')} |",
        "",
        f"Final ({'settled' if final.get('settled') else 'NOT settled'}): sent "
        f"{final.get('sent')}, received {fmt(final.get('frames_received'))}, processed "
        f"{fmt(final.get('frames_processed'))}, skipped {fmt(final.get('frames_skipped'))}, "
        f"errors {fmt(final.get('errors'))}, received but none of these "
        f"{fmt(final.get('unaccounted'))}, sync dropped {fmt(final.get('sync_dropped'))}; "
        "outputs received here: "
        + ", ".join(f"{k} {n}" for k, n in final.get("outputs", {}).items())
        + (" (one per processed frame)" if v["outputs_complete"]
           else " (NOT one per processed frame)")
        + f"; node RSS at the end {fmt(final.get('rss_mib'))} MiB (peak VmHWM "
        f"{fmt(final.get('hwm_mib'))} MiB); publish rate achieved "
        f"{fmt(final.get('achieved_rate_hz'), '.2f')} Hz over {fmt(final.get('duration_s'))} s.",
        "",
        f"Verdict: {'PASS' if v['passed'] else 'FAIL'}",
    ]
    return "\n".join(rows) + "\n"


def plot(path: Path, samples: list[dict], trace: list[dict], config: dict, v: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [s for s in samples if s["frame"] > 0 and s.get("rss_mib")]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    if trace:
        ax.plot([t["frame"] for t in trace], [t["rss_mib"] for t in trace], color="0.7", lw=1,
                label=f"VmRSS every {TRACE_PERIOD_S:g} s")
    ax.plot([s["frame"] for s in samples if s.get("rss_mib")],
            [s["rss_mib"] for s in samples if s.get("rss_mib")], "o-", label="VmRSS at samples")
    if timed:
        limit = timed[0]["rss_mib"] * (1 + MAX_RSS_GROWTH_PCT / 100)
        ax.axhline(limit, color="r", ls="--", lw=1,
                   label=f"+{MAX_RSS_GROWTH_PCT:g} % of frame {timed[0]['frame']}")
    ax.set_ylabel("node RSS (MiB)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"soak: {config['frames']} frames {config['width']}x{config['height']} at "
                 f"{config['rate']} Hz, {config['model_name']} — "
                 f"{'PASS' if v['passed'] else 'FAIL'}", fontsize=10)
    ax = axes[1]
    frames = [s["frame"] for s in timed]
    for key, style, label in (
            ("window_latency_ms_p50", "o-", "latency p50 (all frames of the window)"),
            ("window_latency_ms_p95", "o--", "latency p95 (all frames of the window)"),
            ("processing_ms_p50", "s-", "node processing p50 (its last 100)"),
            ("processing_ms_p95", "s--", "node processing p95 (its last 100)")):
        ax.plot(frames, [s.get(key) for s in timed], style, label=label)
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    ax.plot(frames, [s.get("frames_skipped") for s in timed], "o-", label="skipped (total)")
    ax.plot(frames, [s.get("errors") for s in timed], "x-", label="errors (total)")
    ax.set_ylim(bottom=0, top=max([1] + [s.get("frames_skipped") or 0 for s in timed]
                                    + [s.get("errors") or 0 for s in timed]) * 1.1)
    ax.set_ylabel("frames")
    ax.set_xlabel("frames sent")
    ax.legend(loc="upper left", fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=10.0,
                   help="Hz the frames are published at (default 10: on two CPU cores the "
                        "bundled model takes ~75 ms p50 / ~85-115 ms p95 per 320x240 frame, so "
                        "10 Hz is processed without skips; at 15 or 30 Hz about half the frames "
                        "are skipped)")
    p.add_argument("--every", type=int, default=1000, help="frames between samples")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--model", default=None, metavar="PATH|random",
                   help="checkpoint for the node (default: the bundled models/superseg.pt)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (after the soak's own)")
    p.add_argument("--output", type=Path, default=REPO / "runs" / "soak",
                   help="folder for soak.json, soak.png and the node's log")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="s to wait for the node to start, and to settle at the end")
    args = p.parse_args(argv)
    if args.frames < 1 or args.every < 1 or args.rate <= 0 or args.width < 8 or args.height < 8:
        p.error("--frames and --every must be >= 1, --rate > 0, the image at least 8x8")
    if args.every > args.frames:
        p.error("--every must not exceed --frames")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from superseg_ros.ros.processes import child_environment, start_python, stop_process

    os.environ.update(child_environment())  # loopback-only, the node's own ROS domain
    import rclpy
    from tqdm import tqdm

    args.output.mkdir(parents=True, exist_ok=True)
    log = args.output / "node.log"
    images = frame_messages(args.width, args.height)
    info = camera_info(args.width, args.height)
    process = start_python(node_arguments(args.model, NAMESPACE, args.param), log, cwd=REPO)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("superseg_soak_client", context=context)
    wire = Wire(node, NAMESPACE)
    samples, trace, pending = [], [], []
    final: dict = {}
    died = None
    config = {"frames": args.frames, "rate": args.rate, "every": args.every,
              "width": args.width, "height": args.height, "model": args.model or "bundled",
              "node_params": NODE_PARAMS + args.param, "scenes": SCENES,
              "cpu_count": os.cpu_count(), "ros_domain_id": os.environ.get("ROS_DOMAIN_ID"),
              "node_log": str(log)}

    def on_diag(values):  # completes the samples waiting for the node's next /diagnostics
        while pending:
            sample = pending.pop(0)
            sample.update(diag_fields(values))
            sample["diag_delay_s"] = round(time.monotonic() - sample.pop("_t"), 3)
    wire.diag_waiters.append(on_diag)

    window = {"latencies": 0, "cpu": cpu_jiffies()}  # where the previous sample ended

    def sample_now(frame: int) -> dict:
        status = proc_status(pid)
        with wire._lock:
            outputs = dict(wire.outputs)
            latencies = wire.latencies_ms[window["latencies"]:]
            window["latencies"] = len(wire.latencies_ms)
        cpu, (busy0, steal0, total0) = cpu_jiffies(), window["cpu"]
        window["cpu"] = cpu
        elapsed = max(cpu[2] - total0, 1)
        p50, p95 = percentiles(latencies)
        sample = {"frame": frame, "t_s": round(time.monotonic() - t_start, 2),
                  "rss_mib": round(status.get("VmRSS", 0.0), 2) or None,
                  "hwm_mib": round(status.get("VmHWM", 0.0), 2) or None,
                  "anon_mib": round(status.get("RssAnon", 0.0), 2) or None,
                  "shmem_mib": round(status.get("RssShmem", 0.0), 2) or None,
                  "threads": status.get("Threads"),
                  "loadavg_1m": round(os.getloadavg()[0], 2),
                  "window_latency_ms_p50": p50, "window_latency_ms_p95": p95,
                  "window_messages": len(latencies),
                  "cpu_busy_pct": round(100 * (cpu[0] - busy0) / elapsed, 1),
                  "cpu_steal_pct": round(100 * (cpu[1] - steal0) / elapsed, 1),
                  "keypoints_msgs": outputs["keypoints"], "_t": time.monotonic()}
        samples.append(sample)
        return sample

    try:
        try:
            wire.wait_for_node(process, args.timeout)
        except RuntimeError as exc:
            return report_node_error("soak", exc, log)
        pid = node_pid(process.pid)
        config.update(node_pid=pid, node_cmdline=cmdline(pid), launcher_pid=process.pid)
        wire.spin_until(lambda: wire.values, 5)
        config["model_name"] = wire.values.get("model", "?")
        config["device"] = wire.values.get("device", "?")
        config["semantic_filter"] = wire.values.get("semantic_filter", "?")
        t_start = time.monotonic()
        sample_now(0)["_t"] = time.monotonic()  # before any frame: RSS after start-up
        pending.append(samples[-1])
        wire.spin_until(lambda: not pending, 2)

        period = 1.0 / args.rate
        t0 = next_trace = time.monotonic()
        progress = tqdm(range(args.frames), desc="soak", unit="frame", file=sys.stderr,
                        mininterval=2.0)
        for i in progress:
            target = t0 + i * period
            while True:
                left = target - time.monotonic()
                if left <= 0:
                    break
                wire.executor.spin_once(timeout_sec=min(left, 0.05))
            if process.poll() is not None:
                died = f"exited with {process.returncode} after {i} frames"
                break
            wire.send(images[i % len(images)], info)
            sent = i + 1
            if time.monotonic() >= next_trace:
                status = proc_status(pid)
                trace.append({"frame": sent, "t_s": round(time.monotonic() - t_start, 2),
                              "rss_mib": round(status.get("VmRSS", 0.0), 2)})
                next_trace += TRACE_PERIOD_S
            if sent % args.every == 0:
                pending.append(sample_now(sent))
                v = wire.values
                progress.set_postfix(rss=f"{samples[-1]['rss_mib']:.0f}MiB",
                                     p50=v.get("latency_ms_p50"), skip=v.get("frames_skipped"),
                                     err=v.get("errors"), refresh=False)
        else:
            sent = args.frames
        duration = time.monotonic() - t0
        progress.close()
        if died is None:
            wire.spin_until(lambda: not pending and wire.settled(sent), args.timeout)
            # one more diagnostics period, and the last outputs in flight
            wire.spin_until(lambda: min(wire.outputs.values()) >= wire.count("frames_processed")
                            and wire.settled(sent), 5)
            wire.spin_for(0.6)
            if process.poll() is not None:
                died = f"exited with {process.returncode} after all frames were sent"
        for sample in pending:  # never completed (node died)
            sample.pop("_t", None)
        status = proc_status(pid)
        final = {"sent": sent, **diag_fields(wire.values), "outputs": dict(wire.outputs),
                 "keypoints_per_frame": round(wire.keypoints_total / max(wire.outputs[
                     "keypoints"], 1), 1),
                 "rss_mib": round(status.get("VmRSS", 0.0), 2) or None,
                 "hwm_mib": round(status.get("VmHWM", 0.0), 2) or None,
                 "duration_s": round(duration, 1),
                 "achieved_rate_hz": round(sent / duration, 2) if duration else None,
                 "unaccounted": wire.unaccounted(),
                 "settled": wire.settled(sent)}
        if died is None and not final["settled"]:
            print("soak: warning: the node never received every frame sent, or its counts "
                  "kept changing", file=sys.stderr)
    finally:
        wire.close()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process(process)
    if died is None and process.returncode not in (0, None):
        final["node_exit_code"] = process.returncode
    v = verdict(samples, final, died)
    result = {"config": config, "samples": samples, "rss_trace": trace, "final": final,
              "verdict": v}
    (args.output / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(args.output / "soak.png", samples, trace, config, v)
    print(markdown(samples, v, config, final), end="")
    print(f"\nwrote {args.output / 'soak.json'}, {args.output / 'soak.png'} (node log {log})")
    if died:
        print(f"soak: the node died: {died}; the end of its log:\n{log.read_text()[-3000:]}",
              file=sys.stderr)
    return 0 if v["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
