"""superseg-record: record topics (by default the superseg node's outputs) into a ROS 2 bag, plus a
JSON summary next to it: messages and rate per topic, latency (receive time - header stamp; only
when the stamps are live, else the summary says they are not), for superseg_msgs/Keypoints the
keypoints per frame and the share flagged unstable ("filter off" when no filter ran), and with
/diagnostics recorded the node's own latency (input received -> published).

Subscriptions are raw (no deserialisation in the callback); each topic is subscribed as soon as a
publisher appears, with its type from the ROS graph and its .msg definition registered in the bag.
Stops on --duration, --max-messages, SIGINT or SIGTERM, and always finalises the bag.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from ..bags import STORAGES, BagError, BagWriter, message_class, summarize_bag, typestore

PROG = "superseg-record"
DEFAULT_TOPICS = ["/superseg/keypoints", "/superseg/descriptors", "/superseg/stability_mask",
                  "/superseg/overlay"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, type=Path, help="bag folder to create")
    p.add_argument("--topics", nargs="+", default=DEFAULT_TOPICS, metavar="TOPIC",
                   help=f"topics to record (default: {' '.join(DEFAULT_TOPICS)})")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    p.add_argument("--max-messages", type=int, metavar="N", help="stop after N messages in all")
    p.add_argument("--storage", default="mcap", choices=STORAGES)
    p.add_argument("--summary", type=Path, metavar="JSON",
                   help="summary path (default: <output>.summary.json)")
    p.add_argument("--qos", choices=("auto", "reliable", "best-effort"), default="auto",
                   help="auto: reliable unless a publisher offers only best effort")
    p.add_argument("--depth", type=int, default=100, help="subscription queue depth")
    p.add_argument("--force", action="store_true", help="replace an existing bag at --output")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


class Recorder:
    """Subscribes to the wanted topics as their publishers appear and writes raw messages."""

    def __init__(self, node, bag: BagWriter, topics: list[str], qos: str, depth: int,
                 max_messages: int | None, log):
        self.node, self.bag, self.wanted = node, bag, list(topics)
        self.qos, self.depth, self.max_messages, self.log = qos, depth, max_messages, log
        self.subscriptions: dict[str, object] = {}
        self.skipped: set[str] = set()
        self.total = 0
        self.full = False

    def discover(self) -> None:
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.subscriptions or topic in self.skipped or not types.get(topic):
                continue
            msgtype = types[topic][0]
            try:
                cls = message_class(msgtype)
                self.bag.add_topic(topic, msgtype)
            except BagError as exc:  # one unknown type must not stop the others
                self.log(f"not recording {topic}: {exc}")
                self.skipped.add(topic)
                continue
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, self._callback(topic), self.qos_for(topic), raw=True)
            self.log(f"recording {topic} ({msgtype})")

    def qos_for(self, topic: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        reliability = ReliabilityPolicy.RELIABLE
        if self.qos == "best-effort" or (self.qos == "auto" and any(
                info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                for info in self.node.get_publishers_info_by_topic(topic))):
            # a reliable reader would not match a best-effort writer
            reliability = ReliabilityPolicy.BEST_EFFORT
        return QoSProfile(depth=self.depth, reliability=reliability)

    def _callback(self, topic: str):
        def receive(raw: bytes) -> None:
            if self.full:
                return
            # Wall-clock receive time: header stamps come from the same clock, so
            # receive - stamp is the pipeline latency.
            self.bag.write_raw(topic, time.time_ns(), raw)
            self.total += 1
            self.full = self.max_messages is not None and self.total >= self.max_messages
        return receive


def drain(node, recorder: Recorder, limit: float = 2.0) -> None:
    """On a signal, take what DDS already delivered before closing the bag."""
    import rclpy

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = recorder.total
        rclpy.spin_once(node, timeout_sec=0.05)
        if recorder.total == before:
            return


def write_summary(path: Path, summary: dict) -> None:
    from ..fileio import write_atomically

    text = json.dumps(summary, indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def validate(args) -> Path:
    if args.duration is not None and not args.duration > 0:
        raise BagError(f"--duration must be positive, got {args.duration}")
    if args.max_messages is not None and args.max_messages < 1:
        raise BagError(f"--max-messages must be at least 1, got {args.max_messages}")
    if args.depth < 1:
        raise BagError(f"--depth must be at least 1, got {args.depth}")
    bad = [t for t in args.topics if not t.startswith("/")]
    if bad:
        raise BagError(f"topics must be absolute (start with '/'): {', '.join(bad)}")
    return args.summary or args.output.with_name(args.output.name + ".summary.json")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary_path = validate(args)
        bag = BagWriter(args.output, args.storage, args.force, store=typestore())
    except BagError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    def log(text):
        if not args.quiet:
            print(f"{PROG}: {text}", file=sys.stderr)

    from ..ros.loopback import apply_loopback_environment, require_loopback

    apply_loopback_environment()  # before rclpy.init(): the RMW reads it at participant creation
    require_loopback()
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    stop = {"why": None}

    def on_signal(signum, _frame):
        stop["why"] = signal.Signals(signum).name

    # argv is ours (argparse): rcl would read OLD:=NEW of --remap as a deprecated remap rule
    rclpy.init(args=sys.argv[:1], signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node = rclpy.create_node("superseg_record")
    recorder = Recorder(node, bag, args.topics, args.qos, args.depth, args.max_messages, log)
    started = time.monotonic()
    next_discovery = 0.0
    try:
        while stop["why"] is None:
            now = time.monotonic()
            if now >= next_discovery:  # publishers may appear at any time
                recorder.discover()
                next_discovery = now + 0.5
            rclpy.spin_once(node, timeout_sec=0.05)
            if recorder.full:
                stop["why"] = "max-messages"
            elif args.duration is not None and now - started >= args.duration:
                stop["why"] = "duration"
        if stop["why"].startswith("SIG"):
            drain(node, recorder)
    finally:
        for sub in recorder.subscriptions.values():
            node.destroy_subscription(sub)
        node.destroy_node()
        rclpy.try_shutdown()
        elapsed = time.monotonic() - started
        if recorder.total:
            bag.close()
        else:
            bag.abort()

    if recorder.total:
        summary = summarize_bag(args.output)
    else:
        summary = {"bag": None, "messages": 0, "topics": {}}
    for topic in args.topics:  # say which wanted topics never published
        summary["topics"].setdefault(topic, {"type": None, "messages": 0})
    summary.update(recorded_s=round(elapsed, 3), stopped_by=stop["why"])
    write_summary(summary_path, summary)
    counts = ", ".join(f"{t} {v['messages']}" for t, v in summary["topics"].items())
    if not recorder.total:
        print(f"{PROG}: error: no messages on {' '.join(args.topics)} in {elapsed:.1f} s "
              f"(is the publisher running, on loopback?); no bag written, summary {summary_path}",
              file=sys.stderr)
        return 1
    print(f"{PROG}: {recorder.total} messages ({counts}) in {elapsed:.1f} s, stopped by "
          f"{stop['why']} -> {args.output}, summary {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
