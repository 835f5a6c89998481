"""The persistent content cache: file blocks on local disk, shared by mounts and kept across them.

Layout, under ``<cache-dir>/content/`` (the spool of uploads lives beside it in ``<cache-dir>/spool``)::

    v2/<2 hex>/<key>.data   the file's bytes at their own offsets (a sparse file)
    v2/<2 hex>/<key>.idx    one 8-byte record per block: (length, checksum of the block)

``v2`` holds records checked with XXH3 (checksum.py); a ``v1`` directory left by an older version
(CRC-32 records) is not read.

``key`` is a digest of the file id, its ETag and its size, so content that changed under the same
id is a different key and never served (a file without an ETag is keyed by its modification time
instead). A record of zeros is an absent block (a hole).

Why this shape:

* **Verified on read back.** Each block's checksum is checked when it is read; a block that does not
  match (disk corruption, a torn write after a crash, a record without its data) is dropped (its
  record zeroed, a warning logged) and fetched again from the network. Corrupt bytes are never
  returned.
* **Shared by concurrent mounts.** Writers only ever write the same bytes at the same offset for a
  key (the key pins the content), then the record after the data, each with one ``pwrite``; a
  reader sees either no record, or a record whose data is already there (one page cache for all
  processes). A file evicted by one mount while another has it open stays readable through the
  other's descriptors until it closes them: the records and the data are opened as a pair.
* **Bounded.** ``max_bytes`` bounds the disk space the cache holds (allocated blocks of data and
  records). Eviction is least-recently-used by file: the index file's modification time is its last
  use (touched at most once a minute per file), so the order survives restarts and is the same for
  every mount sharing the directory. Other mounts' writes are picked up by a rescan at least once a
  minute.
* **Never in the way.** Every failure of the cache (disk full, unwritable directory, I/O error) is
  logged and falls back to the network: a full disk suspends writing for a while after evicting
  what it can, a cache directory that cannot be written disables the cache at mount time.

Everything here is synchronous and blocking: the read path calls it through ``trio.to_thread``,
except :meth:`DiskCache.read_run_in_memory`, which never waits on the disk and is called on the
trio thread. One lock guards the table of open files and the usage accounting; the
``pread``/``pwrite`` calls themselves run outside it. A pair of descriptors in use is closed only
when its last user is done (``_using``), so eviction by another thread cannot close it under a read.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .checksum import LAYOUT, block_checksum, first_mismatch

log = logging.getLogger(__name__)

RECORD = struct.Struct("<II")  # block length, checksum of the block (checksum.py)
RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)  # Linux: a read that fails rather than wait on the disk (0: none)
OPEN_FILES = 64  # (data, records) descriptor pairs kept open, least recently used closed first
PAIR_OPEN_TRIES = 3  # opens of a file's pair that may find it removed meanwhile before giving up
TOUCH_INTERVAL = 60.0  # seconds between two "last used" updates of one file
RESCAN_INTERVAL = 60.0  # seconds between two scans of the directory (other mounts' writes)
SUSPEND_AFTER_FULL = 30.0  # seconds without writes after the disk was found full
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class ContentKey:
    """What pins a file's content: its id, its ETag (else its modification time) and its size."""

    file_id: str
    version: str
    size: int

    def digest(self) -> str:
        basis = f"{self.file_id}\0{self.version}\0{self.size}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(basis).hexdigest()[:40]


class _Removed(Exception):
    """The files of a pair were removed (forgotten, evicted) between their opening and the table."""


class _Pair:
    __slots__ = ("data", "records", "touched", "users", "retired")

    def __init__(self, data: int, records: int):
        self.data = data
        self.records = records
        self.touched = 0.0
        self.users = 0  # reads and writes using the descriptors now
        self.retired = False  # out of the table of open files: closed when its last user is done


