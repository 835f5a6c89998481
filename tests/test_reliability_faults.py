"""Faults: the emulator misbehaves, every read returns the exact bytes or a clean EIO within a
bounded time, ``ls`` keeps working from cache, and the same mount recovers.

Through a real mount (the adapter under faults): a random mix of every fault kind, a persistent
stall, and a server restart mid-read. Each runs its own emulator (faults are per process) with a
small ``--op-timeout``: ``mount.timeouts_for`` derives the retry deadline, the per-request timeout
and the stall timeout from it.

In-process, on trio's MockClock (``tests/inprocess.py``): the waits for timeouts, stalls, backoff
and listing expiry, which cost no wall time there and are measured exactly, in virtual seconds.
The same components as in the daemon (Tree, ReadManager over ContentSource, the retry policy that
``timeouts_for`` derives) talk to the emulator's app; only the socket is replaced.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from conftest import write_entity, write_synthetic
from inprocess import BASE_URL, EmulatorTransport, emulator_app

from basemount_py.api.client import BaseSpaceClient
from basemount_py.api.errors import ApiError, errno_for
from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.mount import timeouts_for
from basemount_py.read import ContentSource, ReadManager
from basemount_py.tree import Layout, Tree

MiB = 1 << 20
SAMPLE = ("Projects", "P", "Samples", "S", "Files")
# name -> (seed, size): odd sizes so block and part boundaries never line up with the file's end
FILES = {
    "big.bin": (11, 12 * MiB + 3),
    "mid.bin": (12, 3 * MiB + 7),
    "small.bin": (13, 70_001),
    "empty.bin": (14, 0),
}


@pytest.fixture
def account(tmp_path) -> Path:
    acc = tmp_path / "account"
    for name, (seed, size) in FILES.items():
        write_synthetic(acc.joinpath(*SAMPLE, name), size, seed)
    for extra in ("A", "B"):
        write_synthetic(acc / "Projects" / "P" / "Samples" / extra / "Files" / "x.bin", 200_000, ord(extra))
    write_entity(acc / "Projects" / "Q" / "Samples" / "T")
    return acc


def expected(name: str, offset: int = 0, length: int | None = None) -> bytes:
    seed, size = FILES[name]
    if length is None:
        length = size - offset
    return synthetic_bytes(seed, offset, max(0, min(length, size - offset)))


def read_whole(path: Path, chunk: int = 128 * 1024) -> bytes:
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(chunk)
            if not data:
                return bytes(out)
            out += data


def timed(fn, *args):
    """(result or OSError, seconds)."""
    start = time.monotonic()
    try:
        result = fn(*args)
    except OSError as exc:
        result = exc
    return result, time.monotonic() - start


def assert_exact_or_eio(result, want: bytes, what: str) -> bool:
    """True when the bytes were exact; a failure must be EIO (never EAGAIN, never wrong bytes)."""
    if isinstance(result, OSError):
        assert result.errno == errno.EIO, f"{what}: {result!r}"
        return False
    assert len(result) == len(want) and result == want, f"{what}: wrong bytes"
    return True


def assert_alive(m) -> None:
    assert m.process.poll() is None, m.log.read_text(errors="replace")[-3000:]
    log = m.log.read_text(errors="replace")
    assert "the FUSE main loop failed" not in log and "Traceback" not in log, log[-3000:]


# -- random fault mixes -------------------------------------------------------------------------


def test_random_mix_of_every_fault_kind_gives_exact_bytes(account, mount_factory):
    """500/503, 429 + Retry-After, resets and truncations mid-body, and stalls longer than the
    stall timeout, all at once on API and content requests: every read is byte-exact."""
    op_timeout = 20
    _, stall_timeout = timeouts_for(op_timeout)
    knobs = dict(
        error_rate=0.12, throttle_rate=0.05, retry_after=0.3, reset_rate=0.06, truncate_rate=0.06,
        stall_rate=0.02, stall_seconds=stall_timeout + 4, fault_scope="all", fault_seed=5,
    )
    with EmulatorProcess(account, **knobs) as emulator:
        m = mount_factory(emulator, "--op-timeout", str(op_timeout), "--metadata-ttl", "2", "--cache-size", "16")
        files = m.path(*SAMPLE)
        rng = random.Random(1)
        ok = 0

        def one(name: str, kind: str) -> tuple[str, object, float]:
            if kind == "whole":
                result, took = timed(read_whole, files / name)
                return name, (result, expected(name)), took
            size = FILES[name][1]
            off = rng.randrange(0, size + 1)
            length = rng.choice([1, 4096, 100_000, MiB])

            def pread() -> bytes:
                fd = os.open(files / name, os.O_RDONLY)
                try:
                    return os.pread(fd, length, off)
                finally:
                    os.close(fd)

            result, took = timed(pread)
            return f"{name}@{off}+{length}", (result, expected(name, off, length)), took

        jobs = [(n, "whole") for n in FILES] * 2 + [(n, "pread") for n in FILES if FILES[n][1] for _ in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for what, (result, want), took in pool.map(lambda j: one(*j), jobs):
                assert took < op_timeout * 3, (what, took)
                ok += assert_exact_or_eio(result, want, what)
        # Listings under the same faults.
        for _ in range(3):
            names, took = timed(os.listdir, m.path("Projects", "P", "Samples"))
            assert not isinstance(names, OSError) or names.errno == errno.EIO
            assert took < op_timeout * 2
            time.sleep(1)
        faults = emulator.counters()["faults"]
        assert sum(faults.values()) >= 10 and {"500", "503", "429", "reset", "truncate"} & set(faults), faults
        assert ok >= len(jobs) - 1, f"only {ok} of {len(jobs)} reads succeeded under transient faults"
        assert_alive(m)


# -- stalls, persistent errors, op timeout --------------------------------------------------------


PERSISTENT = {
    "stall": dict(stall_rate=1.0, stall_seconds=120, fault_scope="content"),
    "5xx": dict(error_rate=1.0, fault_scope="content"),
    "429-retry-after-1h": dict(throttle_rate=1.0, retry_after=3600, fault_scope="content"),
    "reset": dict(reset_rate=1.0, fault_scope="content"),
    "truncate": dict(truncate_rate=1.0, fault_scope="content"),
}


def test_a_persistent_fault_is_a_clean_eio_in_bounded_time_then_the_mount_recovers(account, mount_factory):
    """Through the kernel, with the fault whose detection takes longest (a stall, abandoned by
    the content fetcher's own socket timeouts): every fault kind is checked in-process below."""
    op_timeout = 6
    knobs = PERSISTENT["stall"]
    with EmulatorProcess(account) as emulator:
        m = mount_factory(emulator, "--op-timeout", str(op_timeout))
        path = m.path(*SAMPLE, "small.bin")
        os.stat(path)
        emulator.set_knobs(**knobs)
        result, took = timed(read_whole, path)
        assert isinstance(result, OSError) and result.errno == errno.EIO, result
        # The kernel may split a read(2) into a couple of FUSE reads; each is bounded.
        assert took < 2 * op_timeout + 2, took
        emulator.set_knobs(stall_rate=0, error_rate=0, throttle_rate=0, reset_rate=0)
        result, _ = timed(read_whole, path)
        assert assert_exact_or_eio(result, expected("small.bin"), "after recovery")
        log = m.log.read_text(errors="replace")
        assert "EAGAIN" not in log
        assert_alive(m)


# -- the server restarts or goes away --------------------------------------------------------------


def test_server_restarted_mid_read(account, mount_factory):
    """A restart drops connections mid-body and invalidates every signed URL (new signing key):
    the read re-resolves and completes with the exact bytes."""
    with EmulatorProcess(account, conn_bandwidth=8) as emulator:  # 12 MiB takes ~1.5 s
        m = mount_factory(emulator, "--op-timeout", "30", "--prefetch-max", "4")
        path = m.path(*SAMPLE, "big.bin")
        results: dict = {}
        reader = threading.Thread(target=lambda: results.update(r=timed(read_whole, path, 256 * 1024)))
        reader.start()
        time.sleep(0.5)
        emulator.restart()
        reader.join(60)
        assert not reader.is_alive()
        result, took = results["r"]
        assert assert_exact_or_eio(result, expected("big.bin"), "big.bin across a restart")
        assert_alive(m)


# -- in-process, on the mock clock -----------------------------------------------------------------


class InProcessMount:
    """The daemon's read path (Tree over Layout, ReadManager over ContentSource) against the
    emulator's app, with the network timeouts ``--op-timeout`` gives."""

    def __init__(self, account: Path, op_timeout: float, metadata_ttl: float = 60.0):
        self.emulator, app = emulator_app(account)
        self.transport = EmulatorTransport(app)
        self.op_timeout = op_timeout
        self.policy, stall_timeout = timeouts_for(op_timeout)
        self.api = BaseSpaceClient(BASE_URL, self.emulator.token, transport=self.transport, policy=self.policy)
        self.content = ContentSource(self.api, policy=self.policy, stall_timeout=stall_timeout, transport=self.transport)
        self.stall_timeout = stall_timeout
        self.tree = Tree(Layout(self.api, metadata_ttl=metadata_ttl), metadata_ttl=metadata_ttl)

    def knobs(self, **values) -> None:
        self.emulator.knobs.merge(values)

    def faults(self) -> dict:
        return dict(self.emulator.counters.faults)

    async def node(self, *path: str):
        node = self.tree.nodes[1]
        for name in path:
            node = await self.tree.child(node, name)
        return node

    async def names(self, *path: str) -> list[str]:
        return sorted((await self.tree.children(await self.node(*path))).keys())

    async def read(self, reads: ReadManager, *path: str) -> bytes:
        node = await self.node(*path)
        reader = reads.open(node.file_id, node.st_size)
        try:
            out, offset = bytearray(), 0
            while piece := await reader.read(offset, 128 * 1024):
                out += piece
                offset += len(piece)
            return bytes(out)
        finally:
            await reader.close()

    async def timed(self, call, *args):
        """(result or the ApiError, virtual seconds)."""
        start = trio.current_time()
        try:
            result = await call(*args)
        except ApiError as exc:
            result = exc
        return result, trio.current_time() - start

    def run(self, scenario):
        """``scenario(mount, reads)`` on the mock clock; whatever it returns."""

        async def main():
            try:
                async with ReadManager(self.content.fetch, fetch_blocks=self.content.fetch_blocks, cache_bytes=16 << 20) as reads:
                    return await scenario(self, reads)
            finally:
                await self.content.aclose()
                await self.api.aclose()

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def assert_clean_eio(result) -> None:
    assert isinstance(result, ApiError) and errno_for(result) == errno.EIO, result


@pytest.mark.parametrize("kind", list(PERSISTENT))
def test_a_persistent_fault_fails_a_read_within_op_timeout_then_reads_recover(account, kind):
    async def scenario(m: InProcessMount, reads):
        await m.node(*SAMPLE, "small.bin")  # listings are loaded; only content requests fail
        m.knobs(**PERSISTENT[kind])
        failed, took = await m.timed(m.read, reads, *SAMPLE, "small.bin")
        m.knobs(stall_rate=0, error_rate=0, throttle_rate=0, reset_rate=0, truncate_rate=0)
        return failed, took, await m.read(reads, *SAMPLE, "small.bin"), m.faults()

    m = InProcessMount(account, op_timeout=6)
    failed, took, after, faults = m.run(scenario)
    assert_clean_eio(failed)
    assert took <= m.policy.deadline < m.op_timeout, took  # the retry deadline ends inside the op
    assert after == expected("small.bin")
    assert sum(faults.values()) >= 1, faults


def test_a_stall_longer_than_the_stall_timeout_is_abandoned_and_retried(account):
    async def scenario(m: InProcessMount, reads):
        await m.node(*SAMPLE, "mid.bin")  # listings are loaded; only content requests stall
        m.knobs(stall_seconds=60, fail_next=[{"kind": "stall", "count": 2, "scope": "content"}])
        data, took = await m.timed(m.read, reads, *SAMPLE, "mid.bin")
        return data, took, m.faults()

    m = InProcessMount(account, op_timeout=12)
    data, took, faults = m.run(scenario)
    assert data == expected("mid.bin")
    assert faults.get("stall") == 2
    # the stalls (on parallel range requests) were abandoned after the stall timeout, not waited
    # out (60 s), and retried within the op
    assert m.stall_timeout <= took < m.op_timeout, took


def test_every_listing_is_bounded_by_op_timeout_when_the_api_hangs(account):
    """A server that accepts requests but answers nothing: lookups and listings fail (EIO) within
    ``--op-timeout`` instead of hanging the caller, and work again once it answers."""

    async def scenario(m: InProcessMount, reads):
        m.knobs(latency_ms=600_000)
        outcomes = [await m.timed(m.names, *path) for path in (("Projects", "Q", "Samples"), ("Projects", "P", "Samples", "A", "Files"))]
        m.knobs(latency_ms=0)
        return outcomes, await m.names("Projects", "Q", "Samples"), await m.read(reads, "Projects", "P", "Samples", "A", "Files", "x.bin")

    m = InProcessMount(account, op_timeout=4)
    outcomes, samples, data = m.run(scenario)
    for result, took in outcomes:
        assert_clean_eio(result)
        assert took <= m.policy.deadline < m.op_timeout, took
    assert "T" in samples
    assert data == synthetic_bytes(ord("A"), 0, 200_000)


def test_server_gone_ls_serves_cache_reads_fail_clean_and_it_comes_back(account, caplog):
    async def scenario(m: InProcessMount, reads):
        before = await m.names("Projects", "P", "Samples")
        files_before = await m.names(*SAMPLE)
        small = await m.read(reads, *SAMPLE, "small.bin")
        m.transport.up = False  # connections refused, as when the emulator process is stopped
        await trio.sleep(1.5)  # every cached listing is now expired (TTL 1 s)
        # ls keeps working from the (expired) cache: the failed reload is logged, not surfaced.
        listed, took = await m.timed(m.names, "Projects", "P", "Samples")
        files_listed = await m.names(*SAMPLE)
        mid_size = (await m.node(*SAMPLE, "mid.bin")).st_size
        # Bytes nobody has read yet cannot come from anywhere: a clean EIO, bounded.
        unread, unread_took = await m.timed(m.read, reads, *SAMPLE, "mid.bin")
        # A folder never listed fails clean too.
        never_listed, _ = await m.timed(m.names, "Projects", "Q", "Samples")
        m.transport.up = True  # the server is back: the same tree works again
        back = await m.read(reads, *SAMPLE, "mid.bin"), await m.names("Projects", "Q", "Samples")
        return before, files_before, small, listed, took, files_listed, mid_size, unread, unread_took, never_listed, back

    m = InProcessMount(account, op_timeout=8, metadata_ttl=1)
    before, files_before, small, listed, took, files_listed, mid_size, unread, unread_took, never_listed, back = m.run(scenario)
    assert small == expected("small.bin")
    # listing a folder looks up and reloads each expired folder on its way, each bounded
    assert listed == before and took < 2 * m.op_timeout
    assert files_listed == files_before and mid_size == FILES["mid.bin"][1]
    assert_clean_eio(unread)
    assert unread_took <= m.policy.deadline < m.op_timeout
    assert_clean_eio(never_listed)
    assert "serving cached listing" in caplog.text
    assert back[0] == expected("mid.bin") and "T" in back[1]
