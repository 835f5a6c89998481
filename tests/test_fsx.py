"""Fuzzing the read path.

1. An fsx-style checker through a real mount: seeded random pread / lseek+read / preadv / mmap /
   sequential runs / reopen / reads past EOF over files whose sizes straddle block and part
   boundaries, from several threads at once, with a small cache (eviction) and with light faults;
   every byte is compared with ``synthetic_bytes`` (what the emulator serves). pjdfstest is mostly
   about writes, links and permissions, none of which a read-only FS has; fsx's read ops are the
   part that applies.
2. Hypothesis tests of the range/prefetch logic against models, for what
   ``test_read_logic.py`` does not cover: the access-pattern invariants for any read sequence,
   exact part splitting, *concurrent* readers with cancellations and failures, and the
   acceptance rule for a content host's answer (status, Content-Range, Content-Length).
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_synthetic

from basemount_py.api.errors import ApiError, ProtocolError, ServerError
from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.knobs import Knobs
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.read import AccessPattern, PrefetchConfig, ReadManager
from basemount_py.read.content import ContentSource
from basemount_py.read.prefetch import split_parts

KiB, MiB = 1024, 1 << 20
FILES = ("Projects", "P", "Samples", "S", "Files")
SIZES = [0, 1, 4095, 65535, 65536, 65537, 1 * MiB + 3, 5 * MiB + 123, 9 * MiB + 1]


# -- 1. fsx through the mount ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsx_account(tmp_path_factory) -> Path:
    acc = tmp_path_factory.mktemp("fsx") / "account"
    for i, size in enumerate(SIZES):
        write_synthetic(acc.joinpath(*FILES, f"f{i}.bin"), size, 500 + i)
    return acc


@pytest.fixture(scope="module")
def fsx_emulator(fsx_account):
    """One emulator for the mounts of this section: each test sets the fault knobs it runs with
    (fault_seed re-seeds the fault RNG whenever it is set, so a run meets the faults a fresh
    emulator started with those knobs would) and resets the counters it checks."""
    with EmulatorProcess(fsx_account) as emulator:
        yield emulator


def with_knobs(emulator: EmulatorProcess, **knobs) -> EmulatorProcess:
    """Every fault knob at its default, then ``knobs``; counters zeroed."""
    defaults = Knobs()
    emulator.set_knobs(**{name: getattr(defaults, name) for name in FAULTS} | knobs)
    emulator.reset_counters()
    return emulator


class Fsx:
    """One checker thread: its own RNG, its own file handles, a log of the last operations."""

    LENGTHS = [1, 7, 512, 4096, 65535, 65536, 65537, 131072 + 5, 1 * MiB + 1]

    def __init__(self, root: Path, seed: int, ops: int, mmap_flags: int = mmap.MAP_SHARED):
        self.root = root
        self.mmap_flags = mmap_flags
        self.rng = random.Random(seed)
        self.ops = ops
        self.done = 0
        self.failures: list[str] = []
        self.history: list[str] = []

    def expect(self, i: int, off: int, length: int) -> bytes:
        size = SIZES[i]
        return synthetic_bytes(500 + i, off, max(0, min(length, size - off)))

    def check(self, what: str, got: bytes, want: bytes) -> None:
        self.history = (self.history + [what])[-8:]
        if got != want:
            bad = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            self.failures.append(f"{what}: {len(got)} bytes, expected {len(want)}; first difference at +{bad}; history {self.history}")

    def run(self) -> None:
        fds: dict[int, int] = {}
        try:
            for _ in range(self.ops):
                i = self.rng.randrange(len(SIZES))
                size = SIZES[i]
                path = self.root / f"f{i}.bin"
                if i not in fds or self.rng.random() < 0.05:  # reopen now and then
                    if i in fds:
                        os.close(fds.pop(i))
                    fds[i] = os.open(path, os.O_RDONLY)
                fd = fds[i]
                if self.rng.random() < 0.2:
                    # Drop this file's pages from the kernel's page cache, so reads reach the
                    # daemon again instead of being served by the kernel (keep_cache).
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                off = self.rng.randrange(0, size + 2 * 65536)
                if self.rng.random() < 0.3:
                    off = max(0, min(size + 100, (off // 65536) * 65536 + self.rng.choice([-1, 0, 1])))
                length = self.rng.choice(self.LENGTHS)
                op = self.rng.choice(["pread", "seekread", "preadv", "mmap", "seq"])
                if op == "pread":
                    self.check(f"pread f{i} {off}+{length}", os.pread(fd, length, off), self.expect(i, off, length))
                elif op == "seekread":
                    os.lseek(fd, off, os.SEEK_SET)
                    self.check(f"lseek+read f{i} {off}+{length}", os.read(fd, length), self.expect(i, off, length))
                elif op == "preadv":
                    a = bytearray(length // 3 + 1)
                    b = bytearray(length - len(a))
                    n = os.preadv(fd, [a, b], off)
                    self.check(f"preadv f{i} {off}+{length}", (bytes(a) + bytes(b))[:n], self.expect(i, off, length))
                elif op == "mmap" and size:
                    with mmap.mmap(fd, 0, flags=self.mmap_flags, prot=mmap.PROT_READ) as mm:
                        lo = min(off, size)
                        self.check(f"mmap f{i} [{lo}:{lo + length}]", mm[lo : lo + length], self.expect(i, lo, length))
                else:
                    os.lseek(fd, off, os.SEEK_SET)
                    pos = off
                    for _ in range(self.rng.randint(2, 12)):
                        data = os.read(fd, length)
                        self.check(f"seq f{i} {pos}+{length}", data, self.expect(i, pos, length))
                        pos += len(data)
                        if not data:
                            break
                self.done += 1
        except OSError as exc:
            self.failures.append(f"{exc!r} after {self.history}")
        finally:
            for fd in fds.values():
                os.close(fd)


FAULTS = dict(error_rate=0.1, reset_rate=0.05, truncate_rate=0.05, throttle_rate=0.03, retry_after=0.1, fault_seed=3)


# Ops per checker thread (4 threads). With faults the run's time is the retries' backoff (about a
# quarter of the requests fail): 250 ops a thread still meet ~120 faults of every kind.
@pytest.mark.parametrize(
    "knobs, options, ops",
    [({}, (), 500), (FAULTS, (), 250), (FAULTS, ("--direct-io",), 250)],
    ids=["clean", "faults", "faults-direct-io"],
)
def test_fsx_random_reads_through_the_mount_match_the_source(fsx_emulator, mount_factory, knobs, options, ops):
    emulator = with_knobs(fsx_emulator, **knobs)
    m = mount_factory(emulator, "--cache-size", "8", "--prefetch-max", "4", "--op-timeout", "30", *options)
    # Under --direct-io only private mappings exist (the kernel refuses shared ones: ENODEV).
    flags = mmap.MAP_PRIVATE if "--direct-io" in options else mmap.MAP_SHARED
    checkers = [Fsx(m.path(*FILES), seed=s, ops=ops, mmap_flags=flags) for s in range(4)]
    threads = [threading.Thread(target=c.run) for c in checkers]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "an fsx thread hung"
    failures = [f for c in checkers for f in c.failures]
    assert not failures, failures[:5]
    assert sum(c.done for c in checkers) == 4 * ops
    print(f"fsx: {4 * ops} ops in {time.monotonic() - start:.1f} s, faults {emulator.counters()['faults']}")
    if knobs:
        assert sum(emulator.counters()["faults"].values()) > 0
    assert m.process.poll() is None
    # Unmounted while its server is up: the kernel's readahead may still have a read in flight,
    # which against a stopped emulator would retry until its deadline before the daemon exits.
    m.stop()


def test_direct_io_reads_bypass_the_page_cache_and_refuse_shared_mmap(fsx_emulator, mount_factory):
    """--direct-io: exact bytes in 1 MiB reads (st_blksize), every read reaches the daemon (nothing is
    served from the page cache), MAP_PRIVATE works and MAP_SHARED fails with ENODEV as documented."""
    i = SIZES.index(9 * MiB + 1)
    emulator = with_knobs(fsx_emulator)
    m = mount_factory(emulator, "--direct-io", "--cache-size", "1")
    path = m.path(*FILES, f"f{i}.bin")
    assert os.stat(path).st_blksize == MiB
    want = synthetic_bytes(500 + i, 0, SIZES[i])
    for _ in range(2):  # the second pass comes neither from the page cache nor the 1 MiB block cache
        before = emulator.counters()["content_bytes"]
        with open(path, "rb") as f:
            assert f.read() == want
        assert emulator.counters()["content_bytes"] - before >= SIZES[i] - MiB
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert mm[MiB : 2 * MiB] == want[MiB : 2 * MiB]
        with pytest.raises(OSError) as err:
            mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert err.value.errno == errno.ENODEV
    finally:
        os.close(fd)


# -- 2a. access pattern and part splitting (pure) ------------------------------------------------

CFG = PrefetchConfig(
    block_size=4 * KiB, first_window=9 * KiB, max_window=64 * KiB, part_max=16 * KiB,
    back_tolerance=8 * KiB, forward_tolerance=32 * KiB, random_min=4 * KiB, random_max=16 * KiB,
)
reads = st.lists(st.tuples(st.integers(0, 300 * KiB), st.integers(0, 40 * KiB), st.sampled_from([None, 0, 5 * KiB, 30 * KiB])), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 256 * KiB), sequence=reads)
def test_every_plan_covers_its_read_and_stays_inside_the_file_and_the_window(size, sequence):
    pattern = AccessPattern(size, CFG)
    for offset, length, cap in sequence:
        plan = pattern.observe(offset, length, window_cap=cap)
        end = min(size, offset + length)
        assert plan.demand_end >= end  # the read itself is always fetched
        assert plan.demand_end <= max(size, end) and plan.prefetch_end <= max(size, end)
        assert plan.prefetch_end >= plan.demand_end
        limit = CFG.max_window if cap is None else min(CFG.max_window, cap)
        assert 0 <= pattern.window <= limit
        if not plan.sequential or plan.prefetch_end == plan.demand_end:
            # random mode widens a read to at most random_max (+ block alignment), never a stream
            assert plan.demand_end - offset <= max(length, CFG.random_max) + CFG.block_size or plan.sequential


@settings(max_examples=300, deadline=None)
@given(start_block=st.integers(0, 100), length=st.integers(0, 500 * KiB), part=st.integers(1, 64 * KiB), bs=st.sampled_from([512, 4096, 65536]))
def test_parts_tile_the_range_exactly(start_block, length, part, bs):
    start = start_block * bs
    end = start + length
    parts = split_parts(start, end, part, bs)
    position = start
    for a, b in parts:
        assert a == position and a % bs == 0 and a < b <= end
        assert b - a <= max(bs, part - part % bs)
        position = b
    assert position == end or (not parts and start >= end)


# -- 2b. concurrent readers with cancellations and failures, against the bytes ------------------


class FlakySource:
    def __init__(self, files: dict[str, bytes], rng: random.Random, fail_rate: float):
        self.files, self.rng, self.fail_rate = files, rng, fail_rate
        self.active = 0

    async def __call__(self, file_id: str, start: int, end: int) -> bytes:
        data = self.files[file_id]
        assert 0 <= start < end <= len(data)
        self.active += 1
        try:
            await trio.sleep(self.rng.choice([0, 0.001, 0.003, 0.01]))
            if self.rng.random() < self.fail_rate:
                raise ServerError("injected 503", 503)
            return data[start:end]
        finally:
            self.active -= 1


task = st.tuples(
    st.integers(0, 2),  # file
    st.integers(0, 120 * KiB),  # offset
    st.integers(0, 30 * KiB),  # length
    st.integers(1, 6),  # sequential reads in a row
    st.sampled_from([None, None, 0.0005, 0.002, 0.008]),  # cancel the task after this long
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=st.lists(task, min_size=1, max_size=12), seed=st.integers(0, 2**16), fail_rate=st.sampled_from([0, 0.1, 0.3]), cache_kib=st.sampled_from([0, 16, 64, 512]))
def test_concurrent_readers_with_cancellation_and_failures_match_the_model(tasks, seed, fail_rate, cache_kib):
    rnd = random.Random(seed)
    files = {f"f{i}": rnd.randbytes(size) for i, size in enumerate([10_000, 100 * KiB + 1, 128 * KiB])}
    bound = cache_kib * KiB

    async def scenario() -> None:
        source = FlakySource(files, random.Random(seed + 1), fail_rate)
        async with ReadManager(source, cache_bytes=bound, prefetch_max=32 * KiB, config=CFG) as manager:

            async def reader(i: int, offset: int, length: int, count: int, cancel: float | None) -> None:
                model = files[f"f{i}"]
                handle = manager.open(f"f{i}", len(model))
                try:
                    with trio.move_on_after(cancel if cancel is not None else float("inf")):
                        for _ in range(count):
                            try:
                                got = await handle.read(offset, length)
                            except ApiError as exc:
                                assert "injected" in str(exc) or isinstance(exc, ProtocolError), exc
                                continue
                            assert got == model[offset : offset + length]
                            offset += length
                finally:
                    await handle.close()

            async with trio.open_nursery() as nursery:
                for spec in tasks:
                    nursery.start_soon(reader, *spec)
            assert manager.cache.cached_bytes + manager.cache.reserved_bytes <= bound
            source.fail_rate = 0
            for name, model in files.items():
                handle = manager.open(name, len(model))
                assert await handle.read(0, len(model)) == model
                await handle.close()
        assert manager.stats["reserved_bytes"] == 0 and not manager._inflight
        assert manager.stats["prefetch_tasks"] == 0 and source.active == 0
        assert manager.stats["peak_cache_bytes"] <= bound

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


# -- 2c. what a content host's answer must look like to be accepted -----------------------------

_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def accepted_by_model(status: int, content_range: str | None, length: str | None, start: int, end: int) -> bool:
    if status == 206:
        m = _RANGE.match(content_range or "")
        if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
            return False
        if m.group(3) != "*" and int(m.group(3)) < end:
            return False
    elif status == 200:
        if start != 0 or length is None or not length.isdigit() or int(length) != end:
            return False
    else:
        return False
    return not (length is not None and length.isdigit() and int(length) != end - start)


numbers = st.integers(0, 2**40)


@settings(max_examples=500, deadline=None)
@given(
    start=st.integers(0, 2**20),
    span=st.integers(1, 2**20),
    status=st.sampled_from([200, 206, 204, 301, 416]),
    cr=st.one_of(
        st.none(),
        st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", numbers, numbers, st.one_of(numbers.map(str), st.just("*"))),
        st.sampled_from(["", "bytes */100", "bytes 0-10", "items 0-1/2", "bytes -1-5/9"]),
    ),
    cl=st.one_of(st.none(), numbers.map(str), st.sampled_from(["", "abc", "-5", "1e3", " 12"])),
    exact=st.booleans(),
)
def test_a_content_answer_is_accepted_only_when_it_is_exactly_the_range_asked(start, span, status, cr, cl, exact):
    end = start + span
    if exact:  # make the interesting (correct) answers common
        cr = f"bytes {start}-{end - 1}/{end + span}"
        cl = str(span) if status == 206 else str(end)
    headers = {}
    if cr is not None:
        headers["content-range"] = cr
    if cl is not None:
        headers["content-length"] = cl
    response = httpx.Response(status, headers=headers)
    try:
        ContentSource._check_status(response, start, end, "GET test")
        ok = True
    except ProtocolError:
        ok = False
    # any other exception type (ValueError from a junk header…) fails the test: it would escape
    # as an "unexpected error" instead of a clean protocol error
    assert ok == accepted_by_model(status, cr, cl, start, end), (status, cr, cl, start, end)
