"""The kernel side of the read path (mount.py ``_tune_kernel_after_init``), through a real mount.

As root the mount raises its readahead to 4 MiB, so sequential reads arrive as 1 MiB requests.
The kernel sets the readahead from the answer to FUSE_INIT, so a tuning written before that answer
is undone: the readahead must still be raised once the mount answers its first request.
"""

from __future__ import annotations

import os
import random

import pytest

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.mount import MountOptions
from conftest import write_file

FILES = ("Projects", "P", "Samples", "S", "Files")


def bdi_of(mountpoint) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return fields[2]
    raise AssertionError(f"{mountpoint} is not mounted")


def test_the_readahead_is_raised_after_the_kernel_applied_fuse_init(tmp_path, mount_factory):
    if os.geteuid() != 0:
        pytest.skip("the mount tunes the kernel only as root (sysfs)")
    root = tmp_path / "account"
    data = random.Random(1).randbytes(256 * 1024)
    write_file(root.joinpath(*FILES, "a.bin"), data)
    with EmulatorProcess(root) as em:
        for attempt in range(3):  # the old race was lost most of the time, not always
            m = mount_factory(em, name=f"mnt{attempt}")
            os.stat(m.mountpoint)  # the first request: answered only after FUSE_INIT
            with open(f"/sys/class/bdi/{bdi_of(m.mountpoint)}/read_ahead_kb") as f:
                assert int(f.read()) == MountOptions.read_ahead_kb
            with open(m.path(*FILES, "a.bin"), "rb") as f:
                assert f.read() == data
            m.stop()
