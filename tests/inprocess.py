"""The emulator in-process: its ASGI app called from trio as a socket would carry it, so that tests
of timeouts, faults and expiry run on trio's MockClock (``autojump_threshold=0``) and cost no wall
time, whatever the machine's load.

``EmulatorTransport(app)`` is an ``httpx.AsyncBaseTransport`` for ``BaseSpaceClient(transport=)``
and ``ContentSource(transport=)``. It turns what the app does into what a client would see on a
socket: a connection the app drops with an RST (the emulator's ``reset`` fault) is an
``httpx.ReadError``; one it closes mid-body (``truncate``) is the ``httpx.RemoteProtocolError``
that h11 raises for a body shorter than its Content-Length; an answer that does not complete
within the request's read timeout (a ``stall``, an endless ``latency_ms``) is an
``httpx.ReadTimeout``. In-process a body takes no time to transfer, so the whole answer's time is
the time between its bytes: the read timeout bounds it.

The app's blocking work (reading account files, storing uploads, moving folders to the trash)
runs inline (``basemount_py.blocking.inline``): a worker thread would let the MockClock jump while
it runs. So every route works in-process, writes included, and so does the core's write path
(``run_core_on_mock_clock(..., writes=UploadConfig(...))``: spool and uploader inline too).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import httpx
import trio
import trio.testing

from basemount_py.api.client import BaseSpaceClient
from basemount_py.api.errors import FsError
from basemount_py.blocking import inline
from basemount_py.core import Filesystem
from basemount_py.emulator.account import warm_etags
from basemount_py.emulator.app import Emulator, build_app
from basemount_py.emulator.responses import AbortConnection
from basemount_py.mount import timeouts_for
from basemount_py.read import ContentSource, ReadManager
from basemount_py.tree import ROOT_INODE, Layout, Tree
from basemount_py.write import Spool, UploadConfig, WriteManager, account_key

BASE_URL = "http://emulator/"
MOUNTPOINT = "/mnt/basespace"  # where the in-process core says it is mounted (absolute symlinks)


def emulator_app(account: Path) -> tuple[Emulator, object]:
    """(the Emulator with its knobs and counters, its ASGI app), for a trio run on a MockClock
    that starts now: the rate limiter reads trio's clock, and signed URLs expire by a wall clock
    that runs with it (now + trio's time)."""
    epoch = time.time()
    emulator = Emulator(str(account), clock=trio.current_time, wall_clock=lambda: epoch + trio.current_time(), run_blocking=inline)
    warm_etags(list(emulator.account.files.values()))
    return emulator, build_app(emulator)


class EmulatorTransport(httpx.AsyncBaseTransport):
    def __init__(self, app, client: tuple[str, int] = ("127.0.0.1", 40000)):
        self.app = app
        self.client = client
        self.up = True  # False: the server is gone (connections refused), as after emulator.stop()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            await trio.lowlevel.checkpoint()
            raise httpx.ConnectError("connection refused (the in-process server is down)", request=request)
        body = await request.aread()
        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        request_sent = False

        async def receive() -> dict:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()  # the client stays connected until the answer is complete
            raise AssertionError("unreachable")

        async def send(message: dict) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers") or [])
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        url = request.url
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?", 1)[0],
            "query_string": url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": (url.host, url.port or 80),
            "client": self.client,
        }
        with trio.move_on_after(read_timeout if read_timeout is not None else math.inf) as waited:
            try:
                await self.app(scope, receive, send)
            except AbortConnection as drop:
                if drop.reset:
                    raise httpx.ReadError("connection reset by peer", request=request) from None
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body", request=request
                ) from None
        if waited.cancelled_caught:
            raise httpx.ReadTimeout(f"no answer within the read timeout ({read_timeout:g} s)", request=request)
        assert status is not None, "the app sent no response"
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(b"".join(chunks)), request=request)


# -- the whole core in-process ---------------------------------------------------------------------


class Kernel:
    """Records what the core asks of the kernel."""

    def __init__(self):
        self.invalidated: list[tuple[int, str]] = []
        self.terminated = False

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        self.invalidated.append((parent_ino, name))

    def terminate(self) -> None:
        self.terminated = True


