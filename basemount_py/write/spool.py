"""The write-back spool: every byte written into the mount is on local disk before write() returns.

Layout on disk (``<cache-dir>/spool/<account>/<session>/``):

* ``<account>`` is a hash of the API server and the user id, so the next mount of the same account
  (and only that) finds what an earlier mount left;
* ``<session>`` belongs to one running daemon, which holds an exclusive ``flock`` on its ``lock``
  file for as long as it lives. A new daemon adopts the entries of every session whose lock it can
  take (its daemon is gone: unmounted with ``--keep-pending``, killed, crashed), so two mounts of one
  account never upload the same entry;
* each entry is ``<id>.data`` (the file's bytes, sparse where the writer left holes) and
  ``<id>.json`` (what it is, where it goes, its state), the JSON replaced atomically (write, fsync,
  rename, fsync the folder) so a crash leaves the old or the new state, never half of one. A
  session folder is removed only when no data file in it is the sole copy of bytes without a record
  (``_remove_session``): such bytes are kept, and the log says where.

``aborts.owed`` (JSON: multipart upload id -> the file it was for) lists the multipart uploads
this daemon must abort (a rename or removal dropped them, or an attempt failed) until the server
has taken each abort; a new daemon adopts that list with the entries, so parts never stay on the
server because a daemon ended during an outage.

Entry states: ``open`` (a writer has it open; durable up to its last close), ``pending`` (closed,
waiting for the write-back delay or a retry), ``uploading``, ``committed`` (the server has it: the
files are removed), ``failed`` (gave up: kept, readable, listed in status until removed or retried).

All file I/O here is blocking: the manager and uploader call it through their ``run_blocking``
(a worker thread in a mount, ``basemount_py.blocking``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OPEN, PENDING, UPLOADING, COMMITTED, FAILED = "open", "pending", "uploading", "committed", "failed"
FILE, PROPERTY = "file", "property"
OWED_ABORTS = "aborts.owed"
# A spool on a file system without hard links (some network and FUSE ones): adoption moves instead.
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


def account_key(api_server: str, user_id: str) -> str:
    """The spool folder of one account on one server (a hash: no user names on disk paths)."""
    return hashlib.sha256(f"{api_server.rstrip('/')}\0{user_id}".encode()).hexdigest()[:16]


@dataclass
class SpoolEntry:
    id: str
    kind: str  # FILE or PROPERTY
    mount_path: list[str]  # where it shows in the mount (status, .error, the tree after a restart)
    name: str
    # FILE: the app result and the folder inside its Files/; PROPERTY: the entity's collection + id
    owner_id: str
    directory: str = ""
    collection: str = "appresults"
    size: int = 0
    state: str = OPEN
    closed_once: bool = False  # a close() returned: the bytes up to then are what the writer meant
    attempts: int = 0
    error: str = ""
    file_id: str = ""  # a multipart upload this entry started (aborted if it does not complete)
    created: float = field(default_factory=time.time)
    committed_at: float = 0.0
    result_id: str = ""  # the server's file id once committed

    @property
    def remote_path(self) -> str:
        return f"{self.directory}/{self.name}" if self.directory else self.name

    @property
    def display(self) -> str:
        return "/".join(self.mount_path)


class SpoolFull(OSError):
    pass


class Spool:
    """The entries of one daemon's session folder; blocking methods (run them in a thread)."""

    def __init__(self, root: Path, account: str, max_bytes: int):
        self.account_dir = Path(root) / "spool" / account
        self.max_bytes = max_bytes
        self.session = self.account_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.entries: dict[str, SpoolEntry] = {}
        self._fds: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._persisting = threading.Lock()  # release and rename may persist one entry at once
        # Multipart uploads to abort (file id -> the file it was for), kept in OWED_ABORTS:
        # owe() and paid() change it (on the event loop) and count the change; the next persist
        # (of it or of any entry, in a worker thread) writes a copy of it and the count it covers.
        self.owed: dict[str, str] = {}
        self._owed_changes = 0
        self._owed_written = 0

    # -- session -------------------------------------------------------------------------------

    def open(self) -> list[SpoolEntry]:
        """Create our session folder (0700), lock it, adopt the entries of dead sessions."""
        os.makedirs(self.account_dir, mode=0o700, exist_ok=True)
        for parent in (self.account_dir.parent.parent, self.account_dir.parent, self.account_dir):
            try:
                os.chmod(parent, 0o700)
            except OSError:
                pass
        self.session.mkdir(mode=0o700)
        self._lock_fd = os.open(self.session / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Every dead session is locked before any is adopted or removed: an entry whose adoption
        # an older daemon left halfway may have its record in one dead session and its bytes in
        # another, and the bytes must still be there when the record is adopted.
        dead: dict[Path, int] = {}
        try:
            for other in sorted(self.account_dir.iterdir()):
                if other != self.session and other.is_dir():
                    fd = _lock_if_dead(other)
                    if fd is not None:
                        dead[other] = fd
            adopted: list[SpoolEntry] = []
            for other in dead:
                adopted += self._adopt(other, list(dead))
            for other in dead:
                _remove_session(other)
            return adopted
        finally:
            for fd in dead.values():
                os.close(fd)

    def _adopt(self, other: Path, dead: list[Path]) -> list[SpoolEntry]:
        """Make the entries of the dead session ``other`` ours (``dead``: every dead session)."""
        out = []
        owed = other / OWED_ABORTS
        if owed.exists():
            try:
                self.owed.update({str(k): str(v) for k, v in json.loads(owed.read_text()).items()})
            except (ValueError, AttributeError, OSError) as exc:
                log.warning("spool: unreadable list of aborts owed %s (%s)", owed, exc)
            self._owed_changes += 1
            self.persist_owed()  # ours now, before the dead session's folder goes
        for meta in sorted(other.glob("*.json")):
            try:
                entry = SpoolEntry(**json.loads(meta.read_text()))
            except (ValueError, TypeError, OSError) as exc:
                log.warning("spool: unreadable entry %s kept aside (%s)", meta, exc)
                # Renamed so that its bytes count as bytes without a record: kept (_remove_session).
                with contextlib.suppress(OSError):
                    os.rename(meta, meta.with_name(meta.name + ".unreadable"))
                continue
            if entry.state == COMMITTED:
                continue
            # Its bytes are in its own session, or (an adoption by a daemon of an earlier version,
            # which moved the data first and was killed before the record) in another dead one.
            data = next((d for d in [other, *dead] if (d / f"{entry.id}.data").exists()), None)
            if data is None:
                log.warning("spool: %s has no data file; dropped", entry.display)
                continue
            # Link, move the record, unlink: a daemon killed between any two steps leaves the record
            # and the bytes together in one session (the old one until the record moves, then ours);
            # the other session holds at most a second link to the same bytes, which costs no
            # space and which the next mount drops (_remove_session). Two renames (data, then
            # record) left, in between, a record without bytes and bytes without a record: the next
            # mount dropped the entry and removed both folders, and the file was lost.
            try:
                os.link(data / f"{entry.id}.data", self._data(entry.id))
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
                os.rename(data / f"{entry.id}.data", self._data(entry.id))  # killed next: found above
            os.rename(meta, self._meta(entry.id))
            with contextlib.suppress(FileNotFoundError):  # (moved by the rename above)
                os.unlink(data / f"{entry.id}.data")
            self.entries[entry.id] = entry
            out.append(entry)
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        try:
            if not any(self.session.glob("*.json")) and not (self.session / OWED_ABORTS).exists():
                _remove_session(self.session)
        except OSError:  # never created (an unusable --cache-dir)
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- entries -------------------------------------------------------------------------------

    def _data(self, entry_id: str) -> Path:
        return self.session / f"{entry_id}.data"

    def _meta(self, entry_id: str) -> Path:
        return self.session / f"{entry_id}.json"

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries.values() if e.state != COMMITTED)

    def create(self, **fields: Any) -> SpoolEntry:
        entry = SpoolEntry(id=uuid.uuid4().hex, **fields)
        fd = os.open(self._data(entry.id), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        self._fds[entry.id] = fd
        self.entries[entry.id] = entry  # before its record: persist() skips entries not listed
        try:
            self.persist(entry)
        except BaseException:
            # Not recorded (its disk full, say): the create fails, and leaves nothing behind. Kept
            # listed, it stayed "open" for good with no file and no writer: status showed it and
            # mark-as-complete of its app result was refused until the daemon restarted.
            self.entries.pop(entry.id, None)
            os.close(self._fds.pop(entry.id))
            for path in (self._meta(entry.id), self._data(entry.id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        return entry

    def _fd(self, entry: SpoolEntry) -> int:
        fd = self._fds.get(entry.id)
        if fd is None:
            fd = self._fds[entry.id] = os.open(self._data(entry.id), os.O_RDWR)
        return fd

    def release_fd(self, entry: SpoolEntry) -> None:
        """Nothing reads or writes the entry now: close its descriptor (thousands of files may
        wait in the spool; each would otherwise hold one). It is reopened when needed."""
        fd = self._fds.pop(entry.id, None)
        if fd is not None:
            os.close(fd)

    def _reserve(self, entry: SpoolEntry, new_size: int) -> None:
        grow = new_size - entry.size
        if grow > 0 and self.used_bytes() + grow > self.max_bytes:
            raise SpoolFull(errno.ENOSPC, f"the upload spool is full (--spool-max: {self.max_bytes / 2**20:.0f} MiB)")

    def write(self, entry: SpoolEntry, off: int, data: bytes) -> None:
        end = off + len(data)
        self._reserve(entry, end)
        fd = self._fd(entry)
        view = memoryview(data)
        pos = off
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
        entry.size = max(entry.size, end)

    def truncate(self, entry: SpoolEntry, size: int) -> None:
        self._reserve(entry, size)
        os.ftruncate(self._fd(entry), size)  # growing leaves a hole: it reads as zeros
        entry.size = size

    def read(self, entry: SpoolEntry, off: int, size: int) -> bytes:
        size = max(0, min(size, entry.size - off))
        return os.pread(self._fd(entry), size, off).ljust(size, b"\0")

    def open_reader(self, entry: SpoolEntry) -> int:
        """A descriptor of its own for a reader: it keeps reading after the entry is committed
        and its files removed (an unlinked file lives on while it is open)."""
        return os.open(self._data(entry.id), os.O_RDONLY)

    def sync(self, entry: SpoolEntry) -> None:
        """Data and state on disk: what close() guarantees."""
        os.fsync(self._fd(entry))
        self.persist(entry)

    def persist(self, entry: SpoolEntry) -> None:
        with self._persisting:
            self._write_owed()  # first: an entry that no longer names its multipart upload is owed it
            if entry.id not in self.entries:
                return  # removed meanwhile
            self._replace(self._meta(entry.id), asdict(entry))

    def _replace(self, path: Path, value: Any) -> None:
        """Write JSON atomically and durably: the old or the new content after a crash."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        self._sync_folder()

    def _sync_folder(self) -> None:
        dirfd = os.open(self.session, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    # -- multipart uploads to abort ------------------------------------------------------------------

    def owe(self, file_id: str, display: str) -> None:
        """This multipart upload must be aborted (written at the next persist)."""
        if file_id and file_id not in self.owed:
            self.owed[file_id] = display
            self._owed_changes += 1

    def paid(self, file_id: str) -> None:
        """The server has taken the abort (or the upload was completed or aborted already)."""
        if self.owed.pop(file_id, None) is not None:
            self._owed_changes += 1

    def persist_owed(self) -> None:
        with self._persisting:
            self._write_owed()

    def _write_owed(self) -> None:
        changes = self._owed_changes
        if changes == self._owed_written:
            return
        owed = dict(self.owed)  # a copy: the event loop may change the dict meanwhile
        path = self.session / OWED_ABORTS
        if owed:
            self._replace(path, owed)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            else:
                self._sync_folder()
        self._owed_written = changes  # a change made since is written by the next persist

    def md5(self, entry: SpoolEntry) -> str:
        h = hashlib.md5()
        fd = self._fd(entry)
        off = 0
        while off < entry.size:
            chunk = os.pread(fd, min(8 << 20, entry.size - off), off)
            if not chunk:  # a hole at the end that the file system did not count: zeros
                chunk = b"\0" * min(8 << 20, entry.size - off)
            h.update(chunk)
            off += len(chunk)
        return h.hexdigest()

    def failure(self, exc: OSError) -> str:
        """Why spool I/O failed, for the writer, the log, status and ``.error``."""
        full = "; its disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"the upload spool ({self.session}): {exc.strerror or exc}{full}"

    def remove(self, entry: SpoolEntry) -> None:
        """The bytes are no longer needed (committed, or the user removed the file)."""
        with self._persisting:
            self.entries.pop(entry.id, None)
            try:
                self._write_owed()  # an upload of it still to abort outlives the entry
            except OSError as exc:
                # Its disk full, say. The entry goes all the same (a removed file must not come back,
                # a committed one must not be sent again); the abort stays owed in memory, and the
                # next persist that succeeds writes it.
                log.warning("spool: could not record the multipart uploads to abort in %s: %s", self.session, exc)
        fd = self._fds.pop(entry.id, None)
        if fd is not None:
            os.close(fd)
        # The bytes first: a daemon killed in between leaves a record without bytes, which the next
        # mount drops, not bytes without a record, which it keeps as possibly the only copy of a
        # file (_remove_session).
        for path in (self._data(entry.id), self._meta(entry.id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _lock_if_dead(session: Path) -> int | None:
    """The descriptor holding the lock of ``session`` if its daemon is gone; None if it lives."""
    try:
        fd = os.open(session / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live daemon of this account owns it
        os.close(fd)
        return None
    return fd


def _remove_session(session: Path) -> None:
    """Remove a session folder whose entries are adopted or gone, unless it holds bytes that
    nothing else does: a data file without its record (``<id>.json``) that is not empty and is
    the only link to its bytes (a second link is a copy an interrupted adoption left). Such a
    folder is kept, and said so at each mount, rather than the bytes deleted unseen."""
    orphans = []
    for data in session.glob("*.data"):
        try:
            info = data.stat()
        except OSError:
            continue
        if info.st_size and info.st_nlink == 1 and not data.with_suffix(".json").exists():
            orphans.append(data.name)
    if orphans:
        log.warning(
            "spool: %s holds %d file(s) written into the mount with no record of where they go (%s): kept; copy out what you need, then remove the folder",
            session,
            len(orphans),
            ", ".join(sorted(orphans)[:5]),
        )
        return
    shutil.rmtree(session, ignore_errors=True)
