"""Shared fixtures: account folders, the real emulator over loopback, real kernel mounts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def write_entity(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fields:
        (folder / ".entity.json").write_text(json.dumps(fields))
    return folder


def write_file(path: Path, data: bytes, mtime: float = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def write_synthetic(path: Path, size: int, seed: int) -> Path:
    """``path`` is the served name; the account folder holds ``path.synthetic.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = path.with_name(path.name + ".synthetic.json")
    spec.write_text(json.dumps({"size": size, "seed": seed}))
    return spec


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def require_fuse() -> None:
    # Real-mount tests may skip on a user's machine without FUSE, never in CI.
    if not fuse_available():
        if os.environ.get("CI"):
            pytest.fail("/dev/fuse is not usable, and CI must run the real-mount tests")
        pytest.skip("/dev/fuse is not usable here")


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Mount:
    """A real ``basemount-py mount --foreground`` process on a fresh mountpoint."""

    def __init__(self, emulator, mountpoint: Path, *extra: str, env: dict | None = None):
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.log = mountpoint.parent / (mountpoint.name + ".log")
        self.env = dict(os.environ)
        self.env.pop("BASESPACE_API_SERVER", None)
        self.env.pop("BASESPACE_ACCESS_TOKEN", None)
        if emulator is not None:
            self.env.update(BASESPACE_API_SERVER=emulator.url, BASESPACE_ACCESS_TOKEN=emulator.token)
        self.env["HOME"] = str(mountpoint.parent / "home")
        self.env.update(env or {})
        self.args = [sys.executable, "-m", "basemount_py", "mount", str(mountpoint), "--foreground", *extra]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "Mount":
        self._log_file = open(self.log, "ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_mounted(str(self.mountpoint)):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"mount did not come up; log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if is_mounted(str(self.mountpoint)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if getattr(self, "_log_file", None):
            self._log_file.close()

    def __enter__(self) -> "Mount":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def mount_factory(tmp_path):
    require_fuse()
    mounts: list[Mount] = []

    def make(emulator, *extra: str, name: str = "mnt", env: dict | None = None, start: bool = True) -> Mount:
        m = Mount(emulator, tmp_path / name, *extra, env=env)
        mounts.append(m)
        return m.start() if start else m

    yield make
    for m in mounts:
        m.stop()


@pytest.fixture(scope="session")
def demo_account(tmp_path_factory):
    from basemount_py.emulator.demo_data import generate_demo_account

    path = tmp_path_factory.mktemp("demo") / "account"
    generate_demo_account(path)
    return path


@pytest.fixture(scope="session")
def demo_emulator(demo_account):
    from basemount_py.emulator.control import EmulatorProcess

    with EmulatorProcess(demo_account) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def demo_mount(demo_emulator, tmp_path_factory):
    require_fuse()
    base = tmp_path_factory.mktemp("demo-mount")
    m = Mount(demo_emulator, base / "mnt")
    m.start()
    yield m
    m.stop()