class DiskCache:
    """Blocks of ``block_size`` bytes per :class:`ContentKey`, in ``root`` (see module docstring)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, block_size: int):
        self.root = os.path.join(os.fspath(root), LAYOUT)
        self.max_bytes = max_bytes
        self.block_size = block_size
        self._lock = threading.Lock()
        # Guards only each pair's users and retired flags, never held across I/O: the trio thread
        # takes it (read_run_in_memory), and must not wait for a rescan that holds _lock.
        self._refs = threading.Lock()
        self._nowait = RWF_NOWAIT != 0  # False once the cache's file system refuses it
        self._open: OrderedDict[str, _Pair] = OrderedDict()
        self._usage: dict[str, tuple[int, float]] = {}  # digest -> (bytes on disk, last used)
        self._used = 0
        self._scanned = 0.0
        self._suspended_until = 0.0
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "written": 0, "write_errors": 0, "evicted": 0}

    @classmethod
    def open(cls, root: str | os.PathLike, max_bytes: int, block_size: int) -> "DiskCache | None":
        """The cache at ``root``, or None (logged) when the directory cannot be used."""
        layout = LAYOUT
        try:
            os.makedirs(os.path.join(root, layout), mode=0o700, exist_ok=True)
            probe = os.path.join(root, layout, f".probe-{os.getpid()}")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            log.warning("content cache disabled: cannot write to %s (%s); reading from the network only", root, exc.strerror or exc)
            return None
        cache = cls(root, max_bytes, block_size)
        cache._rescan()
        log.info("content cache in %s: %.1f of %.1f GiB used, XXH3 checksums", cache.root, cache._used / 2**30, max_bytes / 2**30)
        return cache

    def close(self) -> None:
        with self._lock:
            while self._open:
                self._retire(self._open.popitem()[1])

    # -- reading -------------------------------------------------------------------------------

    def read(self, key: ContentKey, first: int, last: int) -> list[bytearray | None]:
        """Blocks ``[first, last)`` of ``key``: a verified buffer for each cached block, else None."""
        out: list[bytearray | None] = [None] * (last - first)
        try:
            with self._using(key, create=False) as pair:
                if pair is None:
                    self.stats["misses"] += last - first
                    return out
                records = os.pread(pair.records, RECORD.size * (last - first), RECORD.size * first)
                present = []
                for i in range(len(records) // RECORD.size):
                    length, check = RECORD.unpack_from(records, i * RECORD.size)
                    if 0 < length <= self.block_size and length == self._block_length(key, first + i):
                        present.append((first + i, length, check))
                for run in _runs(present):
                    buffers = [bytearray(length) for _, length, _ in run]
                    got = os.preadv(pair.data, buffers, run[0][0] * self.block_size)
                    if got != sum(len(b) for b in buffers):
                        continue  # a record without its data (a crash between the two writes)
                    for (index, _, check), buffer in zip(run, buffers, strict=True):
                        if block_checksum(buffer) == check:
                            out[index - first] = buffer
                        else:
                            self._drop_block(key, pair, index)
                self._touch(key, pair)
        except OSError as exc:
            log.warning("content cache: reading %s failed (%s); reading from the network", key.file_id, exc.strerror or exc)
        hits = sum(b is not None for b in out)
        self.stats["hits"] += hits
        self.stats["misses"] += len(out) - hits
        return out

    def blocks_present(self, key: ContentKey) -> bytearray:
        """One flag per block of ``key``: 1 where the cache has a record of the right length.

        A snapshot (blocks written later are not in it), and a hint only: the bytes are verified
        when they are read (:meth:`read_run`). Reading it costs one ``pread`` of 8 bytes a block."""
        blocks = -(-key.size // self.block_size)
        flags = bytearray(blocks)
        try:
            with self._using(key, create=False) as pair:
                if pair is None:
                    return flags
                records = os.pread(pair.records, RECORD.size * blocks, 0)
                self._touch(key, pair)  # a handle about to read it: a use (and reads need not touch it soon)
        except OSError as exc:
            log.warning("content cache: reading %s failed (%s); reading from the network", key.file_id, exc.strerror or exc)
            return flags
        for index, (length, _) in enumerate(RECORD.iter_unpack(records[: len(records) // RECORD.size * RECORD.size])):
            flags[index] = 0 < length == self._block_length(key, index)
        return flags

    def read_run(self, key: ContentKey, first: int, last: int) -> bytes | None:
        """Blocks ``[first, last)`` of ``key`` as one buffer, every block verified; None when one of
        them is absent, short or corrupt (a corrupt one is dropped, as in :meth:`read`).

        The fast path of a cache hit: one ``pread`` into one buffer that is handed to the kernel
        as is (the reader slices it with a memoryview), no per-block buffers, no memory cache.
        ``pread`` rather than ``preadv`` into a ``bytearray``: a new bytes object is not zeroed
        first (that memset was 6 % of the daemon's CPU on a re-read)."""
        try:
            with self._using(key, create=False) as pair:
                if pair is None:
                    return None
                records = os.pread(pair.records, RECORD.size * (last - first), RECORD.size * first)
                checks = self._checks(key, first, last, records)
                if checks is None:
                    return None
                nbytes = sum(length for length, _ in checks)
                buffer = os.pread(pair.data, nbytes, first * self.block_size)
                if len(buffer) != nbytes:
                    return None  # a record without its data (a crash between the two writes)
                corrupt = first_mismatch(buffer, self.block_size, checks)
                if corrupt is not None:
                    self._drop_block(key, pair, first + corrupt)
                    return None
                self._touch(key, pair)
        except OSError as exc:
            log.warning("content cache: reading %s failed (%s); reading from the network", key.file_id, exc.strerror or exc)
            return None
        self.stats["hits"] += last - first
        return buffer

    def read_run_in_memory(self, key: ContentKey, first: int, last: int) -> bytearray | None:
        """:meth:`read_run` that never waits on the disk, for the trio thread: the blocks, verified,
        only if the page cache holds all of them and their records (reads with ``RWF_NOWAIT``).

        None when they are not all in memory, the file is not open here yet, its use is due to be
        recorded (:meth:`_touch`), or a block fails its check: :meth:`read_run` in a worker thread
        then decides, and drops a corrupt block. A second mount's re-read finds most of its bytes
        already read in by the kernel's readahead on the cache file, so most reads end here with
        one copy and no thread hop. It takes no lock that a worker holds across I/O."""
        if not self._nowait:
            return None
        pair = self._open.get(key.digest())  # without _lock: a rescan may hold it across I/O
        if pair is None or time.monotonic() - pair.touched >= TOUCH_INTERVAL or not self._hold(pair):
            return None
        try:
            records = bytearray(RECORD.size * (last - first))
            if os.preadv(pair.records, [records], RECORD.size * first, RWF_NOWAIT) != len(records):
                return None
            checks = self._checks(key, first, last, records)
            if checks is None:
                return None
            buffer = bytearray(sum(length for length, _ in checks))
            if os.preadv(pair.data, [buffer], first * self.block_size, RWF_NOWAIT) != len(buffer):
                return None  # partly in memory, or a record without its data: read_run decides
        except BlockingIOError:
            return None  # not all in memory: the read in a worker thread waits for the disk
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait = False
                log.info("content cache: %s cannot be read without waiting (%s); reading it in worker threads", self.root, exc.strerror or exc)
            return None  # any other error: read_run meets it again, logs it and falls back
        finally:
            self._release(pair)
        if first_mismatch(buffer, self.block_size, checks) is not None:
            return None
        self.stats["hits"] += last - first
        return buffer

    def _checks(self, key: ContentKey, first: int, last: int, records: bytes | bytearray) -> list[tuple[int, int]] | None:
        """The (length, checksum) records of blocks ``[first, last)``, or None if one is absent or
        of the wrong length (a hole, a record cut short)."""
        if len(records) != RECORD.size * (last - first):
            return None
        checks = list(RECORD.iter_unpack(records))
        # Only the file's final block may be short: every block before the last one asked for
        # is whole (16 calls of _block_length per 1 MiB read were a tenth of this path's time).
        final = self._block_length(key, last - 1)
        if final == 0 or checks[-1][0] != final or any(length != self.block_size for length, _ in checks[:-1]):
            return None
        return checks

    def _drop_block(self, key: ContentKey, pair: _Pair, index: int) -> None:
        self.stats["corrupt"] += 1
        log.warning("content cache: block %d of file %s failed its checksum; dropped, fetching it again", index, key.file_id)
        try:
            os.pwrite(pair.records, bytes(RECORD.size), RECORD.size * index)
        except OSError:
            pass  # it stays unverifiable, and so is never returned

    def forget(self, key: ContentKey) -> None:
        """Remove every cached block of ``key``: its bytes failed the check against the file's
        ETag (``--verify``), so they must be fetched again, not served from here."""
        digest = key.digest()
        with self._lock:
            pair = self._open.pop(digest, None)
            if pair is not None:
                self._retire(pair)
            self._used -= self._usage.pop(digest, (0, 0.0))[0]
            # Under the lock, as eviction does: _pair then sees the files gone (see there).
            for suffix in (".idx", ".data"):
                try:
                    os.unlink(self._path(digest) + suffix)
                except OSError:
                    pass  # absent already, or evicted meanwhile

    # -- writing -------------------------------------------------------------------------------

    def write(self, key: ContentKey, first: int, blocks: list) -> bool:
        """Store consecutive blocks starting at block ``first``; False if they were not stored."""
        nbytes = sum(len(b) for b in blocks)
        if not blocks or time.monotonic() < self._suspended_until:
            return False
        if not self._make_room(key, nbytes):
            return False
        try:
            with self._using(key, create=True) as pair:
                assert pair is not None
                written = os.pwritev(pair.data, blocks, first * self.block_size)
                if written != nbytes:
                    raise OSError(errno.ENOSPC, "short write")
                records = b"".join(RECORD.pack(len(b), block_checksum(b)) for b in blocks)
                os.pwrite(pair.records, records, RECORD.size * first)
        except OSError as exc:
            self.stats["write_errors"] += 1
            self._write_failed(key, exc)
            return False
        self.stats["written"] += nbytes
        with self._lock:
            size, _ = self._usage.get(key.digest(), (0, 0.0))
            self._usage[key.digest()] = (size + nbytes + RECORD.size * len(blocks), time.time())
            self._used += nbytes + RECORD.size * len(blocks)
        return True

    def _write_failed(self, key: ContentKey, exc: OSError) -> None:
        if exc.errno in NO_SPACE:
            log.warning(
                "content cache: the disk is full (%s); evicting old files and reading from the network for %.0f s",
                exc.strerror or exc,
                SUSPEND_AFTER_FULL,
            )
            with self._lock:
                # What we believed fits does not: shrink the bound to what is there now.
                self._rescan_locked()
                self._evict_locked(keep=key.digest(), target=int(self._used * 0.9))
        else:
            log.warning("content cache: writing failed (%s); reading from the network for %.0f s", exc.strerror or exc, SUSPEND_AFTER_FULL)
        self._suspended_until = time.monotonic() + SUSPEND_AFTER_FULL

    def _make_room(self, key: ContentKey, nbytes: int) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._scanned > RESCAN_INTERVAL:
                self._rescan_locked()
            if self._used + nbytes <= self.max_bytes:
                return True
            self._evict_locked(keep=key.digest(), target=self.max_bytes - nbytes)
            return self._used + nbytes <= self.max_bytes

    # -- accounting and eviction -------------------------------------------------------------

    def _rescan(self) -> None:
        with self._lock:
            self._rescan_locked()

    def _rescan_locked(self) -> None:
        usage: dict[str, tuple[int, float]] = {}
        try:
            shards = list(os.scandir(self.root))
        except OSError:
            shards = []
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in entries:
                digest, _, kind = entry.name.partition(".")
                if kind not in ("data", "idx"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size, used = usage.get(digest, (0, 0.0))
                last = st.st_mtime if kind == "idx" else used
                usage[digest] = (size + st.st_blocks * 512, max(used, last))
        self._usage = usage
        self._used = sum(size for size, _ in usage.values())
        self._scanned = time.monotonic()

    def _evict_locked(self, keep: str, target: int) -> None:
        for digest, (size, _) in sorted(self._usage.items(), key=lambda item: item[1][1]):
            if self._used <= target:
                return
            if digest == keep:
                continue
            base = self._path(digest)
            for suffix in (".idx", ".data"):
                try:
                    os.unlink(base + suffix)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("content cache: cannot evict %s (%s)", base + suffix, exc.strerror or exc)
            pair = self._open.pop(digest, None)
            if pair is not None:
                self._retire(pair)
            del self._usage[digest]
            self._used -= size
            self.stats["evicted"] += 1

    # -- files ---------------------------------------------------------------------------------

    def _path(self, digest: str) -> str:
        return os.path.join(self.root, digest[:2], digest)

    @contextmanager
    def _using(self, key: ContentKey, create: bool) -> Iterator[_Pair | None]:
        """The open pair of ``key`` (None: not cached), held open while in use. A pair evicted or
        closed by another thread meanwhile is closed when its last user is done: were its
        descriptors closed under a read, their numbers could be reused by another file's pair, and
        the read would return that file's bytes, consistent with that file's records."""
        pair = self._pair(key, create)
        try:
            yield pair
        finally:
            if pair is not None:
                self._release(pair)

    def _pair(self, key: ContentKey, create: bool) -> _Pair | None:
        """The open pair of ``key``, held (:meth:`_release` it), or None when it is not cached."""
        for _ in range(PAIR_OPEN_TRIES):
            try:
                return self._try_pair(key, create)
            except _Removed:
                continue
        # Forgotten or evicted under every attempt (pathological churn): a failed write, a miss.
        if create:
            raise OSError(errno.EAGAIN, "cache files removed while being opened")
        return None

    def _try_pair(self, key: ContentKey, create: bool) -> _Pair | None:
        """One attempt of :meth:`_pair`; raises :class:`_Removed` when the files it opened were
        removed before the pair could enter the table."""
        digest = key.digest()
        with self._lock:
            pair = self._open.get(digest)
            if pair is not None:
                self._open.move_to_end(digest)
                self._hold(pair)  # a pair in the table is never retired
                return pair
        base = self._path(digest)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        if create:
            os.makedirs(os.path.dirname(base), mode=0o700, exist_ok=True)
            flags |= os.O_CREAT
        try:
            # Records first: a records file without its data file is harmless (every read
            # comes up short and is refetched); the other way round cannot be told from a hole.
            records = os.open(base + ".idx", flags, 0o600)
        except FileNotFoundError:
            return None
        try:
            data = os.open(base + ".data", flags, 0o600)
        except OSError:
            os.close(records)
            if create:
                raise
            return None
        pair = _Pair(data, records)
        with self._lock:
            existing = self._open.get(digest)
            if existing is not None:  # another thread opened it meanwhile: keep one pair
                self._close_pair(pair)  # never handed out
                self._hold(existing)
                return existing
            if os.fstat(records).st_nlink == 0 or os.fstat(data).st_nlink == 0:
                # forget() or an eviction removed the files between our opens and here (both
                # unlink under this lock, so not after this check): a pair of deleted files would
                # keep serving forgotten bytes and take writes no other mount ever sees.
                self._close_pair(pair)
                raise _Removed
            self._open[digest] = pair
            self._hold(pair)
            self._usage.setdefault(digest, (0, time.time()))
            while len(self._open) > OPEN_FILES:
                self._retire(self._open.popitem(last=False)[1])
        return pair

    def _hold(self, pair: _Pair) -> bool:
        """Count one more user of ``pair``; False (not held) if it was retired meanwhile."""
        with self._refs:
            if pair.retired:
                return False
            pair.users += 1
            return True

    def _release(self, pair: _Pair) -> None:
        with self._refs:
            pair.users -= 1
            close = pair.retired and pair.users == 0
        if close:
            self._close_pair(pair)

    def _retire(self, pair: _Pair) -> None:
        """``pair`` has left the table of open files: close it now, or when its last user is done."""
        with self._refs:
            pair.retired = True
            close = pair.users == 0
        if close:
            self._close_pair(pair)

    def _touch(self, key: ContentKey, pair: _Pair) -> None:
        now = time.monotonic()
        if now - pair.touched < TOUCH_INTERVAL:
            return
        pair.touched = now
        try:
            os.utime(pair.records)
        except OSError:
            return
        with self._lock:
            digest = key.digest()
            if digest in self._usage:
                self._usage[digest] = (self._usage[digest][0], time.time())

    @staticmethod
    def _close_pair(pair: _Pair) -> None:
        for fd in (pair.data, pair.records):
            try:
                os.close(fd)
            except OSError:
                pass

    def _block_length(self, key: ContentKey, index: int) -> int:
        return max(0, min(self.block_size, key.size - index * self.block_size))


def _runs(present: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Group (index, length, checksum) entries into runs of consecutive block indices."""
    runs: list[list[tuple[int, int, int]]] = []
    for entry in present:
        if runs and runs[-1][-1][0] + 1 == entry[0]:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs
