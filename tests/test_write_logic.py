"""Write mode without a kernel: the core (``core.Filesystem`` with its WriteManager, spool and
uploader) against the emulator's app in-process, on trio's MockClock (``autojump_threshold=0``).

Outages, retries, backoff and write-back delays pass in virtual time, so these tests wait out
nothing. Each asserts what the real-mount test it replaced asserted: the bytes the server holds
(the emulator's account folder and its API) equal what was written, the errno the writer gets, and
what ``.error`` and the status file say. The real-mount tests that prove the adapter and the tools
(rsync, tar, cp, a killed daemon, unmount) stay in tests/test_write_spool.py and
tests/test_write_upload.py; docs/testing.md says which is which.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import trio

from basemount_py.api.errors import errno_for
from basemount_py.write import UploadConfig
from basemount_py.write.upload import WriteFailure

from conftest import write_entity, write_file
from inprocess import Core, emulator_app, run_core_on_mock_clock

KiB, MiB = 2**10, 2**20
# multipart above 1 MiB, 512 KiB parts (the real-mount tests' --upload-threshold 1 --upload-part-size 0.5)
SMALL = UploadConfig(small_threshold=1 * MiB, part_size=512 * KiB)
HOLD = 600.0  # a write-back delay nothing reaches unless flushed (or fsync'd): the real tests' --write-back 600
RESULT = ("Projects", "Uploads", "AppResults", "Result")
FILES = RESULT + ("Files",)
OUTAGE = [{"kind": "500", "count": 1_000_000, "scope": "api"}]  # every API call fails until cleared


def upload(cfg: UploadConfig = SMALL, **changes) -> UploadConfig:
    return UploadConfig(**{**cfg.__dict__, **changes})


@pytest.fixture
def account(tmp_path) -> Path:
    root = tmp_path / "account"
    write_file(root / "Projects" / "Existing" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")
    write_file(root / "Projects" / "Existing" / "Samples" / "S2" / "Files" / "r2.fastq", b"@q\nTTTT\n+\nIIII\n")
    write_entity(root / "Projects" / "Existing" / "AppResults" / "Done")
    write_file(root / "Projects" / "Existing" / "AppResults" / "Done" / "Files" / "old.txt", b"old\n")
    write_file(root / "Runs" / "Run1" / "Files" / "RunInfo.xml", b"<RunInfo/>\n")
    return root


def run(account: Path, tmp_path: Path, scenario, cfg: UploadConfig = SMALL, **kw):
    return run_core_on_mock_clock(account, scenario, writes=cfg, cache_dir=tmp_path / "cache", **kw)


def stored(account: Path, *path: str) -> bytes:
    """What the emulator keeps (and serves) for a file of the new app result."""
    return account.joinpath(*RESULT, "Files", *path).read_bytes()


def stored_tree(account: Path, *path: str) -> dict[str, str]:
    root = account.joinpath(*RESULT, "Files", *path)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".json")}


def leftover_parts(account: Path) -> list[Path]:
    """Multipart uploads the server still holds (started, never completed nor aborted)."""
    uploads = account / ".uploads"
    return list(uploads.iterdir()) if uploads.exists() else []


async def new_appresult(core: Core, project: str = "Uploads", name: str = "Result") -> str:
    """mkdir Projects/<project> and its AppResults/<name>: the new app result's id."""
    if project not in await core.names("Projects"):
        await core.mkdir("Projects", project)
    await core.mkdir("Projects", project, "AppResults", name)
    return (await core.read_all("Projects", project, "AppResults", name, ".id")).decode().strip()


async def text(core: Core, *path: str) -> str:
    return (await core.read_all(*path)).decode()


async def until(condition, bound: float = 3600.0, poll: float = 0.5) -> None:
    """Wait (in virtual time) for ``condition()``; flushes meanwhile as the real tests do."""
    with trio.fail_after(bound):
        while not condition():
            await trio.sleep(poll)


# -- outages: nothing written is lost ------------------------------------------------------------------


def test_writes_during_an_api_outage_all_land_after_it(account, tmp_path):
    big, deep = os.urandom(3 * MiB + 17), os.urandom(5000)  # big: multipart

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.names(*FILES)
        await core.names(*RESULT, "Properties")
        core.knobs(fail_next=OUTAGE)
        await core.write_file(b"important result\n", *FILES, "x.txt")
        await core.mkdir(*FILES, "src")
        await core.write_file(big, *FILES, "src", "big.bin")
        await core.write_file(b"notes\n", *FILES, "src", "notes.txt")
        await core.mkdir(*FILES, "src", "sub")
        await core.write_file(deep, *FILES, "src", "sub", "deep.txt")
        await core.write_file(b"v1\n", *RESULT, "Properties", "Input.note")
        # right away, the bytes are readable in the mount (from the spool)
        readable = (await core.read_all(*FILES, "x.txt"), await core.read_all(*FILES, "src", "big.bin"))

        # the daemon keeps trying: wait until every entry has had a failed attempt
        async def five_failed():
            with trio.fail_after(3600):
                while len([s for s in core.status() if "attempt" in s[-1]]) != 5:
                    await core.command("flush\n")
                    await trio.sleep(0.5)

        await five_failed()
        error = await text(core, *FILES, ".error")
        core.knobs(fail_next=[])
        await core.flush_and_wait()
        listed = set(await core.server_files(app_id))
        props = (await core.api(f"v1pre3/appresults/{app_id}/properties"))["Response"]["Items"]
        return readable, error, listed, props

    readable, error, listed, props = run(account, tmp_path, scenario, metadata_ttl=3600)
    assert readable == (b"important result\n", big)
    assert "retrying" in error
    assert listed == {"x.txt", "src/big.bin", "src/notes.txt", "src/sub/deep.txt"}
    assert stored(account, "x.txt") == b"important result\n"
    assert (stored(account, "src", "big.bin"), stored(account, "src", "notes.txt"), stored(account, "src", "sub", "deep.txt")) == (big, b"notes\n", deep)
    assert [p["Content"].strip() for p in props if p["Name"] == "Input.note"] == ["v1"]
    assert not leftover_parts(account)  # no parts left on the server
