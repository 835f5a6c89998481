"""Node: one entry of the mounted tree (directory, remote file, generated text file, symlink).

A node knows its path (its identity while it lives in the inode table), how it looks to ``stat``
and, for directories, which *kind* of listing fills it (see ``layout.py``). Nodes are plain data;
all API work happens in ``layout.py``.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DIR, REMOTE, TEXT, SYMLINK, COMMANDS = "dir", "remote", "text", "symlink", "commands"


class NotFound(Exception):
    """No such entry (ENOENT): a name not in its folder, or a lazy entry the server says is absent."""

_DATE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def parse_time(value: Any, default: float = 0.0) -> float:
    """BaseSpace dates (``2024-01-02T03:04:05.0000000Z``) to epoch seconds; junk -> default."""
    if not isinstance(value, str):
        return default
    m = _DATE.match(value.strip())
    if not m:
        return default
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError:
        return default
    seconds = dt.timestamp() + (float("0." + frac) if frac else 0.0)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds


def entity_time(entity: dict | None, *keys: str) -> float:
    for key in keys or ("DateModified", "DateCreated"):
        t = parse_time((entity or {}).get(key))
        if t:
            return t
    return 0.0


def safe_size(value: Any) -> int:
    """Sizes from the server are untrusted: negative, huge or junk become 0 / a sane bound."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        return 0
    return min(max(size, 0), 2**62)


@dataclass
class Node:
    path: tuple[str, ...]
    type: str  # DIR, REMOTE, TEXT, SYMLINK, COMMANDS
    kind: str = ""  # for DIR: which listing fills it (layout.py); for others informational
    ctx: dict = field(default_factory=dict)  # ids and entity data the listing/renderer needs
    size: int = 0
    mtime: float = 0.0
    content: bytes = b""  # TEXT
    target: str = ""  # SYMLINK
    file_id: str = ""  # REMOTE
    xattrs: dict[str, bytes] = field(default_factory=dict)
    hidden: bool = False  # listed by readdir? (Files.metadata and .commands are "sneaky")
    immutable: bool = False  # remote files: kernel may keep their pages and attrs long

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    @property
    def mode(self) -> int:
        if self.type == DIR:
            return stat.S_IFDIR | 0o555
        if self.type == SYMLINK:
            return stat.S_IFLNK | 0o777
        if self.type == COMMANDS:
            return stat.S_IFREG | 0o644
        return stat.S_IFREG | 0o444

    @property
    def st_size(self) -> int:
        if self.type == TEXT:
            return len(self.content)
        if self.type == SYMLINK:
            return len(self.target.encode())
        return self.size


def text_node(path: tuple[str, ...], content: str | bytes, mtime: float = 0.0, hidden: bool = False) -> Node:
    data = content.encode() if isinstance(content, str) else content
    return Node(path=path, type=TEXT, content=data, mtime=mtime, hidden=hidden)


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def relative_link(from_dir: tuple[str, ...], to_path: tuple[str, ...]) -> str:
    """Relative symlink text from a link living in ``from_dir`` to the mount path ``to_path``."""
    common = 0
    while common < min(len(from_dir), len(to_path)) and from_dir[common] == to_path[common]:
        common += 1
    ups = [".."] * (len(from_dir) - common)
    rest = list(to_path[common:])
    return "/".join(ups + rest) or "."
