"""The write-back spool through a real mount: the tools people copy with give byte-identical files
(also rsync -a/-r, tar -x, cp -a and a shell's > and >> during an API outage), a daemon killed
mid-upload is resumed by the next mount, unmount waits for uploads or keeps them (also
fusermount3 -u during a commit that hangs) for the next mount. The logic behind them (outages, renames, fsync/close errors, a full
spool, mark-as-complete, descriptors) is tested in-process on the MockClock:
tests/test_write_logic.py.

Every check of the server's bytes goes through a FRESH mount (or the API), never this mount's view.
No test waits on the clock: each waits for a condition (the status file, the emulator's counters)
with a generous bound.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from basemount_py.emulator.control import EmulatorProcess

from conftest import cli_in_process, flush, flush_and_wait, is_mounted, sha256_file, status_lines, wait_until, write_file
from test_write_upload import SMALL, account, api, new_appresult  # noqa: F401 (account: a fixture)
from test_write_upload import appresult_files as server_files

MiB = 2**20
HOLD = ("--write-back", "600")  # nothing uploads until flushed (or fsync'd): no race with the clock


@pytest.fixture
def emulator(account):
    with EmulatorProcess(account) as em:
        yield em


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def fresh_files(em, mount_factory, name: str, *parts: str) -> Path:
    fresh = mount_factory(em, name=name)
    return fresh.path("Projects", "Uploads", "AppResults", "Result", "Files", *parts)


# -- tools ------------------------------------------------------------------------------------------


def _source_tree(root: Path) -> Path:
    write_file(root / "big.bin", os.urandom(2 * MiB + 333))
    write_file(root / "a.txt", b"alpha\n")
    write_file(root / "nested" / "b.vcf", b"##fileformat=VCFv4.2\n")
    write_file(root / "nested" / "deeper" / "c.bin", os.urandom(70000))
    os.chmod(root / "a.txt", 0o600)
    return root


def test_common_tools_give_byte_identical_files(tmp_path, emulator, mount_factory):
    """cp (-r, -a, -p, a sparse file), rsync (-a, -r, --inplace), tar -x, install, dd (with and
    without conv=fsync), a shell redirect, shutil.copytree, ftruncate past the end: the bytes a
    fresh mount reads equal the sources."""
    src = _source_tree(tmp_path / "src")
    expected = tree_digests(src)
    tarball = tmp_path / "src.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="src")
    sparse = tmp_path / "s.bin"
    with open(sparse, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(1000)
        f.write(b"q")
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
        # conv=fsync: fsync before close, which uploads at once and returns once committed
        "dd-fsync": ["dd", f"if={src / 'big.bin'}", f"of={files / 'dd-fsync' / 'big.bin'}", "bs=64k", "conv=fsync", "status=none"],
        "echo": ["bash", "-c", f"echo alpha > '{files / 'echo' / 'a.txt'}'"],
    }
    for name, argv in steps.items():
        if name in ("tar", "dd", "dd-fsync", "echo"):
            (files / name).mkdir()
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (name, run.stderr)
    shutil.copytree(src, files / "copytree")
    # a sparse file (before the fix, cp failed: "failed to extend ... Invalid argument")
    run = subprocess.run(["cp", str(sparse), str(files)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
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
    for name in ("cp-r", "cp-a", "cp-p", "rsync", "rsync-default", "rsync-inplace", "copytree"):
        assert tree_digests(out / name) == expected, name
    assert tree_digests(out / "tar" / "src") == expected
    for name in ("install", "dd", "dd-fsync"):
        assert sha256_file(out / name / "big.bin") == expected["big.bin"], name
    assert (out / "echo" / "a.txt").read_bytes() == b"alpha\n"
    assert sha256_file(out / "s.bin") == sha256_file(sparse)
    assert (out / "grown.bin").read_bytes() == expected_grown
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith(".big.bin.") or n.startswith(".a.txt.")]  # no rsync temp files


def server_digests(em, app_id: str) -> dict[str, str]:
    """Every file of the app result as the server serves it (its content through the API), by path."""
    with api(em) as c:
        return {path: hashlib.sha256(content(c, item)).hexdigest() for path, item in server_files(em, app_id).items()}


def content(c, item: dict) -> bytes:
    """A file's bytes as the server serves them (``c``: an API client)."""
    return c.get(f"v1pre3/files/{item['Id']}/content", follow_redirects=True).content


