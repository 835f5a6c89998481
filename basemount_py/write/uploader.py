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

**Parts go while the file is written.** A multipart upload does not need its name fixed until
``complete``: once a file (not a hidden name: rsync's and editors' temp files are renamed) grows
past the small-file threshold, a *stream* starts its multipart upload and sends each part as soon
as it is fully spooled, and after close the rest, during the write-back delay. Only ``complete``
waits for that delay. A write into a part already sent marks it stale (it is sent again), a file
that shrinks below a part it already sent, or a rename, drops the stream (aborted: the server
removes its parts) and the upload starts again at close, as if there had been no stream.

**A rename can overtake an upload until its point of no return** (the one ``POST`` of a small
file, or ``complete`` of a multipart one): an attempt before that step is cancelled (its multipart
upload aborted) and the renamed file goes through the write-back delay again; only a rename that
meets the committing step waits for it, and gets EROFS if the file was committed under the old name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import trio

from ..api.client import FILES_PAGE_MAX, BaseSpaceClient, reached_server
from ..api.errors import ApiError
from ..blocking import RunBlocking, in_worker_thread
from ..tasks import never_fatal
from .api import WriteApi
from .spool import COMMITTED, FAILED, FILE, OPEN, PENDING, PROPERTY, UPLOADING, Spool, SpoolEntry
from .upload import UploadConfig, content_type

log = logging.getLogger(__name__)

RETRY_BASE = 2.0
RETRY_MAX = 60.0
REFUSED = {400, 403, 404, 409, 413}  # the server said no: another attempt gets the same answer
# A hidden name (rsync's ``.name.XXXXXX``, editors' temp files) is nearly always renamed right
# after close: it waits this many write-back delays, so that a rename held up by a loaded machine
# still finds it before its upload commits (a rename resets the delay to the normal one).
HIDDEN_NAME_WRITE_BACK_FACTOR = 6


@dataclass
class _Stream:
    """A multipart upload started while its file is still being written (see the module doc)."""

    remote_path: str  # the name it was started under: after a rename it is useless
    settled: int  # bytes the writes that returned have covered (entry.size as seen after them)
    file_id: str = ""
    sent: dict[int, int] = field(default_factory=dict)  # part number -> bytes of it the server holds
    on_server: set[int] = field(default_factory=set)  # every part number ever sent (also failed ones)
    in_flight: set[int] = field(default_factory=set)
    stale: set[int] = field(default_factory=set)  # in flight, but written into meanwhile: send again
    low: int = 1  # no part below this one needs sending
    stopping: bool = False  # no new parts (the attempt takes over, or a part failed)
    failed: bool = False
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)

    def dirty(self, start: int, end: int, part: int) -> None:
        """Bytes [start, end) changed: a part of that range already sent (or being sent) is stale."""
        if end <= start:
            return
        first, last = start // part + 1, (end - 1) // part + 1
        numbers = range(first, last + 1) if last - first < len(self.sent) + len(self.in_flight) else list(self.sent) + list(self.in_flight)
        for n in numbers:
            if not ((n - 1) * part < end and n * part > start):
                continue
            if self.sent.pop(n, None) is not None:
                self.low = min(self.low, n)
            if n in self.in_flight:
                self.stale.add(n)

    def ready(self, size: int, closed: bool, part: int, limit: int) -> list[int]:
        """Parts that can go now: every part complete in the spool (after close: also the last)."""
        count = math.ceil(size / part) if closed else size // part
        n = self.low
        while n <= count and (n in self.sent or n in self.in_flight):
            n += 1
        self.low = n
        out: list[int] = []
        while n <= count and len(out) < limit:
            if n not in self.sent and n not in self.in_flight:
                out.append(n)
            n += 1
        return out