class Core:
    """A ``core.Filesystem`` driven as the kernel would: paths walked by lookups, folders listed
    by opendir/readdir, files read from open to release, commands written to ``.commands``."""

    def __init__(self, fs: Filesystem, kernel: Kernel, emulator: Emulator, transport: httpx.AsyncBaseTransport | None = None):
        self.fs, self.kernel, self.emulator, self.transport = fs, kernel, emulator, transport
        self.closed_at: float | None = None  # write mode: when the WriteManager had ended (virtual time)

    async def ino(self, *path: str) -> int:
        ino = ROOT_INODE
        for name in path:
            ino = (await self.fs.lookup(ino, name)).ino
        return ino

    async def names(self, *path: str) -> list[str]:
        fh = await self.fs.opendir(await self.ino(*path))
        out: list[str] = []
        self.fs.readdir(fh, 0, lambda name, attrs, nxt: out.append(name) is None)
        self.fs.releasedir(fh)
        return out

    async def visible(self, *path: str) -> list[str]:
        return sorted(n for n in await self.names(*path) if not n.startswith("."))

    async def read_all(self, *path: str) -> bytes:
        fh = (await self.fs.open(await self.ino(*path), os.O_RDONLY)).fh
        try:
            chunks, off = [], 0
            while chunk := await self.fs.read(fh, off, 128 * 1024):
                chunks.append(chunk)
                off += len(chunk)
            return b"".join(chunks)
        finally:
            await self.fs.release(fh)

    async def command(self, text: str, *folder: str) -> None:
        fh = (await self.fs.open(await self.ino(*folder, ".commands"), os.O_WRONLY)).fh
        try:
            await self.fs.write(fh, 0, text.encode())
        finally:
            await self.fs.release(fh)

    def knobs(self, **values) -> None:
        self.emulator.knobs.merge(values)

    # -- write mode (run_core_on_mock_clock(writes=...)) ---------------------------------------

    async def mkdir(self, *path: str) -> int:
        return (await self.fs.mkdir(await self.ino(*path[:-1]), path[-1])).ino

    async def write_file(self, data: bytes, *path: str, fsync: bool = False, piece: int = 128 * 1024) -> None:
        """create, write in pieces and close (flush, then release) as ``cp`` does; with ``fsync``
        an fsync before the close."""
        opened, _ = await self.fs.create(await self.ino(*path[:-1]), path[-1])
        try:
            for off in range(0, len(data), piece):
                await self.fs.write(opened.fh, off, data[off : off + piece])
            if fsync:
                await self.fs.fsync(opened.fh)
            await self.fs.flush(opened.fh)
        finally:
            await self.fs.release(opened.fh)

    def status(self) -> list[list[str]]:
        """The lines of the hidden ``.uploads`` status file, split at tabs (conftest.status_lines)."""
        return [line.split("\t") for line in self.fs.writes.status_text().splitlines() if "\t" in line]

    async def flush_and_wait(self, bound: float = 24 * 3600.0) -> None:
        """``flush`` until nothing is pending or uploading (conftest.flush_and_wait), in virtual time."""
        with trio.fail_after(bound):
            while True:
                states = [line[0] for line in self.status()]
                if any(s in ("pending", "open") for s in states):
                    await self.command("flush\n")
                elif "uploading" not in states:
                    return
                await trio.sleep(0.2)

    async def api(self, path: str, **params) -> dict:
        """A GET straight to the emulator's API (what BaseSpace holds), not through the core."""
        headers = {"x-access-token": self.emulator.token}
        async with httpx.AsyncClient(transport=self.transport, base_url=BASE_URL, headers=headers) as client:
            response = await client.get(path, params=params)
            response.raise_for_status()
            return response.json()

    async def server_files(self, appresult_id: str) -> dict[str, dict]:
        """The files an app result holds on the server, by path."""
        items = (await self.api(f"v1pre3/appresults/{appresult_id}/files", Limit=1000))["Response"]["Items"]
        return {f["Path"]: f for f in items}

    @staticmethod
    async def timed(call, *args):
        """(the result, or the error the kernel would turn into an errno; virtual seconds)."""
        start = trio.current_time()
        try:
            result = await call(*args)
        except FsError as exc:
            result = exc
        return result, trio.current_time() - start


def run_core_on_mock_clock(
    account: Path,
    scenario,
    *,
    op_timeout: float = 60.0,
    metadata_ttl: float = 60.0,
    writes: UploadConfig | None = None,
    cache_dir: Path | None = None,
    emulator: tuple[Emulator, object] | None = None,
    whole_file_max: int = 0,
    transport: EmulatorTransport | None = None,
    run_blocking=inline,
):
    """``scenario(core)`` on trio's MockClock: a Filesystem as the daemon builds it (Tree over
    Layout, ReadManager over ContentSource, the network timeouts ``--op-timeout`` gives:
    ``mount.timeouts_for``) against the emulator's app over ``EmulatorTransport``. Read-only,
    unless ``writes`` gives the upload settings: then a WriteManager over a spool in
    ``cache_dir`` (the same folder in a second run: the next mount of the account, which adopts
    what the first left). ``emulator``: an ``emulator_app`` to reuse (its state carries over).
    ``whole_file_max``: the ReadManager's (``--whole-file-max``; 0, off, by default).
    ``transport``: one over ``emulator``'s app to use instead of a plain EmulatorTransport (a
    subclass that loses answers, say). ``run_blocking``: the WriteManager's (default ``inline``; a
    test may hold one call, such as the spool's fsync, to act while it is under way). Returns what
    the scenario returns."""
    emulator, app = emulator or emulator_app(account)
    transport = transport or EmulatorTransport(app)
    policy, stall_timeout = timeouts_for(op_timeout)

    async def main():
        api = BaseSpaceClient(BASE_URL, emulator.token, transport=transport, policy=policy)
        content = ContentSource(api, policy=policy, stall_timeout=stall_timeout, transport=transport)
        try:
            async with ReadManager(content.fetch, fetch_blocks=content.fetch_blocks, cache_bytes=16 << 20, whole_file_max=whole_file_max) as reads:
                tree = Tree(Layout(api, metadata_ttl=metadata_ttl), metadata_ttl=metadata_ttl)
                kernel = Kernel()
                if writes is None:
                    return await scenario(Core(Filesystem(tree, reads, kernel, op_timeout=op_timeout), kernel, emulator, transport))
                assert cache_dir is not None, "write mode needs a cache_dir for its spool"
                spool = Spool(cache_dir, account_key(BASE_URL, "user"), writes.spool_max)
                async with WriteManager(tree, api, spool, writes, mountpoint=MOUNTPOINT, fetch=content.fetch, run_blocking=run_blocking) as manager:
                    core = Core(Filesystem(tree, reads, kernel, writes=manager, op_timeout=op_timeout), kernel, emulator, transport)
                    result = await scenario(core)
                core.closed_at = trio.current_time()  # the WriteManager is done: its uploads ended
                return result
        finally:
            await content.aclose()
            await api.aclose()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
