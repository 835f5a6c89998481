"""The user's side of the upload spool: ``status``, ``retry``, and ``unmount`` waiting for uploads.

The daemon publishes its spool in the hidden file ``MOUNT/.uploads`` (one line per entry:
``state<TAB>size<TAB>path[<TAB>detail]`` after a ``summary:`` line) and takes ``flush`` and
``retry PATH`` from ``MOUNT/.commands``; nothing here talks to the daemon any other way.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

STATUS_FILE = ".uploads"  # the daemon's name for it: write/manager.py STATUS_NAME
WAITED_FOR = ("pending", "uploading")


def mount_root(path: str) -> str | None:
    """The basemount_py mount holding PATH (the nearest mount point above it with a status file)."""
    p = os.path.abspath(path)
    while True:
        if os.path.ismount(p):
            return p if os.path.exists(os.path.join(p, STATUS_FILE)) else None
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def read_status(root: str) -> list[tuple[str, int, str, str]] | None:
    """(state, size, path, detail) per spool entry, or None when the mount has no status file."""
    try:
        with open(os.path.join(root, STATUS_FILE), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1].isdigit():
            out.append((fields[0], int(fields[1]), fields[2], fields[3] if len(fields) > 3 else ""))
    return out


def status(mountpoint: str, out: TextIO | None = None) -> int:
    """Print the mount's upload status file to ``out`` (default: sys.stdout at the call)."""
    out = sys.stdout if out is None else out
    root = mount_root(mountpoint)
    if root is None:
        print(f"Error: {mountpoint} is not inside a basemount_py mount", file=sys.stderr)
        return 1
    with open(os.path.join(root, STATUS_FILE), encoding="utf-8", errors="replace") as f:
        out.write(f.read())
    return 0


def _command(root: str, text: str) -> None:
    fd = os.open(os.path.join(root, ".commands"), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, (text + "\n").encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def retry(path: str) -> int:
    root = mount_root(path)
    if root is None:
        print(f"Error: {path} is not inside a basemount_py mount", file=sys.stderr)
        return 1
    rel = os.path.relpath(os.path.abspath(path), root)
    try:
        _command(root, f"retry {rel}")
    except OSError as exc:
        detail = ""
        try:
            with open(os.path.join(root, ".error"), encoding="utf-8", errors="replace") as f:
                detail = (f.read().strip().splitlines() or [""])[-1].removeprefix("Error: ")
        except OSError:
            pass
        print(f"Error: retry failed for {path}: {detail or exc.strerror}", file=sys.stderr)
        return 1
    print(f"retry: {rel} is queued for upload (basemount-py status {root})")
    return 0


def wait_for_uploads(mountpoint: str, keep_pending: bool = False, out: TextIO | None = None, poll: float = 0.5) -> None:
    """Before an unmount: upload what is pending now and wait for it, with a progress line
    (or, with ``keep_pending``, say what stays in the spool for the next mount). ``out``: where
    to (default: sys.stderr as it is at the call, not as it was when this module was imported)."""
    out = sys.stderr if out is None else out
    if not os.path.exists(os.path.join(mountpoint, STATUS_FILE)):
        return
    entries = read_status(mountpoint) or []
    waiting = [e for e in entries if e[0] in WAITED_FOR]
    if keep_pending:
        if waiting:
            print(f"{len(waiting)} upload(s) ({sum(e[1] for e in waiting)} bytes) stay in the spool; they resume at the next mount of this account", file=out)
        _report_failed(entries, out)
        return
    if not waiting:
        _report_failed(entries, out)
        return
    shown = False
    while True:
        latest = read_status(mountpoint)
        if latest is None:
            break
        entries = latest
        waiting = [e for e in entries if e[0] in WAITED_FOR]
        if not waiting:
            break
        if any(e[0] == "pending" for e in waiting):
            try:  # again each time: a file closed just now becomes pending after its release
                _command(mountpoint, "flush")
            except OSError:
                pass
        left = sum(e[1] for e in waiting)
        out.write(f"\rwaiting for {len(waiting)} upload(s), {left / 2**20:.1f} MiB (Ctrl-C: keep them for the next mount)   ")
        out.flush()
        shown = True
        time.sleep(poll)
    if shown:
        failed = sum(1 for e in entries or [] if e[0] == "failed")
        done = f"{failed} upload(s) failed for good" if failed else "all uploads committed"
        out.write(f"\r{done}" + " " * 60 + "\n")
    _report_failed(entries or [], out)


def _report_failed(entries: list[tuple[str, int, str, str]], out: TextIO) -> None:
    for state, size, path, detail in entries:
        if state == "failed":
            print(f"failed upload kept in the spool: /{path} ({size} bytes): {detail}", file=out)
