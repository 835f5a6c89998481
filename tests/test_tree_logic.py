"""Pure tree logic without a mount: file trees from Paths, links, dates, the listing cache."""

import trio
import pytest

from basemount_py.api.errors import NetworkError, NotFoundError
from basemount_py.tree.cache import ListingCache
from basemount_py.tree.layout import build_file_tree
from basemount_py.tree.nodes import parse_time, relative_link, safe_size


def test_build_file_tree_nests_paths_and_handles_duplicates():
    items = [
        {"Id": "10", "Name": "a.fastq.gz", "Path": "Data/Intensities/BaseCalls/a.fastq.gz", "Size": 5},
        {"Id": "11", "Name": "b.txt", "Path": "b.txt", "Size": 1},
        {"Id": "13", "Name": "b.txt", "Path": "b.txt", "Size": 2},
        {"Id": "12", "Name": "evil", "Path": "../../etc/passwd", "Size": 3},
        {"Id": "14", "Name": "Data", "Path": "Data", "Size": 3},
    ]
    tree = build_file_tree(items)
    leaf = tree.dirs["Data"].dirs["Intensities"].dirs["BaseCalls"]
    assert leaf.files["a.fastq.gz"]["Id"] == "10"
    assert tree.files["b.txt"]["Id"] == "11"
    assert tree.files["b.txt (2)"]["Id"] == "13"
    # ".." components cannot climb: they become a literal folder named "_.."
    assert tree.dirs["_.."].dirs["_.."].dirs["etc"].files["passwd"]["Id"] == "12"
    # a file whose name equals a folder's gets suffixed instead of hiding the folder
    assert tree.files["Data (2)"]["Id"] == "14"


def test_relative_link():
    assert relative_link(("Projects", "P", "AppSessions", "S"), ("Projects", "P", "AppResults", ".id.5")) == "../../AppResults/.id.5"
    assert relative_link(("Runs", "R", "Properties", "Out"), ("Projects", ".id.1", "Samples", ".id.2")) == "../../../../Projects/.id.1/Samples/.id.2"


def test_parse_time_and_sizes():
    assert parse_time("2024-01-02T03:04:05.0000000Z") == 1704164645.0
    assert parse_time("2024-01-02T03:04:05Z") == 1704164645.0
    assert parse_time("2024-01-02T04:04:05+01:00") == 1704164645.0
    assert parse_time("garbage") == 0.0
    assert parse_time(None) == 0.0
    assert safe_size(-5) == 0
    assert safe_size("12") == 12
    assert safe_size(10**30) == 2**62
    assert safe_size("x") == 0


async def test_listing_cache_single_flight_ttl_and_stale_fallback():
    now = [0.0]
    cache = ListingCache(ttl=10, maxsize=4, clock=lambda: now[0])
    calls = []

    async def loader():
        calls.append(1)
        await trio.sleep(0.01)
        return len(calls)

    results = []

    async def get():
        results.append(await cache.get("k", loader))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(get)
    assert results == [1] * 5 and len(calls) == 1  # one load shared by five callers
    now[0] = 5
    assert await cache.get("k", loader) == 1  # still fresh
    now[0] = 11

    async def failing():
        raise OSError("API down")

    assert await cache.get("k", failing) == 1  # expired, reload fails: stale copy served
    assert cache.stale_served == 1
    cache.invalidate(lambda key: key == "k")
    with pytest.raises(OSError):
        await cache.get("k", failing)  # nothing to fall back on


async def test_during_an_outage_every_expired_listing_is_served_stale_without_a_retry_cycle_each():
    """Once a reload has failed for want of a server (a transient error, after its retries), the
    other expired listings are served stale at once for ``stale_grace``: ``ls -R`` over a dead
    server pays one retry cycle per grace period, not one per folder."""
    now = [0.0]
    cache = ListingCache(ttl=10, maxsize=8, clock=lambda: now[0], stale_grace=10)
    calls: list[str] = []

    def loader(key: str):
        async def load():
            calls.append(key)
            return f"{key}-{len(calls)}"

        return load

    def down(key: str, exc: Exception):
        async def load():
            calls.append(key)
            raise exc

        return load

    for key in ("a", "b", "c"):
        await cache.get(key, loader(key))
    now[0] = 20  # all three expired
    assert await cache.get("a", down("a", NetworkError("connection refused"))) == "a-1"
    assert await cache.get("b", down("b", NetworkError("connection refused"))) == "b-2"  # not tried
    assert await cache.get("c", loader("c")) == "c-3"  # not tried either: still the stale copy
    assert calls == ["a", "b", "c", "a"] and cache.stale_served == 3
    cache.expire(lambda key: key == "b")  # `refresh` asks the server even during the grace
    assert await cache.get("b", down("b", NetworkError("connection refused"))) == "b-2"
    assert calls[-1] == "b"
    now[0] = 31  # the grace is over: the server is asked again, and its answer is taken
    assert await cache.get("c", loader("c")) == "c-6"
    assert calls[-1] == "c"
    # A folder's own error (its project deleted: 404) is not an outage: the others are still asked.
    now[0] = 50
    assert await cache.get("a", down("a", NotFoundError("gone"))) == "a-1"
    assert await cache.get("b", loader("b")) == "b-8"
    assert calls[-2:] == ["a", "b"]
