"""May this process mount with FUSE? Pre-mount checks that say exactly what is missing.

Run before anything forks or starts trio, so a user gets one line that names the problem and
its usual fixes instead of libfuse's ``fuse: failed to open /dev/fuse: Permission denied``:

* ``/dev/fuse`` missing, or not open to this user (hardened nodes make it ``crw------- root``);
* no setuid ``fusermount3`` for a user that is not root (libfuse needs it for the mount call);
* ``--allow-other`` without ``user_allow_other`` in ``/etc/fuse.conf``;
* a handed-in ``/dev/fd/N`` that is not an open ``/dev/fuse`` descriptor.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat

FUSE_DEVICE = "/dev/fuse"
FUSE_MAJOR, FUSE_MINOR = 10, 229
FUSE_CONF = "/etc/fuse.conf"
FD_MOUNTPOINT = re.compile(r"^/dev/fd/(\d+)$")  # libfuse's convention for a handed-in descriptor
HELPER_DOC = 'docs/configuration.md, "Non-root mounts and handed-in FUSE devices"'


class FuseAccessError(Exception):
    """What is missing, and how to fix it: the one line the user sees."""


def handed_in_fd(mountpoint: str) -> int | None:
    """N for a ``/dev/fd/N`` mountpoint (a /dev/fuse descriptor mounted by someone else), else None."""
    m = FD_MOUNTPOINT.match(mountpoint)
    return int(m.group(1)) if m else None


def check_fuse_fd(fd: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError:
        raise FuseAccessError(
            f"/dev/fd/{fd} is not an open descriptor: it must be passed in by whoever mounted it "
            f"(basemount-py mount --fuse-socket, a container runtime; {HELPER_DOC})"
        ) from None
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (FUSE_MAJOR, FUSE_MINOR):
        raise FuseAccessError(f"/dev/fd/{fd} is open but is not /dev/fuse")


def _owner(st: os.stat_result) -> str:
    def name(lookup, ident: int) -> str:
        try:
            return lookup(ident)[0]
        except KeyError:
            return str(ident)

    return f"{name(pwd.getpwuid, st.st_uid)}:{name(grp.getgrgid, st.st_gid)}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def check_fuse_device(device: str = FUSE_DEVICE) -> None:
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise FuseAccessError(
            f"{device} does not exist: load the fuse module (modprobe fuse) and install fuse3; in a container, pass the device in (e.g. --device /dev/fuse)"
        ) from None
    if not stat.S_ISCHR(st.st_mode):
        raise FuseAccessError(f"{device} is not a character device; it should be the FUSE device ({FUSE_MAJOR}, {FUSE_MINOR})")
    if not os.access(device, os.R_OK | os.W_OK):
        raise FuseAccessError(
            f"{device} is {stat.filemode(st.st_mode)} {_owner(st)}, so {_user()} may not open it and cannot mount "
            "any FUSE filesystem. Usual fixes, by an administrator: make the device usable (a udev rule "
            'such as KERNEL=="fuse", MODE="0666", the distribution default, or GROUP="fuse", MODE="0660" '
            "with this user in that group); or run `basemount-py fuse-helper` as root, which mounts and "
            f"hands this user the descriptor ({HELPER_DOC})"
        )


FUSERMOUNT_DIRS = ("/usr/bin", "/bin", "/usr/local/bin")  # where libfuse looks before $PATH


def check_fusermount(dirs: tuple[str, ...] = FUSERMOUNT_DIRS, search_path: str | None = None) -> None:
    """A user that is not root mounts through libfuse's setuid helper ``fusermount3``."""
    if os.geteuid() == 0:
        return
    search = os.pathsep.join([*dirs, os.environ.get("PATH", "") if search_path is None else search_path])
    path = shutil.which("fusermount3", path=search)
    if path is None:
        raise FuseAccessError("fusermount3 is not installed (or not on PATH): a user that is not root needs it to mount; install the fuse3 package")
    st = os.stat(path)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        raise FuseAccessError(f"{path} is not setuid root ({stat.filemode(st.st_mode)} {_owner(st)}), so it cannot mount for a user")


def user_allow_other_set(conf: str = FUSE_CONF) -> bool:
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def check_allow_other(conf: str = FUSE_CONF) -> None:
    if os.geteuid() != 0 and not user_allow_other_set(conf):
        raise FuseAccessError(
            f"--allow-other needs `user_allow_other` in {conf} for a user that is not root; "
            "ask an administrator to add that line, or mount without --allow-other"
        )


def check_fuse_access(allow_other: bool) -> None:
    """Every check for a normal (not handed-in) mount, in the order a user would fix them."""
    check_fuse_device()
    check_fusermount()
    if allow_other:
        check_allow_other()
