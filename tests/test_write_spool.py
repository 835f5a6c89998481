"""The write-back spool through a real mount: nothing written is lost (API outage, kill -9), the
tools people copy with work, state stays true after commands, failures stay visible.

Every check of the server's bytes goes through a FRESH mount (or the API), never this mount's view.
No test waits on the clock: each waits for a condition (the status file, the emulator's counters)
with a generous bound.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from basemount_py.emulator.control import EmulatorProcess

from conftest import flush, flush_and_wait, is_mounted, sha256_file, status_lines, wait_until, write_file
from test_write_upload import SMALL, account, api, new_appresult  # noqa: F401 (account: a fixture)
from test_write_upload import appresult_files as server_files

MiB = 2**20
HOLD = ("--write-back", "600")  # nothing uploads until flushed (or fsync'd): no race with the clock
BIN = Path(sys.executable).parent


@pytest.fixture
def emulator(account):
    with EmulatorProcess(account) as em:
        yield em


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def fresh_files(em, mount_factory, name: str, *parts: str) -> Path:
    fresh = mount_factory(em, name=name)
    return fresh.path("Projects", "Uploads", "AppResults", "Result", "Files", *parts)


# -- failure 1: sparse files and ftruncate ---------------------------------------------------------


def test_sparse_file_and_ftruncate_upload_the_right_bytes(tmp_path, emulator, mount_factory):
    sparse = tmp_path / "s.bin"
    with open(sparse, "wb") as f:
        f.truncate(40 * MiB)
        f.seek(1000)
        f.write(b"q")
    m = mount_factory(emulator)
    files = new_appresult(m) / "Files"
    run = subprocess.run(["cp", str(sparse), str(files)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr  # main: "failed to extend ... Invalid argument"
    # ftruncate to a larger size, then a write past the hole
    fd = os.open(files / "grown.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"head")
    os.ftruncate(fd, 3 * MiB)
    os.pwrite(fd, b"tail", 3 * MiB - 4)
    os.close(fd)
    expected_grown = b"head" + b"\0" * (3 * MiB - 8) + b"tail"
    assert (files / "grown.bin").read_bytes() == expected_grown  # readable from the spool meanwhile
    flush_and_wait(m)
    m.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    assert sha256_file(out / "s.bin") == sha256_file(sparse)
    assert (out / "grown.bin").read_bytes() == expected_grown


# -- failure 2 and the outage: writes land after the API comes back -------------------------------------


def test_writes_during_an_api_outage_all_land_after_it(tmp_path, emulator, mount_factory):
    src = tmp_path / "src"
    write_file(src / "big.bin", os.urandom(3 * MiB + 17))  # multipart (SMALL)
    write_file(src / "notes.txt", b"notes\n")
    write_file(src / "sub" / "deep.txt", os.urandom(5000))
    m = mount_factory(emulator, *SMALL)
    result = new_appresult(m)
    files = result / "Files"
    os.listdir(files)
    os.listdir(result / "Properties")
    emulator.set_knobs(fail_next=[{"kind": "500", "count": 1000, "scope": "api"}])
    try:
        echo = subprocess.run(["bash", "-c", f"echo 'important result' > '{files / 'x.txt'}'"], capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        run = subprocess.run(["cp", "-r", str(src), str(files)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        prop = subprocess.run(["bash", "-c", f"echo 'v1' > '{result / 'Properties' / 'Input.note'}'"], capture_output=True, text=True)
        assert prop.returncode == 0, prop.stderr
        # right away, the bytes are readable in the mount (from the spool)
        assert (files / "x.txt").read_bytes() == b"important result\n"
        assert sha256_file(files / "src" / "big.bin") == sha256_file(src / "big.bin")
        # the daemon keeps trying: wait until every entry has had a failed attempt
        wait_until(lambda: flush(m) or len([s for s in status_lines(m) if "attempt" in s[-1]]) == 5, "5 failed attempts in the status", poll=0.5)
        assert "retrying" in (files / ".error").read_text()
    finally:
        emulator.set_knobs(fail_next=[])
    flush_and_wait(m)
    app_id = (result / ".id").read_text().strip()
    assert set(server_files(emulator, app_id)) == {"x.txt", "src/big.bin", "src/notes.txt", "src/sub/deep.txt"}
    m.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    assert (out / "x.txt").read_bytes() == b"important result\n"
    assert tree_digests(out / "src") == tree_digests(src)
    assert out.parent.joinpath("Properties", "Input.note").read_text().strip() == "v1"
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())  # no parts left on the server


def test_a_property_without_a_namespace_is_refused_at_open(emulator, mount_factory):
    m = mount_factory(emulator)
    result = new_appresult(m)
    run = subprocess.run(["bash", "-c", f"echo x > '{result / 'Properties' / 'plain'}'"], capture_output=True, text=True)
    assert run.returncode != 0 and "Invalid argument" in run.stderr  # main: exit 0, nothing set
    assert "namespace" in (result / "Properties" / ".error").read_text()


# -- tools ------------------------------------------------------------------------------------------


def _source_tree(root: Path) -> Path:
    write_file(root / "big.bin", os.urandom(2 * MiB + 333))
    write_file(root / "a.txt", b"alpha\n")
    write_file(root / "nested" / "b.vcf", b"##fileformat=VCFv4.2\n")
    write_file(root / "nested" / "deeper" / "c.bin", os.urandom(70000))
    os.chmod(root / "a.txt", 0o600)
    return root


def test_common_tools_give_byte_identical_files(tmp_path, emulator, mount_factory):
    src = _source_tree(tmp_path / "src")
    expected = tree_digests(src)
    tarball = tmp_path / "src.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="src")
    m = mount_factory(emulator, *SMALL, *HOLD)
    files = new_appresult(m) / "Files"
    steps = {
        "cp-r": ["cp", "-r", str(src), str(files / "cp-r")],
        "cp-a": ["cp", "-a", str(src), str(files / "cp-a")],
        "cp-p": ["cp", "-rp", str(src), str(files / "cp-p")],
        "rsync": ["rsync", "-a", f"{src}/", str(files / "rsync")],
        "rsync-default": ["rsync", "-r", f"{src}/", str(files / "rsync-default")],  # -r only: the defaults otherwise
        "rsync-inplace": ["rsync", "-a", "--inplace", f"{src}/", str(files / "rsync-inplace")],
        "tar": ["tar", "-xf", str(tarball), "-C", str(files / "tar")],
        "install": ["install", "-D", "-m", "0644", str(src / "big.bin"), str(files / "install" / "big.bin")],
        "dd": ["dd", f"if={src / 'big.bin'}", f"of={files / 'dd' / 'big.bin'}", "bs=64k", "status=none"],
        "echo": ["bash", "-c", f"echo alpha > '{files / 'echo' / 'a.txt'}'"],
    }
    for name, argv in steps.items():
        if name in ("tar", "dd", "echo"):
            (files / name).mkdir()
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (name, run.stderr)
    shutil.copytree(src, files / "copytree")
    flush_and_wait(m)
    m.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    for name in ("cp-r", "cp-a", "cp-p", "rsync", "rsync-inplace", "copytree"):
        assert tree_digests(out / name) == expected, name
    assert tree_digests(out / "tar" / "src") == expected
    for name in ("install", "dd"):
        assert sha256_file(out / name / "big.bin") == expected["big.bin"], name
    assert (out / "echo" / "a.txt").read_bytes() == b"alpha\n"
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith(".big.bin.") or n.startswith(".a.txt.")]  # no rsync temp files


def test_rsync_tar_and_cp_a_during_an_api_outage_all_land_after_it(tmp_path, emulator, mount_factory):
    """The tools' own patterns (rsync's temp file + rename, with -a and with its default options,
    tar's and cp -a's chmod/utimes after
    close, new sub-folders) while every API call fails: each tool succeeds, the files wait in the
    spool, and once the API is back every file is committed under its own name with its bytes."""
    src = _source_tree(tmp_path / "src")
    expected = tree_digests(src)
    tarball = tmp_path / "src.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="src")
    m = mount_factory(emulator, *SMALL)  # the default write-back delay: as a user runs it
    result = new_appresult(m)
    files = result / "Files"
    app_id = (result / ".id").read_text().strip()
    os.listdir(files)
    (files / "tar").mkdir()
    steps = {
        "rsync": ["rsync", "-a", f"{src}/", str(files / "rsync")],
        "rsync-default": ["rsync", "-r", f"{src}/", str(files / "rsync-default")],  # -r only: the defaults otherwise
        "tar": ["tar", "-xf", str(tarball), "-C", str(files / "tar")],
        "cp-a": ["cp", "-a", str(src), str(files / "cp-a")],
    }
    emulator.set_knobs(fail_next=[{"kind": "500", "count": 1_000_000, "scope": "api"}])
    try:
        for name, argv in steps.items():
            run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, (name, run.stderr)
        wanted = len(steps) * len(expected)
        # every file is waiting in the spool and has met the outage (a failed attempt)
        wait_until(lambda: flush(m) or len([s for s in status_lines(m) if s[0] in ("pending", "uploading") and "attempt" in s[-1]]) == wanted,
                   f"{wanted} files with a failed attempt", timeout=300, poll=0.5)
        assert not [s for s in status_lines(m) if s[0] in ("failed", "committed")]
    finally:
        emulator.set_knobs(fail_next=[])
    flush_and_wait(m, timeout=300)
    assert not [s for s in status_lines(m) if s[0] == "failed"]
    copies = ("rsync", "rsync-default", "tar/src", "cp-a")
    names = {f"{tool}/{path}" for tool in copies for path in expected}
    assert set(server_files(emulator, app_id)) == names  # nothing lost, no temp names, nothing extra
    m.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    for name in copies:
        assert tree_digests(out / name) == expected, name


def test_rename_before_upload_renames_the_spooled_file_and_after_is_erofs(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    result = new_appresult(m)
    files = result / "Files"
    (files / ".tmp.part").write_bytes(b"draft\n")
    os.rename(files / ".tmp.part", files / "final.txt")
    assert sorted(os.listdir(files)) == ["final.txt"]
    with open(files / "kept.txt", "wb") as f:
        f.write(b"kept\n")
        f.flush()
        os.fsync(f.fileno())  # fsync: uploaded now, and committed when it returns
    app_id = (result / ".id").read_text().strip()
    assert set(server_files(emulator, app_id)) == {"kept.txt"}
    with pytest.raises(OSError) as raised:
        os.rename(files / "kept.txt", files / "moved.txt")
    assert raised.value.errno == errno.EROFS
    assert "cannot be renamed" in (files / ".error").read_text()
    assert subprocess.run(["touch", str(files / "empty")], capture_output=True).returncode != 0
    errors = (files / ".error").read_text()  # every failure in the folder, not only the last
    assert "cannot be renamed" in errors and "zero-byte" in errors
    os.chmod(files / "kept.txt", 0o600)  # accepted and ignored on an uploaded file too
    os.utime(files / "kept.txt", (1, 1))
    flush_and_wait(m)
    assert {p: f["Size"] for p, f in server_files(emulator, app_id).items()} == {"kept.txt": 5, "final.txt": 6}


def test_a_rename_that_arrives_after_the_upload_started_still_renames(tmp_path, emulator, mount_factory):
    """The soak's race: a writer closes its temp file and renames it, but the daemon is so slow to
    see the rename (a loaded machine: requests queued in the kernel) that the write-back delay has
    passed and the upload has started. Made deterministic here: no write-back delay, and the
    emulator answers every request 15 s late (the multipart start is held). The rename must still
    rename (main: EROFS), the started upload is aborted, and only the new name reaches BaseSpace."""
    data = os.urandom(3 * MiB + 3)
    m = mount_factory(emulator, *SMALL, "--write-back", "0")
    result = new_appresult(m)
    files = result / "Files"
    app_id = (result / ".id").read_text().strip()
    os.listdir(files)
    fd = os.open(files / ".payload.bin.Xy12Zq", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        emulator.reset_counters()
        emulator.set_knobs(stall_seconds=15, stall_rate=1.0, fault_scope="api")  # every API answer 15 s late
    finally:
        os.close(fd)
    try:
        wait_until(lambda: emulator.counters()["requests"].get("POST v1pre3/appresults/{id}/files"), "the upload's first request")
        assert not emulator.counters()["requests"].get("PUT v1pre3/files/{id}/parts/{n}")  # held: nothing sent yet
        assert any(s[0] == "uploading" and s[2].endswith(".payload.bin.Xy12Zq") for s in status_lines(m))
        os.rename(files / ".payload.bin.Xy12Zq", files / "payload.bin")  # main: EROFS
    finally:
        emulator.set_knobs(stall_rate=0.0)
    assert sorted(os.listdir(files)) == ["payload.bin"]
    flush_and_wait(m)
    assert list(server_files(emulator, app_id)) == ["payload.bin"]
    m.stop()
    assert fresh_files(emulator, mount_factory, "fresh", "payload.bin").read_bytes() == data
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())  # the started upload was aborted


def test_parts_go_while_the_file_is_written_and_later_writes_are_not_lost(emulator, mount_factory):
    """A large file's parts are sent while it is still open (main: nothing before close). A write
    into a part already sent, a file that shrinks below parts already sent, one opened again with
    O_TRUNC, and a rename after parts were sent under the old name all still give the right bytes
    under the right name."""
    parts = "PUT v1pre3/files/{id}/parts/{n}"
    m = mount_factory(emulator, *SMALL, *HOLD)  # 512 KiB parts above 1 MiB; commits only when flushed
    result = new_appresult(m)
    files = result / "Files"
    app_id = (result / ".id").read_text().strip()
    expected: dict[str, bytes] = {}

    def write_and_wait_for_parts(name: str, data: bytes) -> int:
        emulator.reset_counters()
        fd = os.open(files / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        for off in range(0, len(data), 128 * 1024):
            os.pwrite(fd, data[off : off + 128 * 1024], off)
        wait_until(lambda: emulator.counters()["requests"].get(parts, 0) >= 4, f"parts of {name} sent while it is open")
        return fd

    # a write into a part already sent, and one past the end
    data = bytearray(os.urandom(3 * MiB))
    fd = write_and_wait_for_parts("rewritten.bin", bytes(data))
    os.pwrite(fd, b"X" * 10, 100)
    os.pwrite(fd, b"tail", len(data))
    os.close(fd)
    data[100:110] = b"X" * 10
    expected["rewritten.bin"] = bytes(data) + b"tail"
    # shrunk below parts already sent (still multipart)
    data = os.urandom(3 * MiB)
    fd = write_and_wait_for_parts("shrunk.bin", data)
    os.ftruncate(fd, MiB + 7)
    os.close(fd)
    expected["shrunk.bin"] = data[: MiB + 7]
    # opened again with O_TRUNC after its parts went, and only its last bytes written
    data = os.urandom(3 * MiB)
    os.close(write_and_wait_for_parts("truncated.bin", data))
    fd = os.open(files / "truncated.bin", os.O_WRONLY | os.O_TRUNC)
    os.pwrite(fd, b"end", 3 * MiB - 3)
    os.close(fd)
    expected["truncated.bin"] = b"\0" * (3 * MiB - 3) + b"end"
    # renamed after parts went under its first name
    data = os.urandom(2 * MiB + 1)
    fd = write_and_wait_for_parts("first.bin", data)
    os.close(fd)
    os.rename(files / "first.bin", files / "second.bin")
    expected["second.bin"] = data
    flush_and_wait(m)
    assert {p: f["Size"] for p, f in server_files(emulator, app_id).items()} == {k: len(v) for k, v in expected.items()}
    m.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    for name, want in expected.items():
        assert (out / name).read_bytes() == want, name
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())  # what was sent under a dropped upload: aborted


# -- restarts ----------------------------------------------------------------------------------------


def _wait_gone(m) -> None:
    m.process.wait(timeout=30)
    subprocess.run(["fusermount3", "-u", "-z", str(m.mountpoint)], capture_output=True)
    wait_until(lambda: not is_mounted(m.mountpoint), "the dead mount to go")


def test_a_daemon_killed_mid_upload_is_resumed_by_the_next_mount(tmp_path, emulator, mount_factory):
    data = os.urandom(6 * MiB + 5)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    m = mount_factory(emulator, *SMALL, "--write-back", "0", "--upload-parallel", "1")
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    emulator.set_knobs(conn_bandwidth=0.5)  # 0.5 MB/s: about a second per part
    emulator.reset_counters()
    shutil.copyfile(src, result / "Files" / "payload.bin")
    wait_until(lambda: emulator.counters()["requests"].get("PUT v1pre3/files/{id}/parts/{n}", 0) >= 2, "two parts sent")
    assert emulator.counters()["requests"].get("POST v1pre3/files/{id}", 0) == 0  # not complete yet
    os.kill(m.pid, signal.SIGKILL)
    _wait_gone(m)
    emulator.set_knobs(conn_bandwidth=0)
    assert "payload.bin" not in server_files(emulator, app_id)
    again = mount_factory(emulator, *SMALL, name="mnt")  # same HOME, so the same spool
    flush_and_wait(again)
    listed = server_files(emulator, app_id)
    assert list(listed) == ["payload.bin"] and listed["payload.bin"]["Size"] == len(data)
    again.stop()
    out = fresh_files(emulator, mount_factory, "fresh")
    assert sha256_file(out / "payload.bin") == sha256_file(src)
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())  # the dead daemon's parts: aborted


def test_an_upload_that_landed_before_the_crash_is_not_sent_twice(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    (result / "Files" / "same.txt").write_bytes(b"same bytes\n")
    (result / "Files" / "other.txt").write_bytes(b"ours\n")
    wait_until(lambda: [s[0] for s in status_lines(m)] == ["pending", "pending"], "two pending entries")
    os.kill(m.pid, signal.SIGKILL)
    _wait_gone(m)
    # the earlier attempt "landed" (same bytes), and someone else wrote other.txt meanwhile
    with api(emulator) as c:
        for name, body in (("same.txt", b"same bytes\n"), ("other.txt", b"theirs\n")):
            r = c.post(f"v1pre3/appresults/{app_id}/files", params={"name": name, "directory": ""}, content=body)
            assert r.status_code in (200, 201), r.text
    emulator.reset_counters()
    again = mount_factory(emulator, name="mnt")
    flush_and_wait(again)
    assert emulator.counters()["requests"].get("POST v1pre3/appresults/{id}/files", 0) == 0  # nothing re-sent
    lines = status_lines(again)
    failed = [s for s in lines if s[0] == "failed"]
    assert len(failed) == 1 and failed[0][2].endswith("Files/other.txt") and "different file" in failed[0][3]
    files = again.path("Projects", "Uploads", "AppResults", "Result", "Files")
    assert "other.txt" in (files / ".error").read_text()
    assert (files / "other.txt").read_bytes() == b"ours\n"  # still readable, from the spool
    assert {p: f["Size"] for p, f in server_files(emulator, app_id).items()} == {"same.txt": 11, "other.txt": 7}
    retry = subprocess.run([str(BIN / "basemount-py"), "retry", str(files / "other.txt")], capture_output=True, text=True, timeout=60)
    assert retry.returncode == 0, retry.stderr
    wait_until(lambda: [s[0] for s in status_lines(again) if s[0] != "committed"] == ["failed"], "the retry to fail again")
    os.unlink(files / "other.txt")  # the user gives up on it: gone from the spool and the status
    assert [s for s in status_lines(again) if s[0] != "committed"] == []


def test_unmount_waits_for_uploads_or_keeps_them_for_the_next_mount(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    (result / "Files" / "first.txt").write_bytes(b"first\n")
    run = subprocess.run([str(BIN / "basemount-py"), "unmount", str(m.mountpoint)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "all uploads committed" in run.stderr
    assert "first.txt" in server_files(emulator, app_id)
    m.process.wait(timeout=30)

    m2 = mount_factory(emulator, *HOLD, name="mnt")
    files = m2.path("Projects", "Uploads", "AppResults", "Result", "Files")
    (files / "second.txt").write_bytes(b"second\n")
    run = subprocess.run([str(BIN / "basemount-py"), "unmount", "--keep-pending", str(m2.mountpoint)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "stay in the spool" in run.stderr
    assert "second.txt" not in server_files(emulator, app_id)
    m2.process.wait(timeout=30)
    m3 = mount_factory(emulator, name="mnt")
    flush_and_wait(m3)
    assert "second.txt" in server_files(emulator, app_id)
    status = subprocess.run([str(BIN / "basemount-py"), "status", str(m3.mountpoint)], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "committed\t7\t" in status.stdout


# -- commands keep state true --------------------------------------------------------------------------


def test_mark_as_complete_waits_for_uploads_refuses_failed_ones_and_refreshes_everything(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    files = result / "Files"
    (files / "dup.txt").write_bytes(b"ours\n")
    with api(emulator) as c:  # someone else puts a different dup.txt there: ours fails for good (409)
        c.post(f"v1pre3/appresults/{app_id}/files", params={"name": "dup.txt", "directory": ""}, content=b"theirs\n").raise_for_status()
    flush_and_wait(m)
    assert [s[0] for s in status_lines(m) if s[0] != "committed"] == ["failed"]
    run = subprocess.run([str(BIN / "basemount-cmd"), "--path", str(result), "mark-as-complete"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "not committed yet" in run.stderr and "dup.txt" in run.stderr
    os.unlink(files / "dup.txt")
    run = subprocess.run([str(BIN / "basemount-cmd"), "--path", str(result), "rename-appsession", "Renamed", "run"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads((result / ".json").read_text())["Response"]["AppSession"]["Name"] == "Renamed run"
    (files / "late.txt").write_bytes(b"late\n")  # pending (long write-back): mark-as-complete sends it first
    run = subprocess.run([str(BIN / "basemount-cmd"), "--path", str(result), "mark-as-complete"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert server_files(emulator, app_id)["late.txt"]["Size"] == 5
    assert (result / ".status").read_text().strip() == "Complete"
    assert json.loads((result / ".json").read_text())["Response"]["AppSession"]["Status"] == "Complete"
    assert not os.stat(files).st_mode & 0o200
    with pytest.raises(OSError) as raised:
        open(files / "more.txt", "wb")
    assert raised.value.errno == errno.EROFS


def test_a_full_spool_is_enospc_with_the_reason(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD, "--spool-max", "0.001")  # about 1 MiB
    files = new_appresult(m) / "Files"
    (files / "fits.bin").write_bytes(os.urandom(512 * 1024))
    fd = os.open(files / "too-big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(OSError) as raised:
        for _ in range(16):
            os.write(fd, os.urandom(128 * 1024))
    assert raised.value.errno == errno.ENOSPC
    os.close(fd)
    assert "spool is full" in (files / ".error").read_text()
    # the partial file is not uploaded: it is kept as failed until the user removes it
    wait_until(lambda: [s[0] for s in status_lines(m) if s[2].endswith("too-big.bin")] == ["failed"], "too-big.bin failed")
    os.unlink(files / "too-big.bin")
    flush_and_wait(m)  # what fitted is uploaded; the space comes back
    (files / "later.bin").write_bytes(os.urandom(700 * 1024))
    flush_and_wait(m)
    assert sorted(n for n in os.listdir(files) if not n.startswith(".")) == ["fits.bin", "later.bin"]


def test_files_waiting_in_the_spool_hold_no_descriptors(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    files = new_appresult(m) / "Files"
    for i in range(300):
        (files / f"f{i:03d}.txt").write_bytes(b"%d\n" % i)
    wait_until(lambda: sum(1 for s in status_lines(m) if s[0] == "pending") == 300, "300 pending files")
    assert len(os.listdir(f"/proc/{m.pid}/fd")) < 100  # not one per waiting file (ulimit -n is often 1024)
    flush_and_wait(m)
    assert len([n for n in os.listdir(files) if not n.startswith(".")]) == 300


def test_an_unusable_cache_dir_leaves_files_read_only_with_the_reason(tmp_path, emulator, mount_factory):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a file where the cache directory should be")
    m = mount_factory(emulator, "--cache-dir", str(not_a_dir))
    files = new_appresult(m) / "Files"  # creating the app result needs no spool
    with pytest.raises(OSError) as raised:
        (files / "x.txt").write_bytes(b"x\n")
    assert raised.value.errno == errno.EROFS
    assert "upload spool" in (files / ".error").read_text() and "--cache-dir" in (files / ".error").read_text()
    assert (m.path("Projects", "Existing", "Samples", "S1", "Files", "r1.fastq")).read_bytes() == b"@r\nACGT\n+\nIIII\n"