@dataclass
class _Progress:
    ready_at: float = 0.0
    kick: trio.Event = field(default_factory=trio.Event)
    attempt_done: trio.Event = field(default_factory=trio.Event)
    sent: int = 0
    last_error: str = ""
    running: bool = False
    verify_first: bool = False  # the server may have this already: check before sending
    # `flush`/`retry` asked before the upload was scheduled (the close still recording the file
    # in the spool): the scheduling that follows takes no write-back delay.
    flush_asked: bool = False
    stream: _Stream | None = None
    # The attempt under way: a rename cancels ``scope`` unless it is ``committing`` (its point
    # of no return), and ``current`` is set when the attempt is over.
    scope: trio.CancelScope | None = None
    committing: bool = False
    starting: bool = False  # in its multipart start (shielded: a cancel waits for its answer)
    commit_sent: bool = False  # the committing request may have reached the server (client.reached_server)
    current: trio.Event | None = None


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
        run_blocking: RunBlocking = in_worker_thread,
    ):
        self.api, self.client, self.spool, self.cfg = api, client, spool, cfg
        self.run_blocking = run_blocking  # spool reads, MD5s (basemount_py.blocking)
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
        self._streams = 0  # streams running (at most parallel_files)
        # Multipart uploads to abort are owed in the spool (``Spool.owed``, kept across daemons):
        # one whose abort failed (the API was down) is tried again after the next upload that
        # succeeds, and by the next daemon at its start, so no parts stay on the server.
        # Requests that must not be cut halfway (a commit, a multipart start): only stop() does.
        self._shields: set[trio.CancelScope] = set()
        self.stopped = False
        self._aborting = self._abort_again = False  # abort_owed: one pass at a time

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def stop(self) -> None:
        """The daemon ends (its nursery is cancelled): cut the shielded requests too. A commit
        waiting on a hung server would otherwise hold the exit until its retry deadline (minutes
        with a large --op-timeout). Its outcome is then unknown, and that is safe: the entry stays
        ``uploading`` in the spool, and the next mount checks the server before sending it again."""
        self.stopped = True
        for scope in list(self._shields):
            scope.cancel()

    @contextlib.asynccontextmanager
    async def _shielded(self) -> AsyncIterator[None]:
        """Run a request that nothing but ``stop`` may cancel (a rename, a removal cannot)."""
        scope = trio.CancelScope(shield=True)
        if self.stopped:
            scope.cancel()
        self._shields.add(scope)
        try:
            with scope:
                yield
        finally:
            self._shields.discard(scope)
        if scope.cancelled_caught:  # stop() comes after the daemon's nursery was cancelled:
            await trio.lowlevel.checkpoint()  # this raises that Cancelled
            raise RuntimeError("a shielded upload request was cut although the daemon is not ending")

    def _progress(self, entry: SpoolEntry) -> _Progress:
        p = self.progress.get(entry.id)
        if p is None:
            p = self.progress[entry.id] = _Progress()
        return p

    # -- scheduling -----------------------------------------------------------------------------

    def schedule(self, entry: SpoolEntry, delay: float | None = None, verify: bool = False) -> None:
        """The entry is complete locally: upload it after ``delay`` (the write-back delay)."""
        p = self._progress(entry)
        if p.flush_asked:
            delay, p.flush_asked = 0.0, False
        p.ready_at = trio.current_time() + (self._write_back(entry) if delay is None else delay)
        p.verify_first = p.verify_first or verify
        if not p.running:
            p.running = True
            assert self._nursery is not None
            self._nursery.start_soon(self._drive, entry, p)
        else:
            p.kick.set()
        if p.stream is not None:
            p.stream.wake.set()  # closed: the last part can go too
        self._maybe_stream(entry)

    def _write_back(self, entry: SpoolEntry) -> float:
        return self.cfg.write_back * (HIDDEN_NAME_WRITE_BACK_FACTOR if _temporary(entry) else 1)

    # -- parts while the file is written ----------------------------------------------------------

    def wrote(self, entry: SpoolEntry, start: int, end: int) -> None:
        """Bytes [start, end) of an open entry changed (a write or a truncate returned)."""
        p = self.progress.get(entry.id)
        s = p.stream if p is not None else None
        if s is not None:
            s.dirty(start, end, self.cfg.part_size)
            s.settled = entry.size
            s.wake.set()
        self._maybe_stream(entry)

    def _maybe_stream(self, entry: SpoolEntry) -> None:
        if (
            entry.kind != FILE
            or entry.state not in (OPEN, PENDING)
            or entry.size <= self.cfg.small_threshold
            or _temporary(entry)
            or self._nursery is None
            or self._streams >= max(1, self.cfg.parallel_files)
        ):
            return
        p = self._progress(entry)
        if p.stream is not None or p.verify_first:  # one per upload; none for what may be on the server
            return
        p.stream = _Stream(remote_path=entry.remote_path, settled=entry.size)
        self._streams += 1
        self._nursery.start_soon(self._stream, entry, p, p.stream)

    def _streamable(self, entry: SpoolEntry, s: _Stream) -> bool:
        return not s.stopping and entry.state in (OPEN, PENDING) and entry.id in self.spool.entries and entry.remote_path == s.remote_path

    async def _stream(self, entry: SpoolEntry, p: _Progress, s: _Stream) -> None:
        part = self.cfg.part_size
        slots = trio.Semaphore(max(1, self.cfg.parallel))

        async def put(number: int, length: int) -> None:
            try:
                await self._send_part(entry, s.file_id, number, length)
                if number in s.stale:
                    s.stale.discard(number)
                    s.low = min(s.low, number)
                else:
                    s.sent[number] = length
                    p.sent += length
            except Exception as exc:  # a part sender never dies: the attempt at close sends it (and reports what fails)
                log.info("sending part %d of %s early: %s", number, entry.display, exc)
                s.failed = s.stopping = True
            finally:
                s.in_flight.discard(number)
                slots.release()
                s.wake.set()

        try:
            with s.scope:
                async with self._shielded():  # its id must be known, to abort it
                    s.file_id = await self.api.start_multipart(entry.owner_id, entry.name, entry.directory, content_type(entry.name))
                if p.stream is s:
                    entry.file_id = s.file_id
                await self.run_blocking(self.spool.persist, entry)  # abortable by the next daemon
                async with trio.open_nursery() as parts:
                    while self._streamable(entry, s):
                        closed = entry.state != OPEN
                        todo = s.ready(entry.size if closed else s.settled, closed, part, self.cfg.parallel)
                        if not todo:
                            await s.wake.wait()
                            s.wake = trio.Event()
                            continue
                        for number in todo:
                            await slots.acquire()
                            if not self._streamable(entry, s):
                                slots.release()
                                break
                            length = min(part, entry.size - (number - 1) * part)
                            s.in_flight.add(number)
                            s.on_server.add(number)
                            parts.start_soon(put, number, length)
        except Exception as exc:  # never fatal: the attempt at close sends the file
            log.info("sending %s while it is written: %s (it is sent at close instead)", entry.display, exc)
            s.failed = True
        finally:
            self._streams -= 1
            s.finished.set()

    async def _stop_stream(self, s: _Stream) -> None:
        """No new parts; the ones in flight finish (they count)."""
        s.stopping = True
        s.wake.set()
        await s.finished.wait()

    def forget(self, entry: SpoolEntry) -> None:
        """The entry is renamed or removed: its stream (if any) stops, and the multipart uploads
        it started (named after the old path, or holding bytes that are gone) are owed an abort.
        Its file id goes at once: an upload after a rename must not complete the old one."""
        p = self.progress.get(entry.id)
        s = p.stream if p is not None else None
        if p is not None:
            p.stream = None
        if s is not None:
            s.scope.cancel()
        if entry.file_id:
            self.spool.owe(entry.file_id, entry.display)
            entry.file_id = ""
        if self._nursery is not None and (s is not None or self.spool.owed):
            self._nursery.start_soon(self._retire, entry, s)

    def streaming(self, entry: SpoolEntry) -> bool:
        """Parts of this entry may be read from the spool right now (keep its descriptor)."""
        p = self.progress.get(entry.id)
        return p is not None and p.stream is not None and not p.stream.finished.is_set()

    async def _retire(self, entry: SpoolEntry, s: _Stream | None) -> None:
        if s is not None:
            await s.finished.wait()  # its multipart start may have been under way
            self.spool.owe(s.file_id, entry.display)
        await self._record_owed()  # kept, even while another pass is stuck
        await self.abort_owed()

    async def abort_owed(self) -> None:
        """Every multipart upload owed an abort (this daemon's and those a dead one left). One
        pass at a time: a pass asked for while one runs makes that one go round once more."""
        if self._aborting:
            self._abort_again = True
            return
        self._aborting = True
        try:
            again = True
            while again:
                self._abort_again = False
                for file_id, display in list(self.spool.owed.items()):
                    await self._abort(file_id, display)
                again = self._abort_again
        finally:
            self._aborting = False

    def give_way(self, entry: SpoolEntry, at_once: bool = False) -> bool:
        """A rename (or, ``at_once``, a reopen) meets this entry's upload attempt: cancel it if it
        is before its point of no return (True: the rename may go on; wait_committing waits for
        the cancelled attempt to end); False if it is committing (then wait_committing waits for
        the outcome), or, ``at_once``, in its multipart start, whose answer a cancel waits for."""
        p = self.progress.get(entry.id)
        if entry.state != UPLOADING or p is None or p.scope is None:
            return entry.state != COMMITTED
        if p.committing or (at_once and p.starting):
            return False
        p.scope.cancel()
        return True

    async def wait_committing(self, entry: SpoolEntry) -> None:
        p = self.progress.get(entry.id)
        if p is not None and p.current is not None:
            await p.current.wait()

    def flush(self, entry: SpoolEntry | None = None) -> None:
        """Upload now (no write-back delay, no backoff wait): one entry, or every pending one."""
        for e in [entry] if entry is not None else list(self.spool.entries.values()):
            if e.state != PENDING:
                continue
            p = self.progress.get(e.id)
            if p is not None and p.running:
                p.ready_at = 0.0
                p.kick.set()
            else:  # pending but not scheduled yet: its close is still recording it in the spool
                self._progress(e).flush_asked = True

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
            await self._drive_attempts(entry, p)
        except Exception as exc:  # a bug: one file's driver must not end the mount (its nursery's), nor forget its file
            log.exception("the upload of %s stopped on an unexpected error (kept in the spool as failed)", entry.display)
            if entry.id in self.spool.entries and entry.state != COMMITTED:
                entry.state, entry.error = FAILED, f"the upload stopped on an unexpected error: {exc!r} (basemount-py retry PATH)"
                with never_fatal(log, "recording the failed upload of %s", entry.display, level=logging.ERROR):
                    await self._record(entry)
                    self.on_failed(entry)
        finally:
            p.running = False
            if entry.state in (COMMITTED, FAILED) or entry.id not in self.spool.entries:
                p.attempt_done.set()

    async def _drive_attempts(self, entry: SpoolEntry, p: _Progress) -> None:
        """Wait for the entry's time (the write-back delay, a backoff, a flush), attempt, again until it is not pending."""
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

    async def _attempt(self, entry: SpoolEntry, p: _Progress) -> None:
        entry.state = UPLOADING
        entry.attempts += 1
        p.sent = 0
        done, p.attempt_done = p.attempt_done, trio.Event()
        p.scope, p.committing, p.current = trio.CancelScope(), False, done
        p.commit_sent = False
        result: dict = {}
        overtaken = True
        try:
            with p.scope:
                await self.run_blocking(self.spool.persist, entry)
                result = await (self._upload_property(entry) if entry.kind == PROPERTY else self._upload_file(entry, p))
                overtaken = False
            if overtaken:  # a rename or reopen cancelled it before its point of no return
                self.forget(entry)  # its multipart upload: aborted in the background
                entry.attempts -= 1
                if entry.id in self.spool.entries:
                    entry.state = PENDING
                    await self._record(entry)
                p.ready_at = trio.current_time() + self._write_back(entry)
                log.info("upload of %s stopped before its commit: the file was renamed or opened again", entry.display)
                return
        except Exception as exc:  # the uploader never dies: any failure is retried or kept as FAILED in the spool
            await self.abort_multipart(entry)
            reason = self.spool.failure(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
            p.last_error = reason
            # Only a commit request that reached the server may have landed although its answer was lost.
            p.verify_first = p.verify_first or p.commit_sent
            status = exc.status if isinstance(exc, ApiError) else 0
            if entry.id not in self.spool.entries:
                pass  # removed while uploading
            elif status in REFUSED or entry.attempts >= self.cfg.attempts:
                entry.state, entry.error = FAILED, reason
                await self._record(entry)
                log.error(
                    "upload of %s failed for good after %d attempt(s): %s (kept in the spool: basemount-py retry PATH, or rm it)",
                    entry.display,
                    entry.attempts,
                    reason,
                )
                self.on_failed(entry)
            else:
                delay = min(RETRY_MAX, RETRY_BASE * 2 ** (entry.attempts - 1))
                entry.state, entry.error = PENDING, reason
                await self._record(entry)
                log.warning("upload of %s failed (attempt %d of %d, next in %.0f s): %s", entry.display, entry.attempts, self.cfg.attempts, delay, reason)
                p.ready_at = trio.current_time() + delay
        else:
            await self._commit(entry, result)
            if self.spool.owed and self._nursery is not None:  # the API answers again: those that failed before
                self._nursery.start_soon(self.abort_owed)  # (not holding this upload's slot)
        finally:
            p.scope, p.committing, p.current = None, False, None
            if entry.id in self.spool.entries and entry.state != UPLOADING:
                self.spool.release_fd(entry)  # the attempt's reads are over
            done.set()

    async def _commit(self, entry: SpoolEntry, result: dict) -> None:
        """The server has the entry: it leaves the spool, and the tree shows the server's file."""
        entry.state, entry.error, entry.committed_at = COMMITTED, "", trio.current_time()
        if entry.kind == FILE:
            entry.result_id = str(result.get("Id", ""))
        try:
            await self.run_blocking(self.spool.remove, entry)
        except OSError as exc:  # the server has it: what is left in the spool is checked before any resend
            log.warning("%s is on BaseSpace, but removing it from the upload spool failed: %s", entry.display, self.spool.failure(exc))
        self.recent = (self.recent + [entry])[-50:]
        p = self.progress.pop(entry.id, None)
        if p is not None:
            p.kick.set()  # its driver, waiting for the next attempt, ends
        with never_fatal(log, "updating the tree after uploading %s", entry.display, level=logging.ERROR):
            await self.on_committed(entry, result)

    async def _point_of_no_return(self, entry: SpoolEntry, p: _Progress, call: Callable[[], Awaitable[dict]]) -> dict:
        """The request that commits the file under its name: a rename no longer cancels it (it
        waits for the outcome); nothing but the end of the daemon cancels it halfway (``stop``).
        A refusal (409, 404) may answer a retry of that request whose first send landed (its answer
        lost): the server's file at our path with our bytes is then our commit."""
        await trio.lowlevel.checkpoint()  # a rename that came first wins
        p.committing = True
        reached = [False]
        token = reached_server.set(reached)
        try:
            async with self._shielded():
                result = await call()
        except ApiError as exc:
            if exc.status not in REFUSED or entry.kind != FILE:
                raise
            landed = await self._already_there(entry)
            if landed is None:
                raise
            log.info("%s: %s; but the server has our bytes at our path (an earlier send landed): committed", entry.display, exc)
            return landed
        finally:
            reached_server.reset(token)
            p.commit_sent = reached[0]
        return result

    def may_have_landed(self, entry: SpoolEntry) -> bool:
        """A commit request of this file got no answer (or a dead daemon left it): the server may have it."""
        p = self.progress.get(entry.id)
        return entry.kind == FILE and p is not None and p.verify_first

    async def landed_under_its_name(self, entry: SpoolEntry) -> bool:
        """Before a rename or a rewrite: an earlier attempt whose commit request got no answer may
        have committed the file under its current name. Ask the server: True if it did (the entry
        is committed now, it can no longer change); raises ApiError if the server cannot tell."""
        if not self.may_have_landed(entry):
            return False
        try:
            landed = await self._already_there(entry)
        except ApiError as exc:
            if exc.status != 409:  # 409: someone else's file at that path, so ours did not land
                raise
            landed = None
        if landed is None:
            return False
        log.info("%s had reached BaseSpace under this name (its answer was lost): committed", entry.display)
        await self._commit(entry, landed)
        return True

    # -- one attempt ----------------------------------------------------------------------------

    async def _upload_property(self, entry: SpoolEntry) -> dict:
        data = await self.run_blocking(self.spool.read, entry, 0, entry.size)
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
        part = self.cfg.part_size
        count = math.ceil(entry.size / part)
        done: dict[int, int] = {}  # parts the server already has (sent while the file was written)
        s = p.stream
        if s is not None:
            await self._stop_stream(s)
            if s.file_id and entry.remote_path == s.remote_path and entry.size > self.cfg.small_threshold and max(s.on_server, default=0) <= count:
                entry.file_id = s.file_id
                done = {n: length for n, length in s.sent.items() if length == min(part, entry.size - (n - 1) * part)}
                p.sent = sum(done.values())
            else:
                await self.abort_multipart(entry)
        if entry.size <= self.cfg.small_threshold:
            data = await self.run_blocking(self.spool.read, entry, 0, entry.size)
            digest = await self.run_blocking(_md5_b64, data)
            result = await self._point_of_no_return(
                entry, p, lambda: self.api.upload_small(entry.owner_id, entry.name, entry.directory, data, content_type(entry.name), digest)
            )
            p.sent = entry.size
            return result
        if not entry.file_id:
            p.starting = True
            try:
                async with self._shielded():  # its id must be known, to abort it
                    entry.file_id = await self.api.start_multipart(entry.owner_id, entry.name, entry.directory, content_type(entry.name))
            finally:
                p.starting = False
            await self.run_blocking(self.spool.persist, entry)  # abortable by the next daemon
        slots = trio.Semaphore(max(1, self.cfg.parallel))

        async def put(number: int) -> None:
            try:
                length = min(part, entry.size - (number - 1) * part)
                await self._send_part(entry, entry.file_id, number, length)
                p.sent += length
            finally:
                slots.release()

        async with trio.open_nursery() as parts:
            for number in range(1, count + 1):
                if number in done:
                    continue
                await slots.acquire()
                parts.start_soon(put, number)
        file_id = entry.file_id
        result = await self._point_of_no_return(entry, p, lambda: self.api.complete(file_id))
        entry.file_id = ""
        p.stream = None
        return result

    async def _send_part(self, entry: SpoolEntry, file_id: str, number: int, length: int) -> None:
        """Part ``number`` (``length`` bytes) of a multipart upload, read from the spool."""
        data = await self.run_blocking(self.spool.read, entry, (number - 1) * self.cfg.part_size, length)
        digest = await self.run_blocking(_md5_b64, data)
        await self.api.put_part(file_id, number, data, digest)

    async def abort_multipart(self, entry: SpoolEntry) -> None:
        """A multipart upload that will not complete: abort it so the server drops its parts."""
        p = self.progress.get(entry.id)
        if p is not None and p.stream is not None:
            s, p.stream = p.stream, None
            s.scope.cancel()
            await s.finished.wait()
            if s.file_id and s.file_id != entry.file_id:
                await self._abort(s.file_id, entry.display)
        if not entry.file_id:
            return
        await self._abort(entry.file_id, entry.display)
        entry.file_id = ""

    async def _abort(self, file_id: str, display: str) -> None:
        """Abort one multipart upload. It is owed in the spool first, and stays owed until the
        server has taken it: a daemon that ends before (an outage, a signal) leaves it to the next."""
        self.spool.owe(file_id, display)
        await self._record_owed()
        done = False
        with trio.move_on_after(30):
            try:
                await self.api.abort(file_id)
                log.info("aborted the multipart upload %s of %s", file_id, display)
                done = True
            except ApiError as exc:  # (the client raises only these)
                done = exc.status in REFUSED  # completed or aborted already: nothing left
                if not done:
                    log.warning("aborting the multipart upload %s of %s: %s (tried again later)", file_id, display, exc)
        if done:
            self.spool.paid(file_id)
            await self._record_owed()

    async def _record(self, entry: SpoolEntry) -> None:
        """Write the entry's state to the spool, in a failure path: a spool that cannot (its disk
        full) is logged, not raised. The state stays in memory (status, ``.error``, the next
        attempt); the spool keeps the last state it took, and the next persist writes this one."""
        try:
            await self.run_blocking(self.spool.persist, entry)
        except OSError as exc:
            log.warning("%s: %s", entry.display, self.spool.failure(exc))

    async def _record_owed(self) -> None:
        """The multipart uploads to abort, to the spool; a failure is logged (they stay owed in
        memory, and the next persist that succeeds writes them)."""
        try:
            await self.run_blocking(self.spool.persist_owed)
        except OSError as exc:
            log.warning("the multipart uploads to abort: %s", self.spool.failure(exc))

    async def _already_there(self, entry: SpoolEntry) -> dict | None:
        """The server's file at this entry's path if it has the same bytes; raises if it differs."""
        await self.abort_multipart(entry)  # a multipart upload of a dead daemon: never completed
        items = await self.client.list_all(f"v1pre3/appresults/{entry.owner_id}/files", page_size=FILES_PAGE_MAX)
        match = next((i for i in items if str(i.get("Path", "")).lstrip("/") == entry.remote_path), None)
        if match is None:
            return None
        ours = await self.run_blocking(self.spool.md5, entry)
        if int(match.get("Size") or -1) == entry.size:
            theirs = await self._server_md5(match, ours)
            if theirs == ours:
                return match
        raise ApiError(
            f"a different file {entry.remote_path!r} is already in this app result (server: {match.get('Size')} bytes; ours: {entry.size} bytes, MD5 {ours})",
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


def _temporary(entry: SpoolEntry) -> bool:
    """A hidden name: a temp file that will be renamed (not sent early, a longer write-back delay)."""
    return entry.name.startswith(".")


# rsync's temp file for NAME: ``.NAME.`` and six letters or digits (mkstemp's ``XXXXXX``).
RSYNC_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9]{6}")


def left_by_rsync(entry: SpoolEntry) -> bool:
    """A file that is still under rsync's temp name: rsync renames it right after close, so one
    that a mount leaves unrenamed is an interrupted transfer's (rsync saw its rename fail)."""
    return entry.kind == FILE and RSYNC_TEMP_NAME.fullmatch(entry.name) is not None


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()
