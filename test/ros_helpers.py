"""Helpers for tests that start ROS 2. Importing this module makes the process loopback-safe.

Every ROS participant started by the tests (in this process or a child) gets the loopback-only DDS
settings of superseg_ros.ros.loopback, which are applied to os.environ on import, before anything
can call rclpy.init(). Nothing here imports rclpy at module level.

ROS_DOMAIN_ID: one per test session, 1 + pid % 100 (unless already set), so two test runs on one
machine do not see each other's topics. Domains 0-101 are the range where Fast DDS's UDP ports
(7400 + 250 * domain + ...) stay below Linux's ephemeral ports; 0 is skipped because it is every
ROS tool's default.
"""
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from superseg_ros.ros.loopback import require_loopback
from superseg_ros.ros.processes import child_environment, start_python
from superseg_ros.ros.processes import stop_process  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]

# this process and every child: loopback-only DDS and a ROS domain of this test session's own
os.environ.update(child_environment())


def require_workspace() -> None:
    """Fail with instructions unless superseg_msgs is built and this process runs in its env."""
    try:
        import superseg_msgs.msg  # noqa: F401
        from ament_index_python.packages import get_package_prefix

        get_package_prefix("superseg_msgs")
        return
    except Exception as e:  # ImportError, PackageNotFoundError
        problem = e
    pytest.fail(f"the colcon workspace is not in this environment ({problem}); run the tests with "
                "`make test` or `tools/ros_env.sh python -m pytest test`", pytrace=False)


def import_rclpy():
    """rclpy, imported only after checking that DDS stays on loopback and the workspace is set."""
    require_loopback()
    require_workspace()
    import rclpy

    return rclpy


@dataclass
class ChildProcess:
    popen: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        """Everything the child wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def python_process(args, log_path, *, cwd=None, env=None):
    """Run `python -c CODE` (args = ["-c", CODE, ...]) or `python -m MOD ...` as a child.

    The child gets this process's environment (the workspace, as sourced by tools/ros_env.sh) plus
    the loopback-only DDS settings; its stdout and stderr go to `log_path`. It is stopped on exit
    from the block, whatever happened inside.
    """
    log_path = Path(log_path)
    popen = start_python(list(args), log_path, env=env, cwd=cwd or REPO)
    try:
        yield ChildProcess(popen, log_path)
    finally:
        stop_process(popen, grace=3.0)


@contextmanager
def ros_node(name: str):
    """A node on its own initialised rclpy context (loopback DDS only); both are shut down on
    exit from the block."""
    rclpy = import_rclpy()
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def last_status(statuses, node_name: str) -> dict | None:
    """The values of the newest DiagnosticStatus a node (fully qualified name) published."""
    values = [{kv.key: kv.value for kv in s.values} for s in statuses
              if s.name.startswith(f"{node_name}:")]
    return values[-1] if values else None


def spin_until(node, predicate, timeout: float) -> bool:
    """Spin `node` until predicate() is true or `timeout` seconds pass; return predicate()."""
    import rclpy.executors

    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return predicate()
    finally:
        executor.remove_node(node)
        executor.shutdown()
