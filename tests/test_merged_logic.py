"""Merged biosample FASTQs without a kernel: pairing/ordering rules (tree/merged.py) and the
concatenating reader (read/concat.py) against an in-memory byte source."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basemount_py.read import ConcatReader, PrefetchConfig, ReadManager
from basemount_py.read.concat import locate, part_starts
from basemount_py.tree.merged import DatasetFiles, manifest_text, plan_merge

KiB, MiB = 1024, 1024 * 1024
FASTQ_TYPE = {"Id": "illumina.fastq.v1.8", "Name": "Illumina Fastq", "ConformsToIds": ["common.files", "common.fastq"]}

# -- offset -> part mapping ------------------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    offset=st.integers(0, 500),
    size=st.integers(0, 500),
)
def test_locate_covers_exactly_the_requested_bytes(sizes, offset, size):
    starts = part_starts(sizes)
    concatenation = [(part, i) for part, n in enumerate(sizes) for i in range(n)]
    pieces = locate(starts, offset, size)
    covered = [(part, i) for part, at, length in pieces for i in range(at, at + length)]
    assert covered == concatenation[offset : offset + size]
    assert all(length > 0 and at + length <= sizes[part] for part, at, length in pieces)
    assert [part for part, _, _ in pieces] == sorted({part for part, _, _ in pieces})


def test_locate_edges():
    starts = part_starts([10, 0, 5])
    assert starts == [0, 10, 10, 15]
    assert locate(starts, 8, 4) == [(0, 8, 2), (2, 0, 2)]  # the empty part is skipped
    assert locate(starts, 15, 10) == [] and locate(starts, 99, 1) == []
    assert locate(starts, 0, 0) == []
    with pytest.raises(ValueError):
        locate(starts, -1, 1)


# -- the concatenating reader ---------------------------------------------------------------------


class Source:
    """In-memory ranged fetch; records (file, start, end, what the test had read so far)."""

    def __init__(self, files: dict[str, bytes], latency: float = 0.0, bandwidth: float = 0.0):
        self.files = files
        self.latency = latency
        self.bandwidth = bandwidth
        self.position = 0  # set by the test: bytes of the merged file consumed so far
        self.requests: list[tuple[str, int, int, int]] = []

    async def __call__(self, file_id: str, start: int, end: int) -> bytes:
        self.requests.append((file_id, start, end, self.position))
        delay = self.latency + ((end - start) / self.bandwidth if self.bandwidth else 0.0)
        await trio.sleep(delay) if delay else await trio.lowlevel.checkpoint()
        return self.files[file_id][start:end]


def parts_of(sizes: list[int]) -> list[tuple]:
    """ConcatReader parts named p0, p1... (no name, version or ETag)."""
    return [(f"p{i}", n, "", None, None) for i, n in enumerate(sizes)]


def _files(sizes: list[int], seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"p{i}": rng.randbytes(n) for i, n in enumerate(sizes)}


SMALL = PrefetchConfig(block_size=4 * KiB, first_window=9 * KiB, max_window=48 * KiB, part_max=16 * KiB,
                       back_tolerance=8 * KiB, forward_tolerance=32 * KiB, random_min=4 * KiB, random_max=16 * KiB)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 70 * KiB), min_size=1, max_size=5),
    reads=st.lists(st.tuples(st.integers(0, 400 * KiB), st.integers(0, 80 * KiB)), max_size=25),
)
def test_random_reads_of_a_concatenation_are_byte_exact(sizes, reads):
    files = _files(sizes)
    whole = b"".join(files[f"p{i}"] for i in range(len(sizes)))

    async def scenario() -> None:
        async with ReadManager(Source(files, latency=0.001), cache_bytes=64 * KiB, prefetch_max=48 * KiB, config=SMALL) as manager:
            reader = ConcatReader(manager, parts_of(sizes))
            assert reader.size == len(whole)
            for offset, size in reads:
                assert await reader.read(offset, size) == whole[offset : offset + size]
            offset = 0
            while offset < len(whole):  # then a sequential pass from the start
                chunk = await reader.read(offset, 5000)
                assert chunk == whole[offset : offset + 5000]
                offset += len(chunk)
            await reader.close()
        assert manager.stats["prefetch_tasks"] == 0 and not manager._inflight

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def _stream(reader, source: Source, chunk: int = 128 * KiB) -> bytes:
    out = []
    while source.position < reader.size:
        data = await reader.read(source.position, chunk)
        out.append(data)
        source.position += len(data)
    return b"".join(out)


async def test_sequential_read_prefetches_the_next_part_before_reaching_it(autojump_clock):
    sizes = [24 * MiB + 5, 16 * MiB, 20 * MiB + 77]
    files = _files(sizes)
    source = Source(files, latency=0.02, bandwidth=50e6)
    async with ReadManager(source, cache_bytes=256 * MiB) as manager:
        reader = ConcatReader(manager, parts_of(sizes))
        assert await _stream(reader, source) == b"".join(files.values())
        await reader.close()
        assert manager.stats["bytes_fetched"] == sum(sizes)  # every byte once: no duplicate fetch
    starts = part_starts(sizes)
    for part in (1, 2):
        head = next(r for r in source.requests if r[0] == f"p{part}" and r[1] == 0)
        # the part's head was requested while the reader was still in an earlier part
        assert head[3] < starts[part], head


async def test_merged_stream_keeps_pace_with_one_file_of_the_same_size(autojump_clock, monkeypatch):
    # Virtual time: 20 ms per request + 50 MB/s per connection. Crossing part boundaries must not
    # cost a stall: without carrying the stream into the next part, each part ramps up again.
    sizes = [8 * MiB + 3, 8 * MiB, 8 * MiB + 11, 8 * MiB, 8 * MiB + 1, 8 * MiB]
    files = _files(sizes)
    merged = parts_of(sizes)
    runs = {"merged": (merged, files), "single": ([("one", sum(sizes), "", None, None)], {"one": b"".join(files.values())})}
    runs["no continuation"] = runs["merged"]
    elapsed = {}
    for name, (parts, data) in runs.items():
        if name == "no continuation":
            monkeypatch.setattr(ConcatReader, "_continue_into_next", lambda self, reader, index, end: None)
        source = Source(data, latency=0.02, bandwidth=50e6)
        async with ReadManager(source, cache_bytes=256 * MiB) as manager:
            reader = ConcatReader(manager, parts)
            start = trio.current_time()
            await _stream(reader, source)
            elapsed[name] = trio.current_time() - start
            await reader.close()
    assert elapsed["merged"] <= elapsed["single"] * 1.3, elapsed
    assert elapsed["merged"] * 2 <= elapsed["no continuation"], elapsed


async def test_a_handle_keeps_its_parts_and_closes_their_readers():
    files = _files([5000, 7000])
    source = Source(files)
    async with ReadManager(source, cache_bytes=MiB) as manager:
        reader = ConcatReader(manager, parts_of([5000, 7000]))
        assert await reader.read(4990, 20) == files["p0"][4990:] + files["p1"][:10]
        await reader.close()
        with pytest.raises(ValueError):
            await reader.read(0, 1)
        assert all(r._closed for r in reader._readers.values())


class GatedSource(Source):
    """A :class:`Source` whose requests wait for ``gate`` while the test holds it."""

    gate: trio.Event | None = None

    async def __call__(self, file_id: str, start: int, end: int) -> bytes:
        if self.gate is not None:
            await self.gate.wait()
        return await super().__call__(file_id, start, end)


async def _read_or_error(reader: ConcatReader, offset: int, size: int, into: dict, name: object) -> None:
    """``into[name]``: the bytes read, or the exception the errno boundary would have seen."""
    try:
        into[name] = bytes(await reader.read(offset, size))
    except Exception as exc:
        into[name] = exc


async def test_a_read_whose_part_a_concurrent_read_closed_still_returns_its_bytes():
    # The kernel sends one handle's readahead reads concurrently and out of order: a read in part 1
    # closes part 0's reader (_close_before) while a read of part 0 waits for its bytes. That read
    # then looked its reader up again to carry the stream on, and got a KeyError: EIO, logged as a bug.
    sizes = [2 * MiB, 2 * MiB]
    files = _files(sizes, seed=21)
    whole = b"".join(files.values())
    source = GatedSource(files)
    got: dict[object, object] = {}
    async with ReadManager(source, cache_bytes=64 * MiB) as manager:
        reader = ConcatReader(manager, parts_of(sizes))
        source.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_or_error, reader, MiB, 128 * KiB, got, 0)  # waits for the network
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_read_or_error, reader, 2 * MiB, 128 * KiB, got, 1)  # a readahead in part 1
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        await reader.close()
    assert got[1] == whole[2 * MiB : 2 * MiB + 128 * KiB]
    assert got[0] == whole[MiB : MiB + 128 * KiB], repr(got[0])[:200]


async def test_two_concurrent_reads_past_two_open_parts_both_succeed():
    # Two reads in part 2 while the readers of parts 0 and 1 are open (small parts: the stream's
    # continuation opened them): each _close_before listed the earlier readers, then popped and
    # closed them one await at a time, so the second read popped one the first had taken: KeyError.
    sizes = [64 * KiB] * 4
    files = _files(sizes, seed=22)
    whole = b"".join(files.values())
    got: dict[object, object] = {}
    async with ReadManager(Source(files), cache_bytes=64 * MiB) as manager:
        reader = ConcatReader(manager, parts_of(sizes))
        assert bytes(await reader.read(0, 4 * KiB)) == whole[: 4 * KiB]
        assert {0, 1, 2} <= set(reader._readers)  # the stream opened the parts ahead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_or_error, reader, 128 * KiB, 4 * KiB, got, 1)
            nursery.start_soon(_read_or_error, reader, 136 * KiB, 4 * KiB, got, 2)
        await reader.close()
    assert got[1] == whole[128 * KiB : 132 * KiB], repr(got[1])[:200]
    assert got[2] == whole[136 * KiB : 140 * KiB], repr(got[2])[:200]


# -- pairing and ordering ---------------------------------------------------------------------------


def _dataset(ds_id: str, date: str, names: list[str], dtype: dict | None = FASTQ_TYPE, folder: tuple[str, ...] = ()) -> DatasetFiles:
    item = {"Id": ds_id, "Name": ds_id, "DateCreated": date, "DatasetType": dtype}
    files = [(folder + (n,), {"Id": f"{ds_id}:{n}", "Name": n, "Size": 100 + i}) for i, n in enumerate(names)]
    return DatasetFiles(item, ds_id, files)


def _fq(sample: str, lane: int, read: str, s: int = 1) -> str:
    return f"{sample}_S{s}_L{lane:03d}_{read}_001.fastq.gz"


def test_order_is_dataset_date_then_lane_and_the_same_for_every_read():
    late = _dataset("ds.b", "2024-02-01T00:00:00.0000000Z", [_fq("X", 2, "R2"), _fq("X", 1, "R1"), _fq("X", 2, "R1"), _fq("X", 1, "R2")])
    early = _dataset("ds.a", "2024-01-01T00:00:00.0000000Z", [_fq("X", 1, "R1"), _fq("X", 1, "R2"), "X.json", "md5sums.txt"])
    plan = plan_merge([late, early])
    assert not plan.problem and set(plan.reads) == {"R1", "R2"}
    for read in ("R1", "R2"):
        assert [p.path for p in plan.reads[read]] == [
            f"Datasets/ds.a/Files/{_fq('X', 1, read)}",
            f"Datasets/ds.b/Files/{_fq('X', 1, read)}",
            f"Datasets/ds.b/Files/{_fq('X', 2, read)}",
        ]
    text = manifest_text({"BioSampleName": "X", "Id": "7"}, {"R1": "X_R1.fastq.gz", "R2": "X_R2.fastq.gz"}, plan)
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    assert [r[0] for r in rows] == ["X_R1.fastq.gz"] * 3 + ["X_R2.fastq.gz"] * 3
    assert rows[0][2] == f"../Datasets/ds.a/Files/{_fq('X', 1, 'R1')}" and rows[0][3] == f"ds.a:{_fq('X', 1, 'R1')}"


def test_a_lane_without_its_mate_is_unmatched_and_nothing_is_merged():
    plan = plan_merge([_dataset("ds.a", "2024-01-01T00:00:00Z", [_fq("X", 1, "R1"), _fq("X", 1, "R2"), _fq("X", 2, "R1")])])
    assert plan.reads == {}
    assert "unmatched file Datasets/ds.a/Files/X_S1_L002_R1_001.fastq.gz" in plan.problem
    assert "no R2 mate" in plan.problem


@pytest.mark.parametrize(
    "names, expected",
    [
        ([_fq("X", 1, "R1"), _fq("X", 1, "R2"), "X_S1_R1_001.fastq.gz", "X_S1_R2_001.fastq.gz"], "mixed naming"),
        ([_fq("X", 1, "R1"), _fq("X", 1, "R2"), "reads_1.fq.gz"], "unmatched file Datasets/ds.a/Files/reads_1.fq.gz"),
        ([_fq("X", 1, "R1"), _fq("X", 1, "R2"), "X_S1_L002_R1_001.fastq"], "X_S1_L002_R1_001.fastq: its name does not follow"),
        ([_fq("X", 1, "R2")], "no R1 file"),
    ],
)
def test_uncertain_pairing_is_refused_with_the_file_named(names, expected):
    plan = plan_merge([_dataset("ds.a", "2024-01-01T00:00:00Z", names)])
    assert plan.reads == {} and expected in plan.problem


def test_same_read_of_one_lane_twice_is_ambiguous():
    ds = _dataset("ds.a", "2024-01-01T00:00:00Z", [_fq("X", 1, "R1"), _fq("X", 1, "R2")])
    dup = DatasetFiles(ds.item, ds.name, ds.files + [(("sub", _fq("X", 1, "R1")), {"Id": "9", "Size": 1})])
    assert "ambiguous" in plan_merge([dup]).problem


def test_index_reads_are_merged_only_where_every_lane_has_them():
    both = [_fq("X", 1, r) for r in ("R1", "R2", "I1", "I2")] + [_fq("X", 2, r) for r in ("R1", "R2", "I1")]
    plan = plan_merge([_dataset("ds.a", "2024-01-01T00:00:00Z", both)])
    assert not plan.problem and set(plan.reads) == {"R1", "R2", "I1"}
    assert any("I2 left out" in note for note in plan.notes)


def test_single_end_biosamples_merge_r1_only_and_non_fastq_datasets_are_ignored():
    reads = _dataset("ds.a", "2024-01-01T00:00:00Z", [_fq("X", 1, "R1"), _fq("X", 2, "R1")])
    other = _dataset("ds.z", "2023-01-01T00:00:00Z", [_fq("X", 3, "R1")], dtype={"Id": "common.files"})
    plan = plan_merge([other, reads])
    assert not plan.problem and set(plan.reads) == {"R1"} and len(plan.reads["R1"]) == 2
    assert plan_merge([other]).notes == ["this biosample has no FASTQ dataset"]
