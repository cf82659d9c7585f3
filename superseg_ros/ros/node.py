"""superseg_node: a camera stream in, semantically filtered sub-pixel keypoints out.

Topics (relative names: remap them or set a namespace)
    in   image (sensor_msgs/Image), or image/compressed with use_compressed:=true
         camera_info (sensor_msgs/CameraInfo), paired with the image by time stamp
    out  superseg/keypoints       superseg_msgs/Keypoints     (header = the input image's)
         superseg/descriptors     superseg_msgs/Descriptors   (row i = keypoint i)
         superseg/stability_mask  superseg_msgs/StabilityMask
         superseg/mask            sensor_msgs/Image mono8, 255 = stable      (for RViz)
         superseg/groups          sensor_msgs/Image bgr8, colour per group   (for RViz)
         superseg/overlay         sensor_msgs/Image bgr8, green o stable, red x rejected
         /diagnostics             latency, rate, skipped and failed frames, per-stage times

Image -> FrameProcessor (resize, network, post-processing, back to input pixels) -> messages.
Subscription callbacks only queue the newest pair; one worker thread processes it, so a slow
network skips frames (counted) instead of building up latency.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from superseg_msgs.msg import Descriptors, Keypoints, StabilityMask

from ..checkpoint import CheckpointError, open_model
from ..config import ConfigError, read_parameters
from ..extractor import Extractor
from ..frame_processor import FrameProcessor
from ..visualize import colorize_groups, draw_keypoints
from . import messages
from .camera_model import CameraInfoError, CameraModel
from .image_conversion import ImageConversionError, compressed_to_array, convert_image, make_image
from .latest_frame import LatestFrame
from .loopback import apply_loopback_environment
from .parameters import (NODE_DEFAULTS, NODE_NAME, flatten, node_settings, parameter_files,
                         ros_builtin_parameter, runtime_changeable)
from .time_sync import ApproximateTimeSync, message_filters_available

WINDOW = 100  # frames kept for latency percentiles
# Per-frame stages of _process, each timed in the node itself (p50/p95 in /diagnostics as
# stage_<name>_ms_p50/_p95): convert = Image -> array (+ cached CameraInfo -> camera model),
# inference = FrameProcessor.process (resize + extractor), messages = building every enabled
# output, publish = the publish calls, overhead = the whole frame minus inference.
STAGES = ("convert", "inference", "messages", "publish", "overhead")
# On shutdown, how long to wait for a frame in flight before abandoning it: a CPU forward pass
# can take seconds, and ros2 launch escalates to SIGTERM 5 s after SIGINT.
SHUTDOWN_WAIT_S = 0.5


class SuperSegNode(Node):
    def __init__(self, parameter_files=(), **kwargs):
        """`parameter_files`: the --params-file paths of the command line, only to report what
        each gave this node (rclpy has already applied them)."""
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True,
                         **kwargs)
        self._stop, self._worker = threading.Event(), None
        self.frame_abandoned = False
        given = {name: p.value for name, p in self.get_parameters_by_prefix("").items()
                 if not ros_builtin_parameter(name)}
        self._report_parameters(parameter_files, given)
        self.settings = settings = node_settings(given)  # ConfigError names a wrong key/value
        for name, value in flatten(settings).items():
            if not self.has_parameter(name):
                self.declare_parameter(name, value)

        model, self.model_name = open_model(settings["model"] or None)
        self.processor = FrameProcessor(
            Extractor(model, settings["extractor"], device=settings["device"]),
            settings["max_side"], settings["scale"])
        extractor = self.processor.extractor
        self.get_logger().info(f"model {self.model_name} on {extractor.device}, "
                               f"{extractor.backend_note}")
        if extractor.semantic_note:
            self.get_logger().warning(extractor.semantic_note)

        depth = settings["qos"]["depth"]
        # reliable publishers match both reliable and best-effort subscribers (RViz, VO)
        out_qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {
            "keypoints": self.create_publisher(Keypoints, "superseg/keypoints", out_qos),
            "descriptors": self.create_publisher(Descriptors, "superseg/descriptors", out_qos),
            "stability_mask": self.create_publisher(StabilityMask, "superseg/stability_mask",
                                                    out_qos),
            "mask_image": self.create_publisher(Image, "superseg/mask", out_qos),
            "group_image": self.create_publisher(Image, "superseg/groups", out_qos),
            "overlay": self.create_publisher(Image, "superseg/overlay", out_qos),
        }
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.slot = LatestFrame()
        self.counts = collections.Counter()
        self.latency_ms = collections.deque(maxlen=WINDOW)     # header stamp -> published
        self.node_latency_ms = collections.deque(maxlen=WINDOW)  # received here -> published
        self.processing_ms = collections.deque(maxlen=WINDOW)  # dequeued -> published
        self.stage_ms = {stage: collections.deque(maxlen=WINDOW) for stage in STAGES}
        self._logged_errors: set[str] = set()
        self.error_reasons: collections.Counter = collections.Counter()  # bad frames by reason
        self._camera_cache: tuple | None = None
        self._info_seen, self._first_image_time = False, None
        self._create_inputs()

        self._worker = threading.Thread(target=self._work, name="superseg_worker", daemon=True)
        self._worker.start()
        self._last_diag, self._errors_reported = (time.monotonic(), 0), 0
        self.create_timer(settings["diagnostics_period"], self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------------------------ input
    def _create_inputs(self):
        s = self.settings
        compressed = s["use_compressed"]
        image_type, image_topic = (CompressedImage, "image/compressed") if compressed \
            else (Image, "image")
        # sensor data = best effort: matches reliable and best-effort camera drivers alike
        reliability = qos_profile_sensor_data.reliability \
            if s["qos"]["profile"] == "sensor_data" else ReliabilityPolicy.RELIABLE
        qos = QoSProfile(depth=s["qos"]["depth"], reliability=reliability)
        queue, slop = s["sync"]["queue_size"], s["sync"]["slop"]
        if message_filters_available():
            import message_filters

            image_sub = message_filters.Subscriber(self, image_type, image_topic,
                                                   qos_profile=qos)
            info_sub = message_filters.Subscriber(self, CameraInfo, "camera_info",
                                                  qos_profile=qos)
            self.sync = message_filters.ApproximateTimeSynchronizer([image_sub, info_sub],
                                                                    queue, slop)
            self.sync.registerCallback(self._on_pair)
            image_sub.registerCallback(self._on_image)
            info_sub.registerCallback(self._on_info)
            self._filters = (image_sub, info_sub)  # keep them alive
            self.sync_name = "message_filters"
        else:
            self.sync = ApproximateTimeSync(2, queue, slop, callback=self._on_pair)
            self.create_subscription(image_type, image_topic, self._on_image_own, qos)
            self.create_subscription(CameraInfo, "camera_info", self._on_info_own, qos)
            self.sync_name = "built-in approximate-time synchroniser"
        self.get_logger().info(
            f"listening on {self.resolve_topic_name(image_topic)} + "
            f"{self.resolve_topic_name('camera_info')} ({self.sync_name}, slop {slop} s)")

    def _on_image_own(self, msg):
        # an image that goes on without CameraInfo (none came within the timeout) is not queued
        # for pairing too: the synchroniser's image drops then count only frames that waited for
        # a CameraInfo and lost it (frames_unpaired)
        if not self._on_image(msg):
            self.sync.add(0, msg)

    def _on_info_own(self, msg):
        self.sync.add(1, msg)
        self._on_info(msg)

    def _on_image(self, msg) -> bool:
        """Counts the image; True when it went to processing without CameraInfo."""
        self.counts["received"] += 1
        if self._info_seen:
            return False  # the synchroniser delivers it with its CameraInfo
        now = time.monotonic()
        self._first_image_time = self._first_image_time or now
        timeout = self.settings["sync"]["camera_info_timeout"]
        if now - self._first_image_time >= timeout:
            self._log_once("no_camera_info", f"no CameraInfo on "
                           f"{self.resolve_topic_name('camera_info')} after {timeout} s: "
                           "publishing keypoints without normalised coordinates (NaN)")
            self.counts["without_camera_info"] += 1
            self.slot.put((msg, None, now))
            return True
        return False

    def _on_info(self, msg):
        self._info_seen = True

    def _on_pair(self, image_msg, info_msg):
        self.slot.put((image_msg, info_msg, time.monotonic()))

    # ------------------------------------------------------------------------------- processing
    def _work(self):
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
            except (ImageConversionError, CameraInfoError, ValueError) as exc:
                self._count_error("bad_input", f"dropped a frame: {exc}",
                                  getattr(exc, "reason", "bad_input"))
            except Exception as exc:  # keep serving; the next good frame is processed
                self._count_error("internal", f"dropped a frame: {type(exc).__name__}: {exc}",
                                  f"internal_{type(exc).__name__}")

    def _process(self, image_msg, info_msg, received: float):
        """`received`: time.monotonic() when the input reached this node."""
        start = time.perf_counter()
        processor = self.processor  # parameter changes swap it atomically
        if isinstance(image_msg, CompressedImage):
            image = compressed_to_array(image_msg)
        else:
            image = convert_image(image_msg)
        camera = self._camera(info_msg) if info_msg is not None else None
        converted = time.perf_counter()
        result = processor.process(image, camera)
        inferred = time.perf_counter()
        if self._stop.is_set():  # shutdown began during the forward pass: publishers are going
            return
        build_s, publish_s = self._publish_outputs(image, result, image_msg.header,
                                                   processor.extractor)

        self.counts["processed"] += 1
        end = time.perf_counter()
        self.processing_ms.append((end - start) * 1e3)
        stages = {"convert": converted - start, "inference": inferred - converted,
                  "messages": build_s, "publish": publish_s,
                  "overhead": (end - start) - (inferred - converted)}
        for stage, seconds in stages.items():
            self.stage_ms[stage].append(seconds * 1e3)
        header = image_msg.header
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        now = self.get_clock().now().nanoseconds * 1e-9
        self.latency_ms.append((now - stamp) * 1e3)
        self.node_latency_ms.append((time.monotonic() - received) * 1e3)

    def _publish_outputs(self, image, result, header, extractor) -> tuple[float, float]:
        """Builds and publishes each enabled output in turn (keypoints first: they leave before
        the heavier images are built). Returns the seconds spent building and publishing."""
        build_s = publish_s = 0.0
        for name, build in self._outputs(image, result, header, extractor):
            t0 = time.perf_counter()
            msg = build()
            t1 = time.perf_counter()
            self.pub[name].publish(msg)
            build_s, publish_s = build_s + t1 - t0, publish_s + time.perf_counter() - t1
        return build_s, publish_s

    def _outputs(self, image, result, header, extractor):
        """(publisher name, message builder) of every output enabled for this frame."""
        height, width = image.shape[:2]
        publish = self.settings["publish"]
        if publish["keypoints"]:
            yield "keypoints", lambda: messages.keypoints_msg(result, header, width, height)
        if publish["descriptors"]:
            yield "descriptors", lambda: messages.descriptors_msg(result, header)
        if result.stability_mask is not None:
            if publish["stability_mask"]:
                yield "stability_mask", lambda: messages.stability_mask_msg(
                    result, header, extractor.model.semantics,
                    extractor.stable_ids, extractor.config["mask_threshold"])
            if publish["mask_image"]:
                yield "mask_image", lambda: messages.mask_image(result, header)
            if publish["group_image"]:
                yield "group_image", lambda: make_image(colorize_groups(result.group_map),
                                                        "bgr8", header)
        if publish["overlay"]:
            yield "overlay", lambda: make_image(self._overlay(image, result), "bgr8", header)

    def _camera(self, info_msg) -> CameraModel:
        key = (tuple(info_msg.k), tuple(info_msg.d), info_msg.distortion_model,
               info_msg.width, info_msg.height)
        if self._camera_cache is None or self._camera_cache[0] != key:
            self._camera_cache = (key, CameraModel.from_camera_info(info_msg))
        return self._camera_cache[1]

    def _overlay(self, image: np.ndarray, result) -> np.ndarray:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        points = np.vstack([result.keypoints, result.rejected])
        stable = np.concatenate([result.stable, np.zeros(len(result.rejected), bool)])
        if result.stability_mask is None:
            title = f"{len(result.keypoints)} keypoints (semantic filter off)"
        else:
            title = (f"{int(result.stable.sum())} stable, "
                     f"{len(points) - int(result.stable.sum())} rejected")
        return draw_keypoints(image, points, stable, f"{self.model_name} | {title}",
                              group_map=result.group_map)

    def _count_error(self, kind: str, message: str, reason: str):
        """Counted by kind (bad_input, internal) and by reason (truncated, zero_size, ...: the
        exception's `reason`); logged once per reason, with the first frame's message, however
        many frames follow with it (their details, e.g. sizes, differ)."""
        if self._stop.is_set():  # publishing into a node being destroyed is no frame error
            return
        self.counts["errors"] += 1
        self.counts[f"errors_{kind}"] += 1
        self.error_reasons[reason] += 1
        self._log_once(reason, f"{message} [{reason}: logged once, counted in /diagnostics]",
                       error=True)

    def _log_once(self, key: str, message: str, error: bool = False):
        """Each distinct problem is logged once; repeats are only counted (see /diagnostics)."""
        if key in self._logged_errors:
            return
        if len(self._logged_errors) < 1000:
            self._logged_errors.add(key)
        # Two call sites, not one: rclpy's logger keys call-site state by source line and raises
        # "Logger severity cannot be changed between calls" when one line logs at two levels
        # (that exception killed the worker thread: the node stopped serving).
        if error:
            self.get_logger().error(message)
        else:
            self.get_logger().warning(message)

    # -------------------------------------------------------------------------- runtime changes
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params if not ros_builtin_parameter(p.name)}
        fixed = sorted(n for n in changes if not runtime_changeable(n))
        if fixed:
            return SetParametersResult(successful=False, reason=(
                f"{', '.join(fixed)} cannot change while the node runs; restart it"))
        try:
            settings = node_settings({**flatten(self.settings), **changes})
            extractor = Extractor(self.processor.extractor.model, settings["extractor"],
                                  device=self.processor.extractor.device)
            processor = FrameProcessor(extractor, settings["max_side"], settings["scale"])
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings, self.processor = settings, processor
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict:
        now, processed = time.monotonic(), self.counts["processed"]
        then, processed_then = self._last_diag
        self._last_diag = (now, processed)
        values = {
            "model": self.model_name, "device": str(self.processor.extractor.device),
            "semantic_filter": "on" if self.processor.extractor.semantic_active else "off",
            "synchroniser": self.sync_name,
            "rate_hz": f"{(processed - processed_then) / max(now - then, 1e-6):.2f}",
            "frames_received": self.counts["received"], "frames_processed": processed,
            "frames_skipped": self.slot.skipped,
            "frames_without_camera_info": self.counts["without_camera_info"],
            "sync_dropped": getattr(self.sync, "dropped", "n/a"),
            # images whose CameraInfo never came (replaced in the reader's history, or lost),
            # and those still waiting for one: with processed, errors and skipped, every
            # received image is accounted for (built-in synchroniser; n/a with message_filters)
            "frames_unpaired": self.sync.dropped_by_input[0]
            if hasattr(self.sync, "dropped_by_input") else "n/a",
            "frames_waiting_for_camera_info": self.sync.queued()[0]
            if hasattr(self.sync, "queued") else "n/a",
            "errors": self.counts["errors"],
            "errors_bad_input": self.counts["errors_bad_input"],
            "errors_internal": self.counts["errors_internal"],
        }
        # every bad frame by its reason (truncated, unsupported_encoding, camera_info_invalid ...)
        values.update({f"errors.{reason}": n for reason, n in sorted(self.error_reasons.items())})
        windows = [("latency_ms", self.latency_ms), ("node_latency_ms", self.node_latency_ms),
                   ("processing_ms", self.processing_ms)]
        windows += [(f"stage_{stage}_ms", self.stage_ms[stage]) for stage in STAGES]
        for name, window in windows:
            if window:
                p50, p95 = np.percentile(np.asarray(window), [50, 95])
                values[f"{name}_p50"], values[f"{name}_p95"] = f"{p50:.1f}", f"{p95:.1f}"
        return values

    def _publish_diagnostics(self):
        values = self.diagnostics()
        errors_before, self._errors_reported = self._errors_reported, self.counts["errors"]
        if self.counts["errors"] > errors_before:
            level, message = DiagnosticStatus.WARN, "dropped malformed frames (see errors)"
        elif self.counts["processed"] == 0:
            level, message = DiagnosticStatus.OK, "waiting for images"
        else:
            level, message = DiagnosticStatus.OK, "processing"
        status = DiagnosticStatus(
            level=level, name=f"{self.get_fully_qualified_name()}: keypoint extraction",
            message=message, hardware_id=values["device"],
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def destroy_node(self):
        """Stops the worker promptly: a frame still in the network after SHUTDOWN_WAIT_S is
        abandoned (the daemon thread ends with the process, nothing of it is published)."""
        self._stop.set()
        if self._worker is not None:  # None when __init__ failed (rclpy still destroys us)
            self.slot.close()
            self._worker.join(timeout=SHUTDOWN_WAIT_S)
            self.frame_abandoned = self._worker.is_alive()
            if self.frame_abandoned:
                message = "shutting down: abandoned the frame in flight"
                if self.context.ok():
                    self.get_logger().info(message)
                else:  # after SIGINT the context is gone, and with it logging to /rosout
                    print(f"[{self.get_fully_qualified_name()}] {message}", file=sys.stderr)
        return super().destroy_node()

    def _report_parameters(self, files, given: dict):
        """Say what each parameter file gave this node, and warn when one gave nothing: a file
        keyed for another name or namespace is silently ignored by ROS."""
        name, namespace, fqn = self.get_name(), self.get_namespace(), \
            self.get_fully_qualified_name()
        defaults = flatten(NODE_DEFAULTS)
        for path in files:
            try:
                values = flatten(read_parameters(path, name, namespace))
            except ConfigError as exc:
                self.get_logger().warning(f"{exc}. Its values are NOT applied.")
                continue
            changed = {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}
            self.get_logger().info(
                f"parameter file {path}: {len(values)} values for {fqn}"
                + (f", not default: {', '.join(f'{k}={v!r}' for k, v in changed.items())}"
                   if changed else ", all default"))
        if not files and not given:
            self.get_logger().info(f"no parameter file or -p values for {fqn}: all defaults")


def main(args=None) -> int:
    # Localhost-only discovery unless the user chose a range (multi-machine setups set it).
    if not os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        apply_loopback_environment()
    rclpy.init(args=args)
    try:
        node = SuperSegNode(parameter_files(sys.argv if args is None else args))
    except (ConfigError, CheckpointError) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if node.frame_abandoned:
        # The worker is still inside the network's native code, which would abort Python's
        # finalisation (SIGABRT); nothing of that frame is published, so end here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
