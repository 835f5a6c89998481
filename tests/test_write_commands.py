"""Trash/restore, properties and basemount-cmd commands through a real mount."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from basemount_py.emulator.control import EmulatorProcess

from conftest import flush_and_wait, is_mounted, write_entity, write_file

BIN = Path(sys.executable).parent


@pytest.fixture
def emulator(tmp_path):
    root = tmp_path / "account"
    write_file(root / "Projects" / "Keep" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")
    write_file(root / "Projects" / "Keep" / "Samples" / "S2" / "Files" / "r2.fastq", b"@q\nTTTT\n+\nIIII\n")
    write_file(root / "Projects" / "Doomed" / "Samples" / "D1" / "Files" / "d.fastq", b"@d\nGGGG\n+\nIIII\n")
    write_entity(root / "Projects" / "Doomed", Description="to be trashed")
    write_file(root / "Runs" / "Run1" / "Files" / "RunInfo.xml", b"<RunInfo/>\n")
    with EmulatorProcess(root) as em:
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


def visible(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), run.stderr
    return lines[0]


def test_trash_and_restore_round_trip(emulator, mount_factory):
    m = mount_factory(emulator)
    projects = m.path("Projects")
    doomed_id = (projects / "Doomed" / ".id").read_text().strip()
    os.rmdir(projects / "Doomed")  # rmdir of an entity = move to trash
    assert "Doomed" not in os.listdir(projects)
    item = m.path(".Trash", "Doomed")
    assert (item / "TrashItemType").read_text() == "DeletedProject (FILEDATA+METADATA)\n"
    assert [p["Id"] for p in get(emulator, "v1pre3/users/current/projects")["Response"]["Items"]].count(doomed_id) == 0

    run = py("restore", str(item))
    assert run.returncode == 0, run.stderr
    assert "Doomed" in visible(projects) and not visible(m.path(".Trash"))
    assert (projects / "Doomed" / ".id").read_text().strip() == doomed_id  # same entity back
    assert (projects / "Doomed" / "Samples" / "D1" / "Files" / "d.fastq").read_bytes() == b"@d\nGGGG\n+\nIIII\n"

    # basemount-py trash works on any entity folder (here a sample), and survives a restart
    run = py("trash", str(projects / "Keep" / "Samples" / "S2"))
    assert run.returncode == 0, run.stderr
    assert visible(projects / "Keep" / "Samples") == ["S1"]
    assert (m.path(".Trash", "S2", "TrashItemType")).read_text().startswith("DeletedSample")
    emulator.restart()
    assert [s["Name"] for s in get(emulator, "v2/trash")["Items"]] == ["S2"]


def test_trash_errors_and_the_rm_rf_guard(emulator, mount_factory):
    m = mount_factory(emulator)
    projects = m.path("Projects")
    line = one_error_line(py("trash", str(projects)))
    assert "not valid in this folder" in line
    line = one_error_line(py("restore", str(projects / "Keep")))
    assert "restore-from-trash" in line
    # rm -rf walks into the project first: the refused deletes block the final rmdir
    run = subprocess.run(["rm", "-rf", str(projects / "Keep")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "Keep" in os.listdir(projects)
    assert "blocked" in (projects / ".error").read_text() or "blocked" in (projects / "Keep" / ".error").read_text()


def test_properties_written_through_the_mount_are_visible_in_the_api(emulator, mount_factory):
    m = mount_factory(emulator)
    result = m.path("Projects", "Keep", "AppResults", "Analysis")
    result.mkdir()
    rid = (result / ".id").read_text().strip()
    props = result / "Properties"
    (props / "Input.note").write_text("first value\n")
    subprocess.run(["bash", "-c", f"echo 'second value' > '{props / 'Input.note'}'"], check=True)
    flush_and_wait(m)  # property values go through the upload spool too
    os.symlink(m.path("Projects", "Keep", "Samples", "S1"), props / "Input.sample")
    (props / "Input.samples").mkdir()
    os.symlink("../../../../Samples/S1", props / "Input.samples" / "0")
    os.symlink(m.path("Projects", "Keep", "Samples", ".id." + (m.path("Projects", "Keep", "Samples", "S2", ".id").read_text().strip())), props / "Input.samples" / "1")

    items = {p["Name"]: p for p in get(emulator, f"v1pre3/appresults/{rid}/properties")["Response"]["Items"]}
    s1 = (m.path("Projects", "Keep", "Samples", "S1", ".id")).read_text().strip()
    s2 = (m.path("Projects", "Keep", "Samples", "S2", ".id")).read_text().strip()
    assert items["Input.note"]["Type"] == "string" and items["Input.note"]["Content"] == "second value"
    assert items["Input.sample"]["Type"] == "sample" and items["Input.sample"]["Content"]["Id"] == s1
    assert items["Input.samples"]["Type"] == "sample[]"
    assert [i["Id"] for i in items["Input.samples"]["Items"]] == [s1, s2]
    # and through the mount
    assert (props / "Input.note").read_text() == "second value"
    assert os.path.realpath(props / "Input.sample") == os.path.realpath(m.path("Projects", "Keep", "Samples", "S1"))
    assert sorted(os.listdir(props / "Input.samples")) == ["0", "1"]
    # Past the 20 items a properties listing shows, each new link still keeps every earlier item
    # (posting a property replaces its items, so the mount must send all of them).
    for n in range(2, 24):
        os.symlink(f"../../../../Samples/S{1 + n % 2}", props / "Input.samples" / str(n))
    full = {p["Name"]: p for p in get(emulator, f"v1pre3/appresults/{rid}/properties", propertyitemslimit=100)["Response"]["Items"]}
    assert [i["Id"] for i in full["Input.samples"]["Items"]] == [s1, s2] * 12
    assert sorted(os.listdir(props / "Input.samples"), key=int) == [str(n) for n in range(24)]
    assert (props / "Input.samples" / "23" / ".id").read_text().strip() == s2
    # rm / rmdir in Properties/ deletes the property (string, reference, array), nothing else
    os.unlink(props / "Input.note")
    os.unlink(props / "Input.sample")
    os.rmdir(props / "Input.samples")
    left = {p["Name"] for p in get(emulator, f"v1pre3/appresults/{rid}/properties")["Response"]["Items"]}
    assert not left & {"Input.note", "Input.sample", "Input.samples"}
    assert not {"Input.note", "Input.sample", "Input.samples"} & set(os.listdir(props))
    # a link to something that is not an entity folder is refused
    with pytest.raises(OSError):
        os.symlink("/etc", props / "Input.bad")
    assert "not a project, sample" in (props / ".error").read_text()
    # property names must be namespaced (BaseSpace rule, enforced by the emulator)
    with pytest.raises(OSError):
        (props / "nonamespace").write_text("x")


def test_commands_success_and_error_paths(emulator, mount_factory):
    m = mount_factory(emulator)
    result = m.path("Projects", "Keep", "AppResults", "Run A")
    result.mkdir()
    session_id = (result / "ParentAppSession" / ".id").read_text().strip()

    listed = cmd("--path", str(result))
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "refresh", "move-to-trash", "mark-as-complete", "rename-appsession"
    ]
    assert [line.split()[0] for line in cmd("--path", str(m.mountpoint)).stdout.splitlines()] == ["refresh", "unmount", "flush", "retry"]
    assert "unknown command" in one_error_line(cmd("--path", str(result), "explode"))
    assert "needs the new name" in one_error_line(cmd("--path", str(result), "rename-appsession"))
    assert "not valid in this folder" in one_error_line(cmd("--path", str(m.path("Runs")), "mark-as-complete"))

    run = cmd("--path", str(result), "rename-appsession", "My", "analysis")
    assert run.returncode == 0, run.stderr
    assert get(emulator, f"v1pre3/appsessions/{session_id}")["Response"]["Name"] == "My analysis"
    assert "My analysis" in os.listdir(m.path("Projects", "Keep", "AppSessions"))

    (result / "Files" / "out.txt").write_bytes(b"result\n")
    run = cmd("--path", str(result), "mark-as-complete")
    assert run.returncode == 0, run.stderr
    assert get(emulator, f"v1pre3/appsessions/{session_id}")["Response"]["Status"] == "Complete"
    assert (result / ".status").read_text() == "Complete\n"
    # complete = read-only; marking again is an error; the command is no longer listed
    with pytest.raises(OSError):
        (result / "Files" / "late.txt").write_bytes(b"late\n")
    assert "mark-as-complete" not in cmd("--path", str(result)).stdout
    subprocess.run(["bash", "-c", f"echo mark-as-complete > '{result / '.commands'}'"], capture_output=True)
    assert "not valid in this folder" in (result / ".error").read_text()

    # refresh (BaseMount's scripts grep for "Error"), then move-to-trash through .commands
    run = cmd("--path", str(m.path("Projects")), "refresh")
    assert run.returncode == 0 and "Error" not in run.stdout + run.stderr
    with open(result / ".commands", "w") as f:
        f.write("move-to-trash\n")
    assert "Run A" not in os.listdir(m.path("Projects", "Keep", "AppResults"))
    assert "Error:" in one_error_line(cmd("--path", str(m.path("Projects", "Keep", "Samples", "S1")), "restore-from-trash"))

    # unmount from the top folder
    run = cmd("--path", str(m.mountpoint), "unmount")
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 10
    while is_mounted(str(m.mountpoint)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_mounted(str(m.mountpoint))


def test_an_app_session_goes_to_the_trash_with_its_outputs_and_comes_back(tmp_path, mount_factory):
    root = tmp_path / "account"
    for name, data in (("Align", b"bam"), ("QC", b"qc\n")):
        write_file(root / "Projects" / "Keep" / "AppResults" / name / "Files" / f"{name}.out", data)
        write_entity(root / "Projects" / "Keep" / "AppResults" / name, AppSession={"Name": "Pipeline"})
    write_file(root / "Projects" / "Keep" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")
    with EmulatorProcess(root) as emulator:
        m = mount_factory(emulator)
        keep = m.path("Projects", "Keep")
        session_id = (keep / "AppSessions" / "Pipeline" / ".id").read_text().strip()
        os.rmdir(keep / "AppSessions" / "Pipeline")  # = basemount-cmd move-to-trash in the session
        assert visible(keep / "AppSessions") == [] and visible(keep / "AppResults") == []
        assert visible(keep / "Samples") == ["S1"]  # not an output of the session: untouched
        item = m.path(".Trash", "Pipeline")
        assert (item / "TrashItemType").read_text().startswith("DeletedAppSession")
        assert [t["Name"] for t in get(emulator, "v2/trash")["Items"]] == ["Pipeline"]

        run = py("restore", str(item))
        assert run.returncode == 0, run.stderr
        assert visible(keep / "AppResults") == ["Align", "QC"] and visible(keep / "AppSessions") == ["Pipeline"]
        assert (keep / "AppSessions" / "Pipeline" / ".id").read_text().strip() == session_id
        assert (keep / "AppResults" / "QC" / "Files" / "QC.out").read_bytes() == b"qc\n"
        assert get(emulator, "v2/trash")["Items"] == []
