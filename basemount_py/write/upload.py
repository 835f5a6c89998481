"""One upload session: the bytes the kernel writes into a new file, on their way to BaseSpace.

BaseSpace files are immutable and created in one of two ways (reference §5): a small file in
one request (``POST appresults/{id}/files?name=&directory=``, raw body), a large one as a
multipart upload (``?multipart=true``, then ``PUT files/{fid}/parts/{n}`` with ``Content-MD5``,
then ``POST files/{fid}?uploadstatus=complete``). We don't know the final size while the kernel
writes, so the session adapts:

* **Memory** holds at most about one part: ``[base, base+len(buf))``. Sequential writes append.
* **Small but unknown**: once the data outgrows one part but is still under the small-file
  threshold, it could still end up as a single-request file, so it goes to an (unlinked) temp
  file rather than staying in memory.
* **Large**: as soon as the size passes the threshold the multipart upload starts, the spilled
  prefix is sent as parts, and from then on every full part is uploaded while the writer keeps
  writing. At most ``parallel`` parts are in flight; a writer that gets ahead waits for a slot,
  so memory stays bounded (about ``(parallel + 1) * part_size``) whatever the file size.
* **Out of order** writes (a hole, or a rewrite of data not yet sent) move the rest of the file
  to the temp file, which is sent at commit. Rewriting bytes already uploaded is impossible
  (parts are gone from memory): that write fails with EIO.

``commit()`` (close/fsync) sends what is left, waits for every part, and only then marks the
file complete, so a failed part can never leave a file marked complete; on failure the
multipart upload is aborted (best effort) and the error is kept and raised to every later
caller. Blocking work (MD5 of a part, temp-file I/O) runs in worker threads.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import trio

from .api import WriteApi

log = logging.getLogger(__name__)

MiB = 2**20


@dataclass
class UploadConfig:
    small_threshold: int = 25 * MiB  # larger files go multipart (BaseSpace: > 25 MB)
    part_size: int = 8 * MiB
    parallel: int = 8  # parts in flight per file (BaseMount uploads with 8 threads per file)
    spill_dir: str | None = None  # temp files (default: $TMPDIR)


class WriteFailure(OSError):
    """A write-side failure with the errno the writer gets and a one-line message for ``.error``."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def content_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding == "gzip":
        return "application/x-gzip"
    return kind or "application/octet-stream"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class Upload:
    def __init__(self, api: WriteApi, appresult_id: str, name: str, directory: str, cfg: UploadConfig, nursery: trio.Nursery):
        self.api, self.appresult_id, self.name, self.directory = api, appresult_id, name, directory
        self.cfg = cfg
        self.nursery = nursery
        self.size = 0  # logical size: the largest end written
        self.base = 0  # [0, base) was handed to part uploads (a multiple of part_size)
        self.buf = bytearray()  # [base, base + len(buf)) while not spilled
        self.spill: int | None = None  # fd of an unlinked temp file holding [spill_base, ...)
        self.spill_base = 0
        self.dense = True  # the spill holds only appended data (no holes): it can stream again
        self.file_id: str | None = None  # the multipart upload, once started
        self.next_part = 1
        self.slots = trio.Semaphore(max(1, cfg.parallel))
        self.error: BaseException | None = None
        self.result: dict[str, Any] | None = None
        self.lock = trio.Lock()
        self.bytes_sent = 0

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name}" if self.directory else self.name

    # -- writes ---------------------------------------------------------------------------------

    async def write(self, off: int, data: bytes) -> int:
        async with self.lock:
            self._check_usable()
            if off < self.base:
                self._fail(WriteFailure(errno.EIO, f"{self.path}: rewriting bytes already uploaded (offset {off}) is not supported"))
                self._check_usable()
            if self.spill is None and off - self.base <= len(self.buf):
                rel = off - self.base
                self.buf[rel : rel + len(data)] = data
                self.size = max(self.size, off + len(data))
                await self._drain_memory()
                return len(data)
            if self.spill is None:
                await self._to_spill()
            if off != self.size:
                self.dense = False
            await trio.to_thread.run_sync(_pwrite_all, self.spill, data, off - self.spill_base)
            self.size = max(self.size, off + len(data))
            if self.dense and (self.file_id is not None or self.size > self.cfg.small_threshold):
                await self._drain_spill()
            return len(data)

    def _check_usable(self) -> None:
        if self.error is not None:
            raise _as_failure(self.error, self.path)
        if self.result is not None:
            raise WriteFailure(errno.EIO, f"{self.path} was already uploaded; BaseSpace files cannot be changed")

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            log.warning("upload of %s failed: %s", self.path, exc)

    async def _drain_memory(self) -> None:
        if self.file_id is None:
            if self.size > self.cfg.small_threshold:
                await self._start_multipart()
            elif len(self.buf) > self.cfg.part_size:
                await self._to_spill()  # small but unknown: could still be a single request
                return
            else:
                return
        part = self.cfg.part_size
        while len(self.buf) >= part:
            chunk = bytes(self.buf[:part])
            del self.buf[:part]
            self.base += part
            await self._send_part(chunk)

    async def _to_spill(self) -> None:
        def make() -> int:
            f = tempfile.TemporaryFile(prefix="basemount-upload-", dir=self.cfg.spill_dir)
            fd = os.dup(f.fileno())
            f.close()
            return fd

        self.spill = await trio.to_thread.run_sync(make)
        self.spill_base = self.base
        if self.buf:
            await trio.to_thread.run_sync(_pwrite_all, self.spill, bytes(self.buf), 0)
        self.buf = bytearray()

    async def _drain_spill(self) -> None:
        """Dense spill past the threshold: send its full parts and go back to streaming."""
        if self.file_id is None:
            await self._start_multipart()
        part = self.cfg.part_size
        while self.size - self.base >= part:
            chunk = await trio.to_thread.run_sync(os.pread, self.spill, part, self.base - self.spill_base)
            self.base += part
            await self._send_part(chunk)
        rest = await trio.to_thread.run_sync(os.pread, self.spill, self.size - self.base, self.base - self.spill_base)
        self._close_spill()
        self.buf = bytearray(rest)

    def _close_spill(self) -> None:
        if self.spill is not None:
            os.close(self.spill)
            self.spill = None

    # -- parts ----------------------------------------------------------------------------------

    async def _start_multipart(self) -> None:
        try:
            self.file_id = await self.api.start_multipart(self.appresult_id, self.name, self.directory, content_type(self.name))
        except Exception as exc:
            self._fail(exc)
            raise _as_failure(exc, self.path) from None

    async def _send_part(self, data: bytes) -> None:
        """Queue one part; waits while ``parallel`` parts are in flight (backpressure)."""
        await self.slots.acquire()
        if self.error is not None:
            self.slots.release()
            self._check_usable()
        number = self.next_part
        self.next_part += 1
        self.nursery.start_soon(self._put, number, data)

    async def _put(self, number: int, data: bytes) -> None:
        try:
            digest = await trio.to_thread.run_sync(md5_b64, data)
            assert self.file_id is not None
            await self.api.put_part(self.file_id, number, data, digest)
            self.bytes_sent += len(data)
        except Exception as exc:
            self._fail(exc)
        finally:
            self.slots.release()

    async def _wait_parts(self) -> None:
        n = max(1, self.cfg.parallel)
        for _ in range(n):
            await self.slots.acquire()
        for _ in range(n):
            self.slots.release()

    # -- commit -------------------------------------------------------------------------------

    async def commit(self) -> dict[str, Any]:
        """Send what is left, wait for every part, mark complete. Idempotent; raises WriteFailure."""
        async with self.lock:
            if self.result is not None:
                return self.result
            if self.error is not None:
                raise _as_failure(self.error, self.path)
            if self.size == 0:
                raise WriteFailure(
                    errno.EINVAL, f"{self.path}: BaseSpace does not accept zero-byte files; nothing was uploaded"
                )
            try:
                if self.file_id is None and self.size <= self.cfg.small_threshold:
                    self.result = await self._commit_small()
                else:
                    self.result = await self._commit_multipart()
            except BaseException as exc:
                if isinstance(exc, Exception):
                    self._fail(exc)
                await self._abort()
                self._close_spill()
                if isinstance(exc, Exception):
                    raise _as_failure(exc, self.path) from None
                raise
            self._close_spill()
            self.buf = bytearray()
            return self.result

    async def _commit_small(self) -> dict[str, Any]:
        if self.spill is not None:
            data = await trio.to_thread.run_sync(os.pread, self.spill, self.size - self.spill_base, 0)
            data = data.ljust(self.size - self.spill_base, b"\0")
        else:
            data = bytes(self.buf).ljust(self.size, b"\0")
        digest = await trio.to_thread.run_sync(md5_b64, data)
        result = await self.api.upload_small(self.appresult_id, self.name, self.directory, data, content_type(self.name), digest)
        self.bytes_sent += len(data)
        return result

    async def _commit_multipart(self) -> dict[str, Any]:
        if self.file_id is None:
            await self._start_multipart()
        part = self.cfg.part_size
        if self.spill is not None:
            while self.base < self.size:
                n = min(part, self.size - self.base)
                chunk = await trio.to_thread.run_sync(os.pread, self.spill, n, self.base - self.spill_base)
                self.base += n
                await self._send_part(chunk.ljust(n, b"\0"))
        else:
            self.buf = self.buf.ljust(self.size - self.base, b"\0")
            while self.buf:
                chunk = bytes(self.buf[:part])
                del self.buf[:part]
                self.base += len(chunk)
                await self._send_part(chunk)
        await self._wait_parts()
        if self.error is not None:
            raise self.error
        assert self.file_id is not None
        return await self.api.complete(self.file_id)

    async def _abort(self) -> None:
        if self.file_id is None:
            return
        with trio.move_on_after(10):
            try:
                await self.api.abort(self.file_id)
            except Exception as exc:
                log.info("aborting upload %s: %s", self.file_id, exc)

    async def discard(self) -> None:
        """The file was removed (or its writer went away without data): drop everything."""
        async with self.lock:
            if self.result is None:
                self._fail(WriteFailure(errno.EIO, f"{self.path}: upload discarded"))
                await self._wait_parts()
                await self._abort()
            self._close_spill()
            self.buf = bytearray()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _as_failure(exc: BaseException, what: str) -> WriteFailure:
    if isinstance(exc, WriteFailure):
        return exc
    status = getattr(exc, "status", 0)
    code = errno.EINVAL if status in (400, 409) else errno.EACCES if status == 401 else errno.EIO
    return WriteFailure(code, f"upload of {what} failed: {exc}")
