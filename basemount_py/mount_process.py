"""A ``basemount-py mount --foreground`` child process: used by the demo, the benchmark and tests.

Credentials reach the child through its environment, never its command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import IO
from pathlib import Path


class MountStartError(RuntimeError):
    pass


def is_mounted(path: str | os.PathLike) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return any(len(line.split()) > 1 and line.split()[1] == target for line in f)


class MountProcess:
    """Start with ``start()`` (returns once the mount is live) or as a context manager."""

    def __init__(
        self,
        mountpoint: Path,
        *extra: str,
        api_server: str | None = None,
        access_token: str | None = None,
        env: dict | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ):
        self.mountpoint = Path(mountpoint)
        self.log = log or self.mountpoint.with_name(self.mountpoint.name + ".log")
        self.env = {k: v for k, v in os.environ.items() if k not in ("BASESPACE_API_SERVER", "BASESPACE_ACCESS_TOKEN")}
        if api_server is not None:
            self.env["BASESPACE_API_SERVER"] = api_server
        if access_token is not None:
            self.env["BASESPACE_ACCESS_TOKEN"] = access_token
        self.env.update(env or {})
        self.args = [sys.executable, "-m", "basemount_py", "mount", str(self.mountpoint), "--foreground", *extra]
        self.cwd = cwd  # where the daemon starts; ``-m basemount_py`` imports from here first
        self.process: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def start(self, timeout: float = 30) -> "MountProcess":
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "ab")
        self.process = self._spawn(self._log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_mounted(self.mountpoint):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        raise MountStartError(f"the mount at {self.mountpoint} did not come up; log:\n{tail}")

    def _spawn(self, log_file: IO[bytes]) -> subprocess.Popen:
        """Start the daemon, its output going to ``log_file`` (tests fork theirs from a launcher)."""
        return subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=log_file, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 15) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the daemon unmounts on SIGTERM
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "MountProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
