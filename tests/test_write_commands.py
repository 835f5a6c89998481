"""basemount-cmd and basemount-py trash/restore through a real mount: what each prints, and that
each reaches the daemon (.commands, rmdir, rm -rf). What the commands do (trash and restore of
every kind, the rm -rf guard, properties, mark-as-complete, app sessions) is tested in-process on
the MockClock: tests/test_write_logic.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from basemount_py.cli import basemount_cmd_main, main
from basemount_py.emulator.control import EmulatorProcess

from conftest import is_mounted
from test_write_logic import commands_account  # noqa: F401 (a fixture)

BIN = Path(sys.executable).parent


@pytest.fixture
def emulator(commands_account):
    with EmulatorProcess(commands_account) as em:
        yield em


def get(em, path: str, **params) -> dict:
    with httpx.Client(base_url=em.url, headers={"x-access-token": em.token}, timeout=30) as c:
        r = c.get(path, params=params)
        r.raise_for_status()
        return r.json()


def cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "basemount-cmd"), *args], capture_output=True, text=True, timeout=60)


def py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "basemount_py", *args], capture_output=True, text=True, timeout=60)


def in_process(entry, capsys, *args: str) -> subprocess.CompletedProcess:
    """The function an entry point runs, called here: what it prints and returns are the same,
    without an interpreter start per call (each test still runs each entry point once for real)."""
    code = entry(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def visible(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), run.stderr
    return lines[0]


def test_the_command_line_tools_through_a_mount(emulator, mount_factory, capsys):
    def cmd_(*args: str) -> subprocess.CompletedProcess:
        return in_process(basemount_cmd_main, capsys, *args)

    def py_(*args: str) -> subprocess.CompletedProcess:
        return in_process(main, capsys, *args)

    m = mount_factory(emulator)
    projects = m.path("Projects")
    result = m.path("Projects", "Keep", "AppResults", "Run A")
    result.mkdir()
    session_id = (result / "ParentAppSession" / ".id").read_text().strip()

    listed = cmd("--path", str(result))
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["refresh", "move-to-trash", "mark-as-complete", "rename-appsession"]
    assert [line.split()[0] for line in cmd_("--path", str(m.mountpoint)).stdout.splitlines()] == ["refresh", "unmount", "flush", "retry"]
    assert "unknown command" in one_error_line(cmd_("--path", str(result), "explode"))
    assert "needs the new name" in one_error_line(cmd_("--path", str(result), "rename-appsession"))
    assert "not valid in this folder" in one_error_line(cmd_("--path", str(m.path("Runs")), "mark-as-complete"))
    run = cmd_("--path", str(result), "rename-appsession", "My", "analysis")
    assert run.returncode == 0, run.stderr
    assert get(emulator, f"v1pre3/appsessions/{session_id}")["Response"]["Name"] == "My analysis"
    os.symlink(m.path("Projects", "Keep", "Samples", "S1"), result / "Properties" / "Input.sample")  # a property link, through the kernel
    s1 = (m.path("Projects", "Keep", "Samples", "S1", ".id")).read_text().strip()
    rid = (result / ".id").read_text().strip()
    items = {p["Name"]: p for p in get(emulator, f"v1pre3/appresults/{rid}/properties")["Response"]["Items"]}
    assert items["Input.sample"]["Content"]["Id"] == s1
    (result / "Files" / "out.txt").write_bytes(b"result\n")
    run = cmd_("--path", str(result), "mark-as-complete")
    assert run.returncode == 0, run.stderr
    assert get(emulator, f"v1pre3/appsessions/{session_id}")["Response"]["Status"] == "Complete"
    # a command written by the shell (truncate, then write): its error lands in .error
    subprocess.run(["bash", "-c", f"echo mark-as-complete > '{result / '.commands'}'"], capture_output=True)
    assert "not valid in this folder" in (result / ".error").read_text()
    run = cmd_("--path", str(projects), "refresh")  # BaseMount's scripts grep for "Error"
    assert run.returncode == 0 and "Error" not in run.stdout + run.stderr

    # basemount-py trash / restore, and rmdir of an entity (= move to trash) through the kernel
    assert "not valid in this folder" in one_error_line(py_("trash", str(projects)))
    assert "restore-from-trash" in one_error_line(py_("restore", str(projects / "Keep")))
    os.rmdir(projects / "Doomed")
    assert "Doomed" not in os.listdir(projects)
    run = py("restore", str(m.path(".Trash", "Doomed")))
    assert run.returncode == 0, run.stderr
    assert "Doomed" in visible(projects) and not visible(m.path(".Trash"))
    run = py_("trash", str(projects / "Keep" / "Samples" / "S2"))
    assert run.returncode == 0, run.stderr
    assert visible(projects / "Keep" / "Samples") == ["S1"]
    # rm -rf walks into the project first: the refused deletes block the final rmdir
    run = subprocess.run(["rm", "-rf", str(projects / "Keep")], capture_output=True, text=True)
    assert run.returncode != 0 and "Keep" in os.listdir(projects)

    # unmount from the top folder
    run = cmd("--path", str(m.mountpoint), "unmount")
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 10
    while is_mounted(str(m.mountpoint)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_mounted(str(m.mountpoint))
