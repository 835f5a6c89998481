"""Write mode through a real mount: the close sequences of touch and a shell redirect, and the
fixtures and helpers of the real-mount write tests (tests/test_write_spool.py). New projects and
app results, uploads (small, spilled, multipart, out of order), upload failures and read-only
places are tested in-process on the MockClock: tests/test_write_logic.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from basemount_py.emulator.control import EmulatorProcess

from conftest import write_entity, write_file

MiB = 2**20
SMALL = ("--upload-threshold", "1", "--upload-part-size", "0.5")  # multipart above 1 MiB, 512 KiB parts


@pytest.fixture
def account(tmp_path) -> Path:
    root = tmp_path / "account"
    write_file(root / "Projects" / "Existing" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")
    write_entity(root / "Projects" / "Existing" / "AppResults" / "Done")
    write_file(root / "Projects" / "Existing" / "AppResults" / "Done" / "Files" / "old.txt", b"old\n")
    write_file(root / "Runs" / "Run1" / "Files" / "RunInfo.xml", b"<RunInfo/>\n")
    return root


@pytest.fixture
def emulator(account):
    with EmulatorProcess(account) as em:
        yield em


def api(em) -> httpx.Client:
    return httpx.Client(base_url=em.url, headers={"x-access-token": em.token}, timeout=30)


def appresult_files(em, appresult_id: str) -> dict[str, dict]:
    with api(em) as c:
        items = c.get(f"v1pre3/appresults/{appresult_id}/files", params={"Limit": 1000}).json()["Response"]["Items"]
    return {f["Path"]: f for f in items}


def new_appresult(m, project: str = "Uploads", name: str = "Result") -> Path:
    (m.path("Projects") / project).mkdir(exist_ok=True)
    result = m.path("Projects", project, "AppResults", name)
    result.mkdir()
    return result


def test_zero_byte_files_are_refused_on_close(emulator, mount_factory):
    m = mount_factory(emulator)
    result = new_appresult(m)
    run = subprocess.run(["touch", str(result / "Files" / "empty")], capture_output=True, text=True)
    assert run.returncode != 0 and "Invalid argument" in run.stderr
    assert "zero-byte" in (result / "Files" / ".error").read_text()
    assert "empty" not in os.listdir(result / "Files")
    # a shell redirect opens, dup2()s and closes first: the content written afterwards is uploaded
    subprocess.run(["bash", "-c", f"echo hello > '{result / 'Files' / 'greeting.txt'}'"], check=True)
    assert (result / "Files" / "greeting.txt").read_bytes() == b"hello\n"
