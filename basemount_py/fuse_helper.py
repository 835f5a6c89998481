"""Handed-in FUSE devices: ``basemount-py fuse-helper`` (root) and the daemon's side of it.

Where ``/dev/fuse`` is root-only (hardened nodes) or a container may not mount, FUSE daemons run
unprivileged the way the mountpoint-s3 and gcsfuse Kubernetes drivers do it:

1. a small privileged helper opens ``/dev/fuse`` and calls mount(2) on the target directory with
   ``fd=N`` (plus ``user_id``/``group_id`` of the user, so that user may later ``fusermount3 -u``);
2. it hands the descriptor to the unprivileged daemon over a Unix socket (SCM_RIGHTS);
3. the daemon serves ``/dev/fd/N``: libfuse takes a ``/dev/fd/N`` "mountpoint" as an already
   mounted session and skips its own mount (and unmount) call.

The helper serves one daemon: it waits for a connection from the named user only (checked with
SO_PEERCRED), mounts, passes the descriptor, then waits until the daemon's connection closes (the
daemon exited, or the mount was unmounted) or it gets SIGTERM/SIGINT, and unmounts whatever is
left, so a dead daemon never leaves a stale mount behind. The daemon keeps its end of the socket
open for its whole life; that is how the helper knows it is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import pwd
import signal
import socket
import stat
import struct
import sys

from .fuse_access import FUSE_DEVICE, FuseAccessError, check_fuse_device
from .mount_table import FS_NAME, MountBusy, MountLock, mount_entry

log = logging.getLogger(__name__)

# <sys/mount.h>
MS_NOSUID, MS_NODEV, MS_NOATIME = 2, 4, 1024
MNT_DETACH = 2
MESSAGE_MAX = 4096


class FuseHelperError(Exception):
    """A problem on either side of the hand-over; the message is the one line we print."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
    return libc


def fuse_mount_data(fd: int, uid: int, gid: int, allow_other: bool) -> str:
    """mount(2) data for a FUSE mount served through descriptor ``fd`` for user ``uid``.

    default_permissions: the kernel checks modes (as every basemount_py mount does)."""
    data = f"fd={fd},rootmode={stat.S_IFDIR:o},user_id={uid},group_id={gid},default_permissions"
    return data + (",allow_other" if allow_other else "")


def mount_fuse_fd(target: str, uid: int, gid: int, allow_other: bool) -> int:
    """Open /dev/fuse, mount it on ``target`` for ``uid``; return the descriptor (root only)."""
    fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    data = fuse_mount_data(fd, uid, gid, allow_other)
    flags = MS_NOSUID | MS_NODEV | MS_NOATIME
    libc = _libc()
    if libc.mount(FS_NAME.encode(), os.fsencode(target), f"fuse.{FS_NAME}".encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise FuseHelperError(f"mount(2) of {target} failed: {os.strerror(err)}")
    return fd


def unmount_target(target: str) -> bool:
    """Unmount our mount at ``target`` (lazily if busy); False when nothing of ours was there."""
    entry = mount_entry(target)
    if entry is None or not entry.is_basemount:
        return False
    libc = _libc()
    if libc.umount2(os.fsencode(target), 0) != 0 and libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        log.warning("unmounting %s failed: %s", target, os.strerror(ctypes.get_errno()))
        return False
    return True


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _resolve_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise FuseHelperError(f"no such user: {user}") from None


def _check_target(target: str) -> None:
    if not os.path.isdir(target):
        raise FuseHelperError(f"{target} is not a directory")
    entry = mount_entry(target)
    if entry is not None:
        raise FuseHelperError(f"{target} is already a mount point ({entry.fstype})")
    if os.listdir(target):
        raise FuseHelperError(f"{target} is not empty; choose an empty directory")


def _listen(path: str, uid: int, gid: int) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a socket left by an earlier helper
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    # Only the user may connect (SO_PEERCRED is checked on top, for the moment before chmod).
    os.chown(path, uid, gid)
    os.chmod(path, 0o600)
    server.listen(4)
    return server


def _send(conn: socket.socket, message: dict, fd: int | None = None) -> None:
    data = json.dumps(message).encode()
    if fd is None:
        conn.sendall(data)
    else:
        socket.send_fds(conn, [data], [fd])


def run_helper(target: str, socket_path: str, user: str, allow_other: bool = False) -> int:
    """Serve one daemon of ``user``: mount ``target`` when it connects, hand it the descriptor,
    unmount when it is gone. Returns the exit status; every failure is one line on stderr."""
    if os.geteuid() != 0:
        print("basemount-py fuse-helper: must run as root (it calls mount(2)); the daemon runs as the user", file=sys.stderr)
        return 1
    target = os.path.abspath(target)
    lock = None
    server = None
    try:
        account = _resolve_user(user)
        check_fuse_device()
        lock = MountLock(target).acquire()
        _check_target(target)
        server = _listen(socket_path, account.pw_uid, account.pw_gid)
        signal.signal(signal.SIGTERM, _exit_on_signal)
        print(f"fuse-helper: waiting on {socket_path} for a daemon of {account.pw_name} to mount {target}", flush=True)
        conn = _accept_user(server, account.pw_uid)
        with conn:
            fd = mount_fuse_fd(target, account.pw_uid, account.pw_gid, allow_other)
            try:
                _send(conn, {"mountpoint": target}, fd)
            finally:
                os.close(fd)  # the daemon holds it now; the mount lives as long as it does
            print(f"fuse-helper: mounted {target} for {account.pw_name}; descriptor handed over", flush=True)
            while conn.recv(MESSAGE_MAX):  # returns b"" once the daemon has gone
                pass
        return 0
    except (FuseHelperError, FuseAccessError, MountBusy) as exc:
        print(f"basemount-py fuse-helper: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"basemount-py fuse-helper: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        if unmount_target(target):
            print(f"fuse-helper: unmounted {target}", flush=True)
        if server is not None:
            server.close()
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        if lock is not None:
            lock.release()


def _exit_on_signal(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(0)


def _accept_user(server: socket.socket, uid: int) -> socket.socket:
    while True:
        conn, _ = server.accept()
        peer = _peer_uid(conn)
        if peer == uid:
            return conn
        _send(conn, {"error": f"this helper serves uid {uid} only, not uid {peer}"})
        conn.close()


def receive_fuse_fd(socket_path: str) -> tuple[int, str, socket.socket]:
    """The daemon's side: connect to the helper, get the mounted /dev/fuse descriptor and the
    directory it is mounted on. Keep the returned socket open for as long as the daemon lives."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
        data, fds, _, _ = socket.recv_fds(conn, MESSAGE_MAX, 1)
    except OSError as exc:
        conn.close()
        raise FuseHelperError(f"cannot get a FUSE descriptor from {socket_path}: {exc.strerror or exc}") from None
    try:
        message = json.loads(data.decode() or "{}")
    except ValueError:
        message = {}
    if not fds:
        conn.close()
        reason = message.get("error") or "the helper sent no descriptor"
        raise FuseHelperError(f"fuse-helper at {socket_path}: {reason}")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0], str(message.get("mountpoint") or f"/dev/fd/{fds[0]}"), conn
