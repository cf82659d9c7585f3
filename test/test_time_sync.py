"""The pure-Python approximate time synchroniser, fed real Image/CameraInfo messages by hand."""

import threading
import types

import pytest

msgs = pytest.importorskip("sensor_msgs.msg")

from superseg_ros.ros.time_sync import (  # noqa: E402
    ApproximateTimeSync, ApproximateTimeSynchronizer, message_filters_available, stamp_to_ns)

IMAGE, INFO = 0, 1


def stamped(cls, t: float, tag: str = ""):
    msg = cls()
    ns = round(t * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
    msg.header.frame_id = tag
    return msg


def image(t, tag=""):
    return stamped(msgs.Image, t, tag)


def info(t, tag=""):
    return stamped(msgs.CameraInfo, t, tag)


@pytest.fixture
def pairs():
    return []


def make_sync(pairs, queue_size=10, slop=0.01, num_inputs=2):
    return ApproximateTimeSync(num_inputs=num_inputs, queue_size=queue_size, slop=slop,
                               callback=lambda *m: pairs.append(m))


def tags(pairs):
    return [tuple(m.header.frame_id for m in p) for p in pairs]


def test_pairs_by_stamp_within_slop(pairs):
    sync = make_sync(pairs, slop=0.01)
    assert sync.add(IMAGE, image(100.000, "i0")) is None
    emitted = sync.add(INFO, info(100.004, "c0"))  # 4 ms apart: within 10 ms
    assert tags(pairs) == [("i0", "c0")] and emitted == pairs[0]
    assert isinstance(pairs[0][0], msgs.Image) and isinstance(pairs[0][1], msgs.CameraInfo)
    sync.add(IMAGE, image(100.100, "i1"))
    sync.add(INFO, info(100.120, "c1"))  # 20 ms apart: no pair
    assert len(pairs) == 1 and sync.queued() == [1, 1]
    assert (sync.matched, sync.dropped) == (1, 0)


def test_closest_partner_wins(pairs):
    sync = make_sync(pairs, slop=0.05)
    sync.add(INFO, info(1.00, "far"))
    sync.add(INFO, info(1.03, "near"))
    sync.add(IMAGE, image(1.04, "i"))
    assert tags(pairs) == [("i", "near")]
    assert sync.dropped_by_input == [0, 1]  # "far" is older than the emitted info: purged


def test_stale_image_without_partner_is_dropped_and_counted(pairs):
    sync = make_sync(pairs, slop=0.01)
    sync.add(IMAGE, image(1.0, "lonely"))  # its camera_info never arrives
    sync.add(IMAGE, image(2.0, "i2"))
    sync.add(INFO, info(2.0, "c2"))
    assert tags(pairs) == [("i2", "c2")]
    assert sync.dropped == 1 and sync.dropped_by_input == [1, 0]
    assert sync.queued() == [0, 0]
    # the partner turning up late cannot resurrect the dropped image, and is itself dropped
    assert sync.add(INFO, info(1.0, "late")) is None
    assert sync.dropped_by_input == [1, 1] and len(pairs) == 1


def test_queue_is_bounded_and_drops_oldest(pairs):
    sync = make_sync(pairs, queue_size=3, slop=0.001)
    for k in range(5):
        sync.add(IMAGE, image(k, f"i{k}"))
    assert sync.queued() == [3, 0] and sync.dropped == 2
    sync.add(INFO, info(0, "c0"))  # partner of an overflowed image: nothing to match
    assert pairs == []
    sync.add(INFO, info(2, "c2"))
    assert tags(pairs) == [("i2", "c2")]
    # the overflowed "c0" and nothing else was discarded when c2 matched
    assert sync.dropped_by_input == [2, 1] and sync.queued() == [2, 0]


def test_new_message_that_is_oldest_overflows_immediately(pairs):
    sync = make_sync(pairs, queue_size=2, slop=0.001)
    sync.add(IMAGE, image(5))
    sync.add(IMAGE, image(6))
    sync.add(IMAGE, image(1))  # older than a full queue
    assert sync.queued() == [2, 0] and sync.dropped == 1


def test_exact_match_with_zero_slop(pairs):
    sync = make_sync(pairs, slop=0.0)
    sync.add(IMAGE, image(3.0, "i"))
    sync.add(INFO, stamped(msgs.CameraInfo, 3.0 + 1e-9, "off_by_1ns"))
    assert pairs == []
    sync.add(INFO, info(3.0, "c"))
    assert tags(pairs) == [("i", "c")]


def test_slop_boundary_is_inclusive(pairs):
    sync = make_sync(pairs, slop=0.02)
    sync.add(IMAGE, image(10.00, "i"))
    sync.add(INFO, info(10.02, "c"))  # exactly slop apart (in integer nanoseconds)
    assert tags(pairs) == [("i", "c")]


def test_out_of_order_arrival(pairs):
    sync = make_sync(pairs, slop=0.005)
    # images arrive newest first, camera_infos oldest first, info before image for t=3
    sync.add(IMAGE, image(2.0, "i2"))
    sync.add(IMAGE, image(1.0, "i1"))
    sync.add(INFO, info(1.001, "c1"))
    sync.add(INFO, info(3.0, "c3"))
    sync.add(INFO, info(2.002, "c2"))
    sync.add(IMAGE, image(3.001, "i3"))
    assert tags(pairs) == [("i1", "c1"), ("i2", "c2"), ("i3", "c3")]
    assert sync.dropped == 0 and sync.queued() == [0, 0]


def test_callbacks_never_go_back_in_time(pairs):
    sync = make_sync(pairs, slop=0.005)
    sync.add(IMAGE, image(2.0, "i2"))
    sync.add(INFO, info(2.0, "c2"))
    sync.add(IMAGE, image(1.0, "i1"))  # late image: its set's time has passed
    sync.add(INFO, info(1.0, "c1"))
    sync.add(IMAGE, image(2.0, "dup"))  # a second message with an already emitted stamp
    assert tags(pairs) == [("i2", "c2")] and sync.dropped_by_input == [2, 1]


def test_same_stamp_replaces_queued_message(pairs):
    sync = make_sync(pairs, slop=0.001)
    sync.add(IMAGE, image(4.0, "old"))
    sync.add(IMAGE, image(4.0, "new"))
    sync.add(INFO, info(4.0, "c"))
    assert tags(pairs) == [("new", "c")] and sync.dropped == 1


def test_three_inputs_need_all_within_slop(pairs):
    sync = make_sync(pairs, slop=0.01, num_inputs=3)
    sync.add(0, image(1.000, "a"))
    sync.add(1, info(1.008, "b"))
    sync.add(2, image(1.015, "far"))  # within slop of b, but 15 ms from a
    assert pairs == []
    sync.add(2, image(1.005, "c"))
    assert tags(pairs) == [("a", "b", "c")]
    assert sync.dropped == 0 and sync.queued() == [0, 0, 1]  # "far" is newer: kept


def test_explicit_stamps_and_headerless_messages(pairs):
    sync = make_sync(pairs, slop=0.01)
    sync.add(IMAGE, "frame", stamp=5.0)
    sync.add(INFO, "calibration", stamp=types.SimpleNamespace(sec=5, nanosec=3_000_000))
    assert pairs == [("frame", "calibration")]
    with pytest.raises(ValueError, match="allow_headerless"):
        sync.add(IMAGE, "no header")
    clock = iter([7.0, 7.001])
    headerless = ApproximateTimeSync(2, 10, 0.01, callback=lambda *m: pairs.append(m),
                                     allow_headerless=True, clock=lambda: next(clock))
    headerless.add(0, "x")
    headerless.add(1, "y")
    assert pairs[-1] == ("x", "y")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSync(2, 10, -0.1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(2, 0, 0.1)
    with pytest.raises(IndexError):
        ApproximateTimeSync(2, 10, 0.1).add(2, image(1.0))
    with pytest.raises(TypeError):
        stamp_to_ns("1.0")


def test_callback_may_add_again_without_deadlock(pairs):
    sync = make_sync(pairs, slop=0.001)

    def on_pair(img, cam):
        pairs.append((img, cam))
        if len(pairs) == 1:
            sync.add(IMAGE, image(9.0, "from_callback"))

    sync.callback = on_pair
    sync.add(IMAGE, image(8.0, "i"))
    sync.add(INFO, info(8.0, "c"))
    sync.add(INFO, info(9.0, "c9"))
    assert tags(pairs) == [("i", "c"), ("from_callback", "c9")]


def test_threads_do_not_lose_messages():
    sync = ApproximateTimeSync(2, 1000, 0.0001)
    seen = []

    def on_pair(a, b):
        seen.append(a.header.stamp.sec)

    sync.callback = on_pair
    n = 300
    feeders = [threading.Thread(target=lambda k=k: [sync.add(k, (image if k == 0 else info)(t))
                                                    for t in range(1, n + 1)])
               for k in (IMAGE, INFO)]
    for thread in feeders:
        thread.start()
    for thread in feeders:
        thread.join()
    # interleaving decides which pairs match, but every message is either matched or counted
    assert sync.matched + sync.dropped_by_input[0] + sync.queued()[0] == n
    assert sync.matched + sync.dropped_by_input[1] + sync.queued()[1] == n
    assert sync.matched == len(seen) > 0


def test_alias_and_availability_probe():
    assert ApproximateTimeSynchronizer is ApproximateTimeSync
    assert isinstance(message_filters_available(), bool)
    assert stamp_to_ns(types.SimpleNamespace(sec=2, nanosec=5)) == 2_000_000_005