def test_tools_and_shell_writes_during_an_api_outage_land_after_it(tmp_path, emulator, mount_factory):
    """Through the kernel, while every API call fails: rsync with its default options, rsync -a
    (temp files, renames, chmod/utimes), rsync -r, tar -x, cp -a of a tree, and a shell's
    ``echo x > f; echo y >> f`` all succeed; the files wait in the spool and meet the outage.
    ``echo z >> FILE`` on a file already on BaseSpace fails where the shell sees it (EROFS:
    "Read-only file system", exit 1) and leaves that file as it was. Once the API is back every
    file is committed under its own name, and the bytes the server serves, through the API and
    through a fresh mount, equal the sources: nothing lost, no temp names, nothing extra. (Each
    step, file by file, also runs in-process: tests/test_write_logic.py.) ``--op-timeout 4``
    shortens each failing upload attempt (its retry deadline: 3 s)."""
    src = _source_tree(tmp_path / "src")
    expected = tree_digests(src)
    tarball = tmp_path / "src.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="src")
    m = mount_factory(emulator, *SMALL, "--op-timeout", "4")  # the default write-back delay: as a user runs it
    result = new_appresult(m)
    files = result / "Files"
    app_id = (result / ".id").read_text().strip()
    (files / "done.txt").write_bytes(b"uploaded before the outage\n")
    flush_and_wait(m)
    (files / "tar").mkdir()
    (files / "shell").mkdir()
    os.listdir(files)
    emulator.set_knobs(fail_next=[{"kind": "500", "count": 1_000_000, "scope": "api"}])
    try:
        steps = {
            "rsync": ["rsync", str(src / "a.txt"), str(src / "big.bin"), str(files / "rsync-plain")],  # default options
            "rsync -a": ["rsync", "-a", f"{src}/", str(files / "rsync")],
            "rsync -r": ["rsync", "-r", f"{src}/", str(files / "rsync-r")],
            "tar -x": ["tar", "-xf", str(tarball), "-C", str(files / "tar")],
            "cp -a": ["cp", "-a", str(src), str(files / "cp-a")],
            "echo >, >>": ["bash", "-c", f"echo x > '{files / 'shell' / 'f.txt'}' && echo y >> '{files / 'shell' / 'f.txt'}'"],
        }
        for name, argv in steps.items():
            run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, (name, run.stderr)
        appended = subprocess.run(["bash", "-c", f"echo z >> '{files / 'done.txt'}'"], capture_output=True, text=True, timeout=60)
        assert appended.returncode == 1 and "Read-only file system" in appended.stderr, appended
        flush(m)  # start the uploads now: they meet the outage
        wait_until(lambda: flush(m) or [s for s in status_lines(m) if "attempt" in s[-1]], "an upload attempt that met the outage", timeout=120, poll=0.2)
        lines = status_lines(m)  # (a file whose release the kernel has not sent yet is still "open")
        assert not [s for s in lines if s[0] == "failed" or (s[0] == "committed" and not s[2].endswith("/done.txt"))], lines
    finally:
        emulator.set_knobs(fail_next=[])
    flush_and_wait(m, timeout=300)
    assert not [s for s in status_lines(m) if s[0] == "failed"]
    want = {"done.txt": hashlib.sha256(b"uploaded before the outage\n").hexdigest(), "shell/f.txt": hashlib.sha256(b"x\ny\n").hexdigest()}
    for folder in ("rsync", "rsync-r", "tar/src", "cp-a"):
        want.update({f"{folder}/{path}": digest for path, digest in expected.items()})
    want.update({f"rsync-plain/{name}": expected[name] for name in ("a.txt", "big.bin")})
    assert server_digests(emulator, app_id) == want
    # and as a fresh mount reads them from the server
    fresh = mount_factory(emulator, name="fresh")
    assert tree_digests(fresh.path(*result.relative_to(m.mountpoint).parts, "Files")) == want


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


