"""The emulator's plain HTTP view of the account (``/_emulator/http/``), which the benchmark's
peer (rclone's http backend) reads: listings, exact bytes, ranges, knobs and counters."""

from __future__ import annotations

import re

import httpx
import pytest

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes
from conftest import write_file, write_synthetic

DATA = bytes(range(256)) * 40


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    root = tmp_path_factory.mktemp("account")
    files = root / "Projects" / "P" / "Samples" / "S one" / "Files"
    write_file(files / "sub" / "small.bin", DATA)
    write_synthetic(files / "big.bin", 3_000_000, 9)
    with EmulatorProcess(root) as em:
        yield em


def links(html: str) -> list[str]:
    return re.findall(r'<a href="([^"]+)">', html)


def test_listing_walks_to_the_files_and_serves_exact_bytes(emu):
    base = emu.url + "_emulator/http/"
    assert links(httpx.get(base).text) == ["Projects/"]
    folder = base + "Projects/P/Samples/S%20one/Files/"
    assert links(httpx.get(folder).text) == ["sub/", "big.bin"]
    assert links(httpx.get(folder + "sub/").text) == ["small.bin"]
    assert httpx.get(folder + "sub/small.bin").content == DATA
    emu.reset_counters()
    big = httpx.get(folder + "big.bin")
    assert big.content == synthetic_bytes(9, 0, 3_000_000)
    assert emu.counters()["content_bytes"] == 3_000_000


def test_ranges_head_and_errors(emu):
    url = emu.url + "_emulator/http/Projects/P/Samples/S%20one/Files/big.bin"
    part = httpx.get(url, headers={"Range": "bytes=1000000-1065535"})
    assert part.status_code == 206 and part.content == synthetic_bytes(9, 1_000_000, 65536)
    assert part.headers["content-range"] == "bytes 1000000-1065535/3000000"
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == "3000000" and head.content == b""
    assert httpx.get(url, headers={"Range": "bytes=3000000-"}).status_code == 416
    assert httpx.get(emu.url + "_emulator/http/Projects/nothing.bin").status_code == 404
    # A folder without its slash redirects to its listing (relative links then resolve right).
    moved = httpx.get(emu.url + "_emulator/http/Projects/P")
    assert moved.status_code == 301 and moved.headers["location"] == "/_emulator/http/Projects/P/"


def test_content_faults_apply_like_the_content_host(emu):
    emu.set_knobs(fail_next=[{"kind": "503", "count": 1, "scope": "content"}])
    emu.reset_counters()
    url = emu.url + "_emulator/http/Projects/P/Samples/S%20one/Files/sub/small.bin"
    assert httpx.get(url).status_code == 503
    assert httpx.get(url).content == DATA
    assert emu.counters()["requests"] == {"GET http tree": 2}
