"""What is mounted where (``/proc/self/mountinfo``), and the per-mountpoint lock.

Both serve the mount lifecycle (``mount.py``) and the fd-passing helper (``fuse_helper.py``):

* ``mount_entry(path)`` tells a basemount_py mount from any other filesystem, so ``unmount`` never
  touches a tmpfs (or ``/``) that is not ours, and checks can say *what* is mounted there.
* ``MountLock`` serialises mounts of one mountpoint: two ``mount`` commands started at the same
  moment both passed the "not mounted yet" check and stacked two daemons on one directory. The
  lock is an ``flock`` on a file named after the mountpoint's real path in a private runtime
  directory; the daemon holds it for its lifetime, and the kernel drops it when the daemon dies,
  so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
from dataclasses import dataclass

FS_NAME = "basemount_py"  # fsname= and subtype= of every basemount_py mount: how we recognise ours


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    device: str  # "major:minor"
    fstype: str  # e.g. "fuse.basemount_py", "tmpfs"
    source: str  # e.g. "basemount_py"
    options: str  # the per-mount options (rw,nosuid,...)

    @property
    def is_basemount(self) -> bool:
        return self.fstype == f"fuse.{FS_NAME}" or (self.fstype.startswith("fuse") and self.source == FS_NAME)


def _unescape(field: str) -> str:
    """/proc mount tables write space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> MountEntry | None:
    """The top-most mount at ``mountpoint`` (an absolute path), or None when nothing is mounted there.

    Read from mountinfo rather than by stat(), which would hang on (or call into) a FUSE mount."""
    target = mountpoint.rstrip("/") or "/"
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
            head, sep, tail = line.rstrip("\n").partition(" - ")
            fields, rest = head.split(), tail.split()
            if not sep or len(fields) < 6 or len(rest) < 2:
                continue
            if _unescape(fields[4]) == target:
                found = MountEntry(target, fields[2], _unescape(rest[0]), _unescape(rest[1]), fields[5])
    return found


# -- the per-mountpoint lock -------------------------------------------------------------------


def runtime_dir() -> str:
    """A directory only this user can write: ``$XDG_RUNTIME_DIR/basemount_py``, else
    ``/tmp/basemount_py-UID`` (checked to be ours and private, never followed through a symlink)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        path = os.path.join(base, FS_NAME)
    else:
        path = f"/tmp/{FS_NAME}-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{path} is not a private directory of this user")
    return path


class MountBusy(Exception):
    """Another basemount_py mount holds the mountpoint's lock; the message says which."""


class MountLock:
    """An exclusive, non-blocking flock for one mountpoint, kept until ``release()`` or exit.

    The descriptor is close-on-exec, but a forked daemon inherits it: the parent releases its copy
    once the daemon reports, and the lock lives on in the daemon until it exits."""

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.fd: int | None = None

    def acquire(self) -> "MountLock":
        key = hashlib.sha256(os.path.realpath(self.mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:24]
        fd = os.open(os.path.join(runtime_dir(), f"mount-{key}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise MountBusy(f"another basemount-py mount (pid {holder}) is already running or starting on {self.mountpoint}") from None
        self.fd = fd
        self.record_owner()
        return self

    def record_owner(self) -> None:
        """Write our pid into the lock file (the daemon calls it again after forking)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Close our descriptor: the lock is gone unless a forked daemon still holds it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