def test_unmount_waits_for_uploads_or_keeps_them_for_the_next_mount(emulator, mount_factory):
    m = mount_factory(emulator, *HOLD)
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    (result / "Files" / "first.txt").write_bytes(b"first\n")
    run = cli_in_process("unmount", str(m.mountpoint), env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert "all uploads committed" in run.stderr
    assert "first.txt" in server_files(emulator, app_id)
    m.process.wait(timeout=30)

    m2 = mount_factory(emulator, *HOLD, name="mnt")
    files = m2.path("Projects", "Uploads", "AppResults", "Result", "Files")
    (files / "second.txt").write_bytes(b"second\n")
    run = cli_in_process("unmount", "--keep-pending", str(m2.mountpoint), env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert "stay in the spool" in run.stderr
    assert "second.txt" not in server_files(emulator, app_id)
    m2.process.wait(timeout=30)
    m3 = mount_factory(emulator, *HOLD, name="mnt")
    flush_and_wait(m3)
    assert "second.txt" in server_files(emulator, app_id)
    files = m3.path("Projects", "Uploads", "AppResults", "Result", "Files")
    (files / "third.txt").write_bytes(b"third\n")
    wait_until(lambda: [s[0] for s in status_lines(m3) if s[2].endswith("third.txt")] == ["pending"], "third.txt pending")
    run = cli_in_process("retry", str(files / "third.txt"), env=dict(os.environ))
    assert run.returncode == 0 and "queued for upload" in run.stdout, run.stderr  # retry of a pending file: upload it now
    wait_until(lambda: "third.txt" in server_files(emulator, app_id), "third.txt uploaded after the retry")
    status = cli_in_process("status", str(m3.mountpoint), env=dict(os.environ))
    assert status.returncode == 0 and "committed\t7\t" in status.stdout

    # fusermount3 -u while the server hangs on the commit of one file and another waits: the
    # daemon ends at once (before the fix: after the commit's retry deadline, 50 s by default);
    # the next mount commits both, each once.
    (files / "fourth.txt").write_bytes(b"fourth\n")
    emulator.reset_counters()
    emulator.set_knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")
    try:
        # flushed again until it starts: the kernel's release of fourth.txt may come after a flush
        wait_until(lambda: flush(m3) or emulator.counters()["requests"].get("POST v1pre3/appresults/{id}/files"), "the commit of fourth.txt to hang", poll=0.2)
        (files / "fifth.txt").write_bytes(b"fifth\n")  # waits (--write-back 600)
        subprocess.run(["fusermount3", "-u", str(m3.mountpoint)], check=True, capture_output=True, timeout=30)
        assert m3.process.wait(timeout=30) == 0  # well under that deadline, on a loaded machine too
    finally:
        emulator.set_knobs(stall_rate=0.0, stall_seconds=0)  # the held request goes on: it may land now
    m4 = mount_factory(emulator, *HOLD, name="mnt")
    flush_and_wait(m4)
    assert not [s for s in status_lines(m4) if s[0] == "failed"]
    listed = server_files(emulator, app_id)
    assert sorted(listed) == ["fifth.txt", "first.txt", "fourth.txt", "second.txt", "third.txt"]  # each once
    with api(emulator) as c:
        assert [content(c, listed[n]) for n in ("fourth.txt", "fifth.txt")] == [b"fourth\n", b"fifth\n"]
