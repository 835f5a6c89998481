"""Background uploads of spooled files: write-back delay, bounded retries with backoff, no duplicates.

A closed file waits ``write_back`` seconds (rclone's ``--vfs-write-back``: a rename in that time,
rsync's temp-file pattern, only renames the spooled file), then is uploaded from the spool:

* up to the small-file threshold in one request (``POST appresults/{id}/files``, ``Content-MD5``);
* larger as a multipart upload, ``parallel`` parts in flight, each read from the spool in a worker
  thread, then ``uploadstatus=complete``. The multipart file id is recorded in the entry before the
  first part, so an upload that fails, or whose daemon dies, is aborted (by this daemon or the next)
  and its parts removed.

An attempt that fails is retried after a backoff (``RETRY_BASE`` doubling to ``RETRY_MAX``), up to
``attempts`` times; each request inside an attempt has the client's own retries and deadline. A
refused request (400/403/404/409) is not retried. Before re-sending an entry that may already have
reached the server (a retry, or an entry adopted from a dead daemon) the app result's file listing
is checked: a file of that path with the same size and MD5 means the earlier attempt landed, and is
taken as the commit (no duplicate); a different file of that path fails the entry with that reason.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from ..api.client import FILES_PAGE_MAX, BaseSpaceClient
from ..api.errors import ApiError
from .api import WriteApi
from .spool import COMMITTED, FAILED, FILE, PENDING, PROPERTY, UPLOADING, Spool, SpoolEntry
from .upload import UploadConfig, content_type

log = logging.getLogger(__name__)

RETRY_BASE = 2.0
RETRY_MAX = 60.0
REFUSED = {400, 403, 404, 409, 413}  # the server said no: another attempt gets the same answer


@dataclass
class _Progress:
    ready_at: float = 0.0
    kick: trio.Event = field(default_factory=trio.Event)
    attempt_done: trio.Event = field(default_factory=trio.Event)
    sent: int = 0
    last_error: str = ""
    running: bool = False
    verify_first: bool = False  # the server may have this already: check before sending


class Uploader:
    def __init__(
        self,
        api: WriteApi,
        client: BaseSpaceClient,
        spool: Spool,
        cfg: UploadConfig,
        on_committed: Callable[[SpoolEntry, dict], Awaitable[None]],
        on_failed: Callable[[SpoolEntry], None],
        fetch: Callable[[str, int, int], Awaitable[bytes]] | None = None,
    ):
        self.api, self.client, self.spool, self.cfg = api, client, spool, cfg
        self.on_committed, self.on_failed = on_committed, on_failed
        self.fetch = fetch  # content reader (file id, start, end), for the duplicate check
        self.progress: dict[str, _Progress] = {}
        self.files = trio.Semaphore(max(1, cfg.parallel_files))
        self.recent: list[SpoolEntry] = []  # committed in this session, newest last (status)
        # Folders with a lookup or rename in flight, and when each becomes quiet again
        # (WriteManager.folder_activity): a pending upload there does not start before that.
        self.busy: dict[tuple[str, ...], int] = {}
        self.quiet_from: dict[tuple[str, ...], float] = {}
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def _progress(self, entry: SpoolEntry) -> _Progress:
        p = self.progress.get(entry.id)
        if p is None:
            p = self.progress[entry.id] = _Progress()
        return p

    # -- scheduling -----------------------------------------------------------------------------

    def schedule(self, entry: SpoolEntry, delay: float | None = None, verify: bool = False) -> None:
        """The entry is complete locally: upload it after ``delay`` (the write-back delay)."""
        p = self._progress(entry)
        p.ready_at = trio.current_time() + (self.cfg.write_back if delay is None else delay)
        p.verify_first = p.verify_first or verify
        if not p.running:
            p.running = True
            assert self._nursery is not None
            self._nursery.start_soon(self._drive, entry, p)
        else:
            p.kick.set()

    def flush(self, entry: SpoolEntry | None = None) -> None:
        """Upload now (no write-back delay, no backoff wait): one entry, or every pending one."""
        for e in [entry] if entry is not None else list(self.spool.entries.values()):
            p = self.progress.get(e.id)
            if e.state == PENDING and p is not None:
                p.ready_at = 0.0
                p.kick.set()

    async def wait_attempt(self, entry: SpoolEntry) -> None:
        """fsync: upload this entry now and wait for the outcome of that attempt."""
        p = self._progress(entry)
        if entry.state == COMMITTED or entry.state == FAILED:
            return
        event = p.attempt_done
        self.flush(entry)
        await event.wait()

    async def _drive(self, entry: SpoolEntry, p: _Progress) -> None:
        try:
            while entry.state == PENDING and entry.id in self.spool.entries:
                with trio.move_on_at(p.ready_at):
                    await p.kick.wait()
                if p.kick.is_set():
                    p.kick = trio.Event()
                    if trio.current_time() < p.ready_at:
                        continue  # rescheduled (reopened and closed again, say)
                if entry.state != PENDING or entry.id not in self.spool.entries:
                    break
                async with self.files:
                    if entry.state != PENDING or entry.id not in self.spool.entries:
                        break
                    folder = tuple(entry.mount_path[:-1])
                    if self.busy.get(folder) or trio.current_time() < self.quiet_from.get(folder, 0.0):
                        p.ready_at = max(self.quiet_from.get(folder, 0.0), trio.current_time() + 0.05)
                        continue  # a rename may be on its way
                    await self._attempt(entry, p)
        finally:
            p.running = False
            if entry.state in (COMMITTED, FAILED) or entry.id not in self.spool.entries:
                p.attempt_done.set()

    async def _attempt(self, entry: SpoolEntry, p: _Progress) -> None:
        entry.state = UPLOADING
        entry.attempts += 1
        p.sent = 0
        await trio.to_thread.run_sync(self.spool.persist, entry)
        done, p.attempt_done = p.attempt_done, trio.Event()
        try:
            result = await (self._upload_property(entry) if entry.kind == PROPERTY else self._upload_file(entry, p))
        except Exception as exc:
            await self.abort_multipart(entry)
            reason = str(exc) or type(exc).__name__
            p.last_error = reason
            p.verify_first = True  # it may have landed although the answer was lost
            status = exc.status if isinstance(exc, ApiError) else 0
            if entry.id not in self.spool.entries:
                pass  # removed while uploading
            elif status in REFUSED or entry.attempts >= self.cfg.attempts:
                entry.state, entry.error = FAILED, reason
                await trio.to_thread.run_sync(self.spool.persist, entry)
                log.error("upload of %s failed for good after %d attempt(s): %s (kept in the spool: "
                          "basemount-py retry PATH, or rm it)", entry.display, entry.attempts, reason)
                self.on_failed(entry)
            else:
                delay = min(RETRY_MAX, RETRY_BASE * 2 ** (entry.attempts - 1))
                entry.state, entry.error = PENDING, reason
                await trio.to_thread.run_sync(self.spool.persist, entry)
                log.warning("upload of %s failed (attempt %d of %d, next in %.0f s): %s",
                            entry.display, entry.attempts, self.cfg.attempts, delay, reason)
                p.ready_at = trio.current_time() + delay
        else:
            entry.state, entry.error, entry.committed_at = COMMITTED, "", trio.current_time()
            if entry.kind == FILE:
                entry.result_id = str(result.get("Id", ""))
            await trio.to_thread.run_sync(self.spool.remove, entry)
            self.recent = (self.recent + [entry])[-50:]
            self.progress.pop(entry.id, None)
            try:
                await self.on_committed(entry, result)
            except Exception:
                log.exception("updating the tree after uploading %s", entry.display)
        finally:
            if entry.id in self.spool.entries and entry.state != UPLOADING:
                self.spool.release_fd(entry)  # the attempt's reads are over
            done.set()

    # -- one attempt ----------------------------------------------------------------------------

    async def _upload_property(self, entry: SpoolEntry) -> dict:
        data = await trio.to_thread.run_sync(self.spool.read, entry, 0, entry.size)
        value = data.decode("utf-8", "replace")
        value = value[:-1] if value.endswith("\n") else value
        prop = {"Type": "string", "Name": entry.name, "Description": "", "Content": value}
        return await self.api.set_properties(entry.collection, entry.owner_id, [prop])

    async def _upload_file(self, entry: SpoolEntry, p: _Progress) -> dict:
        if p.verify_first:
            existing = await self._already_there(entry)
            if existing is not None:
                log.info("%s is already on BaseSpace (same size and MD5): not sent again", entry.display)
                return existing
        if entry.size <= self.cfg.small_threshold:
            data = await trio.to_thread.run_sync(self.spool.read, entry, 0, entry.size)
            digest = await trio.to_thread.run_sync(_md5_b64, data)
            result = await self.api.upload_small(
                entry.owner_id, entry.name, entry.directory, data, content_type(entry.name), digest
            )
            p.sent = entry.size
            return result
        entry.file_id = await self.api.start_multipart(entry.owner_id, entry.name, entry.directory, content_type(entry.name))
        await trio.to_thread.run_sync(self.spool.persist, entry)  # abortable by the next daemon
        part = self.cfg.part_size
        count = math.ceil(entry.size / part)
        slots = trio.Semaphore(max(1, self.cfg.parallel))

        async def put(number: int) -> None:
            try:
                start = (number - 1) * part
                data = await trio.to_thread.run_sync(self.spool.read, entry, start, min(part, entry.size - start))
                digest = await trio.to_thread.run_sync(_md5_b64, data)
                await self.api.put_part(entry.file_id, number, data, digest)
                p.sent += len(data)
            finally:
                slots.release()

        async with trio.open_nursery() as parts:
            for number in range(1, count + 1):
                await slots.acquire()
                parts.start_soon(put, number)
        result = await self.api.complete(entry.file_id)
        entry.file_id = ""
        return result

    async def abort_multipart(self, entry: SpoolEntry) -> None:
        """A multipart upload that will not complete: abort it so the server drops its parts."""
        if not entry.file_id:
            return
        file_id = entry.file_id
        with trio.move_on_after(30):
            try:
                await self.api.abort(file_id)
                log.info("aborted the multipart upload %s of %s", file_id, entry.display)
            except Exception as exc:
                log.warning("aborting the multipart upload %s of %s: %s", file_id, entry.display, exc)
        entry.file_id = ""

    async def _already_there(self, entry: SpoolEntry) -> dict | None:
        """The server's file at this entry's path if it has the same bytes; raises if it differs."""
        await self.abort_multipart(entry)  # a multipart upload of a dead daemon: never completed
        items = await self.client.list_all(f"v1pre3/appresults/{entry.owner_id}/files", page_size=FILES_PAGE_MAX)
        match = next((i for i in items if str(i.get("Path", "")).lstrip("/") == entry.remote_path), None)
        if match is None:
            return None
        ours = await trio.to_thread.run_sync(self.spool.md5, entry)
        if int(match.get("Size") or -1) == entry.size:
            theirs = await self._server_md5(match, ours)
            if theirs == ours:
                return match
        raise ApiError(
            f"a different file {entry.remote_path!r} is already in this app result "
            f"(server: {match.get('Size')} bytes; ours: {entry.size} bytes, MD5 {ours})",
            status=409,
        )

    async def _server_md5(self, item: dict, ours: str) -> str:
        """MD5 of the server's bytes: its ETag when that is our MD5 (a single-part S3 ETag is the
        MD5 of the bytes; no other ETag equals it by chance), else read the content and hash it."""
        etag = str(item.get("ETag") or "").strip('"').lower()
        if etag == ours:
            return etag
        if self.fetch is None:
            return ""
        h = hashlib.md5()
        size, step, off = int(item.get("Size") or 0), 8 << 20, 0
        while off < size:
            chunk = await self.fetch(str(item["Id"]), off, min(size, off + step))
            h.update(chunk)
            off += len(chunk)
            if not chunk:
                break
        return h.hexdigest()

    # -- what the status file shows -------------------------------------------------------------

    def sent(self, entry: SpoolEntry) -> int:
        p = self.progress.get(entry.id)
        return p.sent if p is not None else 0

    def last_error(self, entry: SpoolEntry) -> str:
        p = self.progress.get(entry.id)
        return entry.error or (p.last_error if p is not None else "")


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()

