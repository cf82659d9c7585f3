"""superseg-play: replay a ROS 2 bag onto its recorded topics at the recorded timing (no rosbag2).

Messages are published as the stored CDR bytes (no deserialisation), each at
start + (t - t_first) / rate-factor of wall-clock time, so a slow read never accumulates drift.
DDS stays on loopback (superseg_ros.ros.loopback). Without --restamp the headers keep their
recorded stamps, like `ros2 bag play`; no /clock is published.

Playback starts once the topics have subscribers (up to --wait-for-subscribers seconds): a node
started at the same time would otherwise miss the first frames while discovery matches it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ..bags import BagError, bag_topics, header_stamp_ns, iter_bag, message_class, open_reader, \
    with_header_stamp

PROG = "superseg-play"
DEFAULT_WAIT_S = 30.0
# Once one topic has a subscriber, how long the others get to follow: one participant's
# endpoints are discovered together, so a topic still unmatched after this has no subscriber.
OTHERS_GRACE_S = 2.0


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("bag", type=Path, help="bag folder (metadata.yaml + .mcap/.db3)")
    p.add_argument("--rate-factor", type=float, default=1.0,
                   help="playback speed: 2 = twice as fast (default 1)")
    p.add_argument("--loop", action="store_true", help="replay until interrupted")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="SECONDS",
                   help="skip the bag's first SECONDS")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics")
    p.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW",
                   help="publish topic OLD as NEW (repeatable)")
    p.add_argument("--qos", choices=("reliable", "sensor-data"), default="reliable",
                   help="reliable depth 10 (default) or best-effort sensor-data QoS")
    p.add_argument("--restamp", action="store_true",
                   help="shift header stamps so they match the replay time (stamps that were "
                        "equal stay equal); for latency measurements and --loop")
    p.add_argument("--wait-for-subscribers", type=float, default=DEFAULT_WAIT_S,
                   metavar="SECONDS",
                   help="before playing, wait up to SECONDS until the topics have subscribers "
                        f"(default {DEFAULT_WAIT_S:g}; 0 = play at once)")
    p.add_argument("--delay", type=float, default=0.5, metavar="SECONDS",
                   help="pause after the wait so the subscribers' side of discovery completes "
                        "and they get the first message (default 0.5)")
    p.add_argument("--ack-timeout", type=float, default=3.0, metavar="SECONDS",
                   help="reliable QoS: at the end, wait up to SECONDS until subscribers have "
                        "acknowledged everything (a lost sample is resent after Fast DDS's "
                        "3 s heartbeat); default 3")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def parse_remaps(remaps: list[str], topics: dict) -> dict[str, str]:
    out = {}
    for item in remaps:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            raise BagError(f"--remap {item!r}: expected OLD:=NEW, e.g. "
                           f"/camera/image_raw:=/cam/image")
        if old not in topics:
            raise BagError(f"--remap {item!r}: {old} is not in the bag "
                           f"(topics: {', '.join(sorted(topics))})")
        out[old] = new
    return out


def starts_with_header(cls) -> bool:
    fields = list(cls.get_fields_and_field_types().items())
    return bool(fields) and fields[0] == ("header", "std_msgs/Header")


def plan(args) -> tuple[dict[str, tuple[str, object]], dict[str, str], int | None]:
    """Validate the input before ROS starts: {topic: (msgtype, class)}, the remaps and the
    first receive time to play (None = from the start)."""
    if not args.rate_factor > 0:
        raise BagError(f"--rate-factor must be positive, got {args.rate_factor}")
    if min(args.start_offset, args.wait_for_subscribers, args.delay, args.ack_timeout) < 0:
        raise BagError("--start-offset, --wait-for-subscribers, --delay and --ack-timeout "
                       "cannot be negative")
    available = bag_topics(args.bag)
    if not available:
        raise BagError(f"{args.bag} has no topics")
    wanted = args.topics or sorted(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise BagError(f"not in the bag: {', '.join(unknown)} "
                       f"(topics: {', '.join(sorted(available))})")
    remaps = parse_remaps(args.remap, available)
    classes = {t: (available[t][0], message_class(available[t][0])) for t in wanted}
    start_ns = None
    if args.start_offset:
        reader = open_reader(args.bag)
        start, duration = reader.start_time, reader.duration
        reader.close()
        if args.start_offset * 1e9 > duration:
            raise BagError(f"--start-offset {args.start_offset:g} s is past the end of the bag "
                           f"({duration / 1e9:.2f} s long)")
        start_ns = start + round(args.start_offset * 1e9)
    return classes, remaps, start_ns


def qos_profile(name: str):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if name == "sensor-data":
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def wait_for_subscribers(publishers: dict, timeout: float, quiet: bool) -> list[str]:
    """Wait until every topic has a subscriber, or some have and the rest did not follow within
    OTHERS_GRACE_S, or `timeout`; returns the topics without one (said on stderr)."""
    def missing():
        return [t for t, p in publishers.items() if p.get_subscription_count() == 0]

    started = time.monotonic()
    deadline, first_match = started + timeout, None
    if missing() and not quiet:
        print(f"{PROG}: waiting up to {timeout:g} s for subscribers on {', '.join(missing())} "
              f"(--wait-for-subscribers 0 plays at once)", file=sys.stderr)
    while missing() and time.monotonic() < deadline:
        if first_match is None and len(missing()) < len(publishers):
            first_match = time.monotonic()
            deadline = min(deadline, first_match + OTHERS_GRACE_S)
        time.sleep(0.02)
    unmatched = missing()
    if unmatched and not quiet:
        print(f"{PROG}: no subscriber on {', '.join(unmatched)} after "
              f"{time.monotonic() - started:.1f} s; playing anyway (those messages reach "
              f"nobody)", file=sys.stderr)
    return unmatched


def play_once(args, publishers: dict, restamp_topics: set, start_ns: int | None) -> int:
    """One pass over the bag; returns the number of messages published."""
    count, t_first, wall0, shift = 0, None, 0.0, 0
    for topic, t_ns, raw, _ in iter_bag(args.bag, publishers.keys(), start_ns=start_ns):
        if t_first is None:  # timing and restamp offsets start at the first played message
            t_first, wall0 = t_ns, time.monotonic()
            shift = time.time_ns() - t_ns
        delay = wall0 + (t_ns - t_first) / 1e9 / args.rate_factor - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if topic in restamp_topics:
            raw = with_header_stamp(raw, header_stamp_ns(raw) + shift)
        publishers[topic].publish(bytes(raw))  # rclpy publishes bytes as serialized data
        count += 1
    return count


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        classes, remaps, start_ns = plan(args)
    except BagError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    from ..ros.loopback import apply_loopback_environment, require_loopback

    apply_loopback_environment()  # before rclpy.init(): the RMW reads it at participant creation
    require_loopback()
    import rclpy
    from rclpy.duration import Duration
    from rclpy.signals import SignalHandlerOptions

    # Our own handlers: SIGINT/SIGTERM end the replay between two messages.
    # argv is ours (argparse): rcl would read OLD:=NEW of --remap as a deprecated remap rule
    rclpy.init(args=sys.argv[:1], signal_handler_options=SignalHandlerOptions.NO)
    # Set explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = rclpy.create_node("superseg_play")
    qos = qos_profile(args.qos)
    publishers = {t: node.create_publisher(cls, remaps.get(t, t), qos)
                  for t, (_, cls) in classes.items()}
    restamp = {t for t, (_, cls) in classes.items() if args.restamp and starts_with_header(cls)}

    total, passes, started, stopped = 0, 0, time.monotonic(), False
    try:
        if args.wait_for_subscribers:
            wait_for_subscribers(publishers, args.wait_for_subscribers, args.quiet)
        time.sleep(args.delay)
        while True:
            n = play_once(args, publishers, restamp, start_ns)
            total, passes = total + n, passes + 1
            if not args.loop or n == 0:
                break
        if args.qos == "reliable":  # let reliable readers receive the tail before we vanish
            deadline = time.monotonic() + args.ack_timeout
            for p in publishers.values():
                p.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:  # the normal way to end --loop: not an error
        stopped = True
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if not args.quiet:
        names = ", ".join(remaps.get(t, t) for t in publishers)
        how = "stopped after" if stopped else "published"
        print(f"{PROG}: {how} {total} messages on {names} in {time.monotonic() - started:.2f} s"
              + (f" ({passes} passes)" if args.loop else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
