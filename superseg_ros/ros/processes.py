"""ROS child processes for the demo, the benchmarks and the tests: started in an isolated,
loopback-only environment, stopped the way a user would (Ctrl-C first). No rclpy import here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from .loopback import loopback_environment, require_loopback


def child_environment(base: Mapping[str, str] | None = None) -> dict:
    """Loopback-only DDS, unbuffered output, and a ROS domain of its own (1 + pid % 100)
    unless one is set, so other ROS processes on this machine neither feed nor see ours.
    Domains 1-100 keep Fast DDS's ports (7400 + 250 * domain + ...) below Linux's ephemeral
    range; 0 is every ROS tool's default."""
    env = loopback_environment(os.environ if base is None else base)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env["PYTHONUNBUFFERED"] = "1"  # logs are readable while the child runs
    require_loopback(env)
    return env


def start_python(args: list[str], log: str | os.PathLike, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None) -> subprocess.Popen:
    """`python ARGS...` with stdout and stderr to `log`, in child_environment(env)."""
    with open(Path(log), "wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=child_environment(env))


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGINT (clean rclpy shutdown, bags finalised), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass
