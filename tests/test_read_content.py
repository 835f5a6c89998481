"""ContentSource against the real emulator over loopback: exact ranges, every fault kind, bounded
failure; plus the full read path (ReadManager over ContentSource). Signed-URL expiry in-process, on
trio's MockClock (tests/inprocess.py): URLs of a second's life, with no second waited."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

import pytest
import trio
import trio.testing

from basemount_py.api.client import BaseSpaceClient
from basemount_py.api.errors import ApiError, NetworkError, ProtocolError, ServerError
from basemount_py.api.retry import RetryPolicy
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.read import ContentSource, ReadManager
from basemount_py.read.content import parse_expires

from conftest import write_file, write_synthetic
from inprocess import BASE_URL, EmulatorTransport, emulator_app

KiB, MiB = 1024, 1024 * 1024
BIG_SIZE, BIG_SEED = 5 * MiB + 3, 42
SMALL = b"@read1\nACGT\n+\nIIII\n" * 100
# Small timeouts so faults cost tenths of seconds: 1 s stall timeout, 20 ms-scale backoff.
POLICY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, request_timeout=1.0, deadline=20.0)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from basemount_py.emulator.control import EmulatorProcess

    account = tmp_path_factory.mktemp("content") / "account"
    files = account / "Projects" / "P1" / "Samples" / "S1" / "Files"
    write_synthetic(files / "big.bin", BIG_SIZE, BIG_SEED)
    write_synthetic(files / "other.bin", 3 * MiB, 7)
    write_file(files / "reads" / "small.fastq", SMALL)
    with EmulatorProcess(account) as process:
        yield process


@pytest.fixture
async def api(emulator):
    emulator.set_knobs(fail_next=[], url_lifetime=7 * 24 * 3600.0, retry_after=0.05, stall_seconds=2.0)
    client = BaseSpaceClient(emulator.url, emulator.token, policy=POLICY)
    yield client
    await client.aclose()
    emulator.set_knobs(fail_next=[])


@pytest.fixture
async def file_ids(api):
    ids = {}
    for project in await api.list_all("v1pre3/users/current/projects"):
        for sample in await api.list_all(f"v1pre3/projects/{project['Id']}/samples"):
            for item in await api.list_all(f"v1pre3/samples/{sample['Id']}/files"):
                ids[item["Name"]] = (item["Id"], int(item["Size"]))
    assert ids["big.bin"][1] == BIG_SIZE and ids["small.fastq"][1] == len(SMALL)
    return {name: value[0] for name, value in ids.items()}


def big(start: int, end: int) -> bytes:
    return synthetic_bytes(BIG_SEED, start, end - start)


async def test_fetch_blocks_cuts_exact_blocks_whatever_the_chunking(api, file_ids):
    source = ContentSource(api, policy=POLICY)
    try:
        fid = file_ids["big.bin"]
        for start, end, bs in [(0, BIG_SIZE, 64 * KiB), (MiB - 5, 3 * MiB + 7, 64 * KiB), (10, 11, 4), (7, 100_007, 1000)]:
            blocks = await source.fetch_blocks(fid, start, end, bs)
            assert [len(b) for b in blocks] == [min(bs, end - o) for o in range(start, end, bs)]
            assert b"".join(blocks) == big(start, end)
        assert await source.fetch_blocks(fid, 5, 5, 64) == []
        with pytest.raises(ValueError):
            await source.fetch_blocks(fid, 0, 10, 0)
    finally:
        await source.aclose()


async def test_fill_copies_any_chunking_into_the_buffer():
    """The body filler against a model: random chunk sizes, one to many chunks per body."""
    import random

    from basemount_py.read.content import _fill

    rng = random.Random(5)
    for _ in range(200):
        expected = rng.randint(1, 5000)
        payload = bytes(rng.getrandbits(8) for _ in range(expected))
        cuts = sorted(rng.sample(range(1, expected), min(expected - 1, rng.randint(0, 12)))) if expected > 1 else []
        chunks = [payload[a:b] for a, b in zip([0] + cuts, cuts + [expected])]

        async def stream():
            for chunk in chunks:
                yield chunk

        body = bytearray(expected)
        assert await _fill(stream(), body, expected, "model") == expected
        assert body == payload
    too_long = bytearray(4)

    async def overflow():
        yield b"12345"

    with pytest.raises(ProtocolError):
        await _fill(overflow(), too_long, 4, "model")


def test_expires_parsing_accepts_basespace_and_iso_forms():
    assert parse_expires("2026-11-29T21:00:00.0000000Z") == parse_expires("2026-11-29T21:00:00Z")
    epoch = datetime(2026, 11, 29, 21, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_expires("2026-11-29T21:00:00Z") == epoch
    assert parse_expires("2026-11-29T22:00:00.5+01:00") == epoch + 0.5
    assert parse_expires("2026-11-29T21:00:00.2500000Z") == epoch + 0.25
    assert parse_expires("2026-11-29T21:00:00") == epoch  # no zone: BaseSpace times are UTC
    assert parse_expires("soon") is None and parse_expires(None) is None


async def test_exact_ranges_including_eof(api, file_ids):
    source = ContentSource(api, policy=POLICY)
    try:
        fid = file_ids["big.bin"]
        for start, end in [(0, 1), (0, 64 * KiB), (MiB - 5, MiB + 5), (BIG_SIZE - 10, BIG_SIZE), (0, BIG_SIZE)]:
            assert await source.fetch(fid, start, end) == big(start, end)
        assert await source.fetch(fid, 100, 100) == b""
        small = file_ids["small.fastq"]
        assert await source.fetch(small, 0, len(SMALL)) == SMALL
        assert await source.fetch(small, 7, 19) == SMALL[7:19]
        assert source.stats["url_resolves"] == 2  # one per file: the URL is cached
        assert source.stats["range_requests"] == 7 and source.stats["retries"] == 0
        # Past EOF is an error with a clear message, never a short result.
        with pytest.raises(ProtocolError, match="only"):
            await source.fetch(fid, BIG_SIZE - 10, BIG_SIZE + 10)
        with pytest.raises(ApiError) as info:
            await source.fetch(fid, BIG_SIZE, BIG_SIZE + 1)
        assert info.value.status == 416
        with pytest.raises(ValueError):
            await source.fetch(fid, 10, 5)
        assert "x-access-token" not in source._http.headers  # the signed URL is the credential
    finally:
        await source.aclose()


async def test_concurrent_fetches_share_one_url_resolution(api, file_ids):
    source = ContentSource(api, policy=POLICY)
    fid = file_ids["other.bin"]
    results = {}

    async def get(i: int) -> None:
        results[i] = await source.fetch(fid, i * 100 * KiB, (i + 1) * 100 * KiB)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(get, i)
    for i in range(8):
        assert results[i] == synthetic_bytes(7, i * 100 * KiB, 100 * KiB)
    assert source.stats["url_resolves"] == 1
    await source.aclose()


@pytest.mark.parametrize("kind", ["500", "503", "429", "reset", "truncate", "stall"])
async def test_each_fault_kind_is_retried_to_the_exact_bytes(api, emulator, file_ids, kind, caplog):
    caplog.set_level(logging.DEBUG)
    source = ContentSource(api, policy=POLICY)
    fid = file_ids["big.bin"]
    assert await source.fetch(fid, 0, 10) == big(0, 10)  # resolve first: faults hit content only
    emulator.set_knobs(fail_next=[{"kind": kind, "count": 2, "scope": "content"}])
    start, end = 1 * MiB + 17, 4 * MiB - 5
    assert await source.fetch(fid, start, end) == big(start, end)
    assert source.stats["retries"] == 2
    assert emulator.counters()["faults"].get(kind, 0) >= 2
    # httpx logs every request URL at INFO; the signature in its query string must not appear.
    assert "_content/" in caplog.text and "Signature=" not in caplog.text
    await source.aclose()


@pytest.mark.parametrize("kind", ["503", "stall"])
async def test_a_permanent_failure_is_an_api_error_within_the_deadline(api, emulator, file_ids, kind):
    policy = RetryPolicy(attempts=50, base_delay=0.01, max_delay=0.05, request_timeout=0.5, deadline=1.0)
    source = ContentSource(api, policy=policy)
    fid = file_ids["big.bin"]
    assert await source.fetch(fid, 0, 10) == big(0, 10)
    emulator.set_knobs(fail_next=[{"kind": kind, "count": 500, "scope": "content"}])
    started = trio.current_time()
    with pytest.raises((ServerError, NetworkError)) as info:
        await source.fetch(fid, 0, 3 * MiB)
    elapsed = trio.current_time() - started
    assert elapsed <= policy.deadline + 1.0
    assert "Signature" not in str(info.value)  # the signed URL's query never reaches a message
    await source.aclose()


async def test_an_unknown_file_fails_fast(api):
    source = ContentSource(api, policy=POLICY)
    with trio.fail_after(5):
        with pytest.raises(ApiError):
            await source.fetch("999999999999", 0, 10)
    assert source.stats["range_requests"] == 0
    await source.aclose()


@pytest.mark.parametrize("blocks", [False, True], ids=["fetch", "fetch_blocks"])
async def test_read_manager_over_content_source_reads_files_exactly(api, emulator, file_ids, blocks):
    source = ContentSource(api, policy=POLICY)
    emulator.set_knobs(fail_next=[{"kind": "reset", "count": 1, "scope": "content"}])
    fetch_blocks = source.fetch_blocks if blocks else None  # the mount's way: cached as received
    async with ReadManager(source.fetch, cache_bytes=4 * MiB, prefetch_max=2 * MiB, fetch_blocks=fetch_blocks) as manager:
        reader = manager.open(file_ids["big.bin"], BIG_SIZE)
        digest, offset = hashlib.sha256(), 0
        while True:
            piece = await reader.read(offset, 128 * KiB)
            if not piece:
                break
            digest.update(piece)
            offset += len(piece)
        await reader.close()
        assert offset == BIG_SIZE
        assert digest.hexdigest() == hashlib.sha256(big(0, BIG_SIZE)).hexdigest()
        assert manager.stats["peak_cache_bytes"] <= 4 * MiB
        assert manager.stats["bytes_fetched"] == BIG_SIZE
    assert source.stats["bytes_fetched"] == BIG_SIZE
    await source.aclose()


def test_a_proxied_content_host_goes_through_httpx(monkeypatch):
    # http.client does not read the proxy settings: such URLs keep the httpx path (which does).
    from basemount_py.read.range_threads import uses_proxy

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not uses_proxy("https://bucket.s3.amazonaws.com/key?X-Amz-Signature=1")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert uses_proxy("https://bucket.s3.amazonaws.com/key?X-Amz-Signature=1")
    assert not uses_proxy("http://127.0.0.1:8080/_content/1")  # no proxy for plain http here
    monkeypatch.setenv("no_proxy", "s3.amazonaws.com")
    assert not uses_proxy("https://bucket.s3.amazonaws.com/key")


async def test_the_proxy_settings_are_read_once_per_content_host(monkeypatch):
    # Per host, not per GET: every signed URL of a host (another query string, another key) is
    # routed as the first one was.
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    api = BaseSpaceClient("http://emulator/", "t")
    source = ContentSource(api, policy=POLICY)
    try:
        assert source._proxied_host("https://bucket.s3.amazonaws.com/a?X-Amz-Signature=1")
        assert not source._proxied_host("http://127.0.0.1:8080/_content/1")
        monkeypatch.delenv("https_proxy")  # read once: the daemon's environment does not change
        assert source._proxied_host("https://bucket.s3.amazonaws.com/b?X-Amz-Signature=2")
        assert set(source._proxied) == {("https", "bucket.s3.amazonaws.com"), ("http", "127.0.0.1")}
    finally:
        await source.aclose()
        await api.aclose()


# -- signed-URL expiry, in-process on the mock clock ------------------------------------------------


def run_expiry(tmp_path, url_lifetime: float, scenario, **source_options):
    """``scenario(source, file_id)`` with the emulator's URLs living ``url_lifetime`` (virtual) s."""
    write_synthetic(tmp_path / "account" / "Projects" / "P1" / "Samples" / "S1" / "Files" / "big.bin", BIG_SIZE, BIG_SEED)
    emulator, app = emulator_app(tmp_path / "account")
    emulator.knobs.merge({"url_lifetime": url_lifetime})
    file_id = next(f.id for f in emulator.account.files.values() if f.name == "big.bin")

    async def main():
        transport = EmulatorTransport(app)
        api = BaseSpaceClient(BASE_URL, emulator.token, transport=transport, policy=POLICY)
        source = ContentSource(api, policy=POLICY, transport=transport, **source_options)
        try:
            await scenario(source, file_id)
        finally:
            await source.aclose()
            await api.aclose()
        return source.stats, dict(emulator.counters.faults)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_short_lived_urls_are_renewed_before_they_expire(tmp_path):
    async def scenario(source, fid):
        assert await source.fetch(fid, 0, 1000) == big(0, 1000)
        await trio.sleep(1.1)  # past half the URL's life: renewed proactively, no 403 round trip
        assert await source.fetch(fid, 1000, 2000) == big(1000, 2000)

    stats, _ = run_expiry(tmp_path, 2, scenario)
    assert stats["url_resolves"] == 2 and stats["expired_urls"] == 0


def test_an_expired_url_is_re_resolved_transparently(tmp_path):
    # A client clock running behind (modelled by a negative margin) keeps using a URL the content
    # host already considers expired: the 403 must lead to one re-resolution and the right bytes.
    async def scenario(source, fid):
        assert await source.fetch(fid, 0, 10) == big(0, 10)
        await trio.sleep(1.5)
        assert await source.fetch(fid, 2 * MiB, 3 * MiB) == big(2 * MiB, 3 * MiB)

    stats, _ = run_expiry(tmp_path, 1, scenario, url_refresh_margin=-30)
    assert stats["expired_urls"] == 1 and stats["url_resolves"] == 2

