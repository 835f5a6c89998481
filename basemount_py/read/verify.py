"""``--verify``: check a whole-file sequential read against the file's ``ETag``.

BaseSpace's ``ETag`` is the MD5 of the content (recorded real traffic: the same value on the API
and on its S3 content host), except after a multipart upload, where it is S3's ``<md5>-<parts>``:
an MD5 of the parts' MD5s, which cannot be checked without knowing the part size the uploader
used. Such files, files with no ETag, empty files and reads that are not one pass over the whole
file (random access, a partial read) are simply not verified.

:class:`VerifiedReader` wraps one open handle's reader. It hashes the bytes the handle returns in
file order: the kernel's readahead may deliver reads slightly out of order, so reads ahead of the
hashed prefix wait in a bounded buffer (beyond it, or on a seek backwards past it, the handle gives
up verifying, logged at debug level). The hashing runs in a worker thread (hashlib releases the GIL)
in batches of ``HASH_BATCH`` bytes, one batch at a time per handle, so the trio loop keeps serving
other requests and a 1 MiB read does not pay a thread hop of its own. When the hashed
prefix reaches the end of the file the digest is compared: a mismatch fails the read that completed
it with EIO (``IntegrityError``), logs one error line and drops the file's cached blocks, so the
next read fetches the bytes again instead of serving the same wrong ones.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, Awaitable, Callable

import trio

from ..api.errors import IntegrityError

log = logging.getLogger(__name__)

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
MAX_AHEAD = 64 * 2**20  # bytes read ahead of the hashed prefix kept for hashing, per handle
HASH_BATCH = 4 * 2**20  # in-order bytes are hashed in batches this big: one thread hop per batch


def plain_md5(etag: Any) -> str | None:
    """The MD5 an ETag states, or None when it states none we can check (multipart, absent, junk)."""
    if not isinstance(etag, str):
        return None
    value = etag.strip().strip('"').lower()
    return value if _PLAIN_MD5.match(value) else None


class VerifiedReader:
    """A reader (``read(offset, size)``, ``close()``) whose whole-file sequential pass is checked."""

    def __init__(self, reader: Any, file_id: str, size: int, expected_md5: str, on_mismatch: Callable[[Any], Awaitable[None]]):
        # on_mismatch(reader): forget the cached copies of the bytes that failed
        self.reader = reader
        self.file_id = file_id
        self.size = size
        self.expected = expected_md5
        self.on_mismatch = on_mismatch
        self.state = "reading"  # -> "verified" | "mismatch" | "skipped"
        self._md5 = hashlib.md5()
        self._hashed = 0  # bytes [0, _hashed) are in the digest
        self._ahead: dict[int, bytes] = {}  # offset -> bytes read beyond the hashed prefix
        self._ahead_bytes = 0
        self._batch: list[memoryview] = []  # in-order bytes not hashed yet
        self._batch_bytes = 0
        self._lock = trio.Lock()

    async def read(self, offset: int, size: int) -> bytes:
        if self.state == "mismatch":  # this handle already delivered bytes that failed the check
            raise IntegrityError(f"file {self.file_id}: content does not match its ETag (MD5)")
        data = await self.reader.read(offset, size)
        if self.state == "reading" and data:
            await self._feed(offset, data)
        return data

    async def close(self) -> None:
        if self.state == "reading" and self._hashed:
            log.debug("file %s: read %d of %d bytes in order; not verified", self.file_id, self._hashed, self.size)
        await self.reader.close()

    async def _feed(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end <= self._hashed:
            return  # a re-read of hashed bytes
        if offset > self._hashed:
            if self._ahead_bytes + len(data) > MAX_AHEAD:
                self._give_up(f"reads run more than {MAX_AHEAD >> 20} MiB ahead of the hashed prefix")
                return
            if offset not in self._ahead:
                self._ahead[offset] = data
                self._ahead_bytes += len(data)
            return
        self._append(memoryview(data)[self._hashed - offset :], end)
        # take every buffered piece that now continues the prefix
        while (piece := self._take_ahead()) is not None:
            self._append(piece, self._hashed + len(piece))
        complete = self._hashed >= self.size
        if self._batch_bytes < HASH_BATCH and not complete:
            return
        async with self._lock:  # one batch at a time, in order
            pieces, self._batch, self._batch_bytes = self._batch, [], 0
            if pieces:
                await trio.to_thread.run_sync(_update, self._md5, pieces)
            if complete and self.state == "reading":
                await self._conclude()

    def _append(self, piece: memoryview, end: int) -> None:
        self._batch.append(piece)
        self._batch_bytes += len(piece)
        self._hashed = end

    def _take_ahead(self) -> memoryview | None:
        for start in sorted(self._ahead):
            if start > self._hashed:
                return None
            data = self._ahead.pop(start)
            self._ahead_bytes -= len(data)
            if start + len(data) > self._hashed:
                return memoryview(data)[self._hashed - start :]
        return None

    async def _conclude(self) -> None:
        digest = self._md5.hexdigest()
        self._ahead.clear()
        if digest == self.expected:
            self.state = "verified"
            log.debug("file %s: %d bytes verified against its ETag", self.file_id, self.size)
            return
        self.state = "mismatch"
        log.error(
            "file %s: the %d bytes read have MD5 %s but the ETag says %s: failing the read with EIO",
            self.file_id,
            self.size,
            digest,
            self.expected,
        )
        await self.on_mismatch(self.reader)
        raise IntegrityError(f"file {self.file_id}: content MD5 {digest} does not match its ETag {self.expected}")

    def _give_up(self, why: str) -> None:
        self.state = "skipped"
        self._ahead.clear()
        self._ahead_bytes = 0
        log.debug("file %s: not verified (%s)", self.file_id, why)


def _update(md5: Any, pieces: list) -> None:
    for piece in pieces:
        md5.update(piece)
