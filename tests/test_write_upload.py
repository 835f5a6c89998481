"""Write mode through a real mount: new projects and app results, uploads (small, spilled,
multipart, out of order), upload failures, zero-byte files, read-only places."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes

from conftest import flush_and_wait, sha256_file, write_entity, write_file

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


def write_source_tree(src: Path) -> dict[str, str]:
    """300 MiB + 10 MiB (spilled: between one part and the threshold) + small files."""
    big = src / "big.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        for off in range(0, 300 * MiB, 16 * MiB):
            f.write(synthetic_bytes(7, off, min(16 * MiB, 300 * MiB - off)))
    write_file(src / "mid.bin", os.urandom(10 * MiB))
    write_file(src / "notes.txt", b"hello\n")
    write_file(src / "nested" / "deeper" / "tiny.vcf", b"##fileformat=VCFv4.2\n")
    return {str(p.relative_to(src)): sha256_file(p) for p in sorted(src.rglob("*")) if p.is_file()}


def test_cp_r_300_mib_and_small_files_into_a_new_app_result(tmp_path, emulator, mount_factory):
    sources = write_source_tree(tmp_path / "src")
    m = mount_factory(emulator)
    result = new_appresult(m)
    assert (result / "Files").is_dir() and (result / ".status").read_text().strip() == "Running"
    app_id = (result / ".id").read_text().strip()
    emulator.reset_counters()

    run = subprocess.run(["cp", "-r", str(tmp_path / "src"), str(result / "Files")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    flush_and_wait(m)  # closed files are in the spool; the uploads follow in the background

    # shows up at once in this mount, with the right sizes
    assert (result / "Files" / "src" / "big.bin").stat().st_size == 300 * MiB
    counters = emulator.counters()["requests"]
    assert counters["PUT v1pre3/files/{id}/parts/{n}"] == 300 // 8 + 1 + 0  # 38 parts of 8 MiB (last 4 MiB)
    assert counters["POST v1pre3/files/{id}"] == 1  # one multipart upload marked complete
    assert counters["POST v1pre3/appresults/{id}/files"] == 4  # 3 small + the multipart start
    listed = appresult_files(emulator, app_id)
    assert {p.removeprefix("src/") for p in listed} == set(sources)
    # ETag as real BaseSpace gives it: the content MD5, or S3's <md5 of the part MD5s>-<parts>
    # after a multipart upload (here 8 MiB parts)
    src = tmp_path / "src"
    for rel in ("notes.txt", "nested/deeper/tiny.vcf", "mid.bin"):
        assert listed[f"src/{rel}"]["ETag"] == hashlib.md5((src / rel).read_bytes()).hexdigest()
    data = (src / "big.bin").read_bytes()
    parts = [data[i : i + 8 * MiB] for i in range(0, len(data), 8 * MiB)]
    multipart = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert listed["src/big.bin"]["ETag"] == f"{multipart}-{len(parts)}"
    m.stop()

    # the emulator persisted it: restart it, mount afresh, compare checksums with the sources
    emulator.restart()
    fresh = mount_factory(emulator, name="fresh")
    files = fresh.path("Projects", "Uploads", "AppResults", "Result", "Files", "src")
    assert {rel: sha256_file(files / rel) for rel in sources} == sources
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())


def test_out_of_order_writes_spill_and_upload_correctly(tmp_path, emulator, mount_factory):
    m = mount_factory(emulator, *SMALL)
    result = new_appresult(m)
    data = os.urandom(3 * MiB + 12345)
    chunks = [(off, data[off : off + 256 * 1024]) for off in range(0, len(data), 256 * 1024)]
    target = result / "Files" / "shuffled.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off, chunk in chunks[1:] + chunks[:1]:  # the first chunk last: a hole, then filled
            os.pwrite(fd, chunk, off)
        os.fsync(fd)  # fsync commits too
    finally:
        os.close(fd)
    src = tmp_path / "shuffled.bin"
    src.write_bytes(data)
    assert sha256_file(target) == sha256_file(src)
    listed = appresult_files(emulator, (result / ".id").read_text().strip())
    assert listed["shuffled.bin"]["Size"] == len(data)


def test_fsync_reports_a_failed_upload_and_the_file_still_lands_later(tmp_path, emulator, mount_factory):
    """close() no longer waits for the server (the spool holds the bytes); fsync(fd) does, and
    reports the failure of its attempt, while the upload goes on in the background."""
    m = mount_factory(emulator, *SMALL)
    result = new_appresult(m)
    app_id = (result / ".id").read_text().strip()
    data = os.urandom(3 * MiB + 1)  # multipart
    f = open(result / "Files" / "broken.bin", "wb", buffering=0)
    f.write(data)
    emulator.set_knobs(fail_next=[{"kind": "500", "count": 1000, "scope": "api"}])
    try:
        with pytest.raises(OSError) as raised:
            os.fsync(f.fileno())
        assert raised.value.errno == errno.EIO
        assert "broken.bin" in (result / "Files" / ".error").read_text()
    finally:
        emulator.set_knobs(fail_next=[])
    f.close()  # fine: the bytes are safe in the spool
    assert "broken.bin" not in appresult_files(emulator, app_id)  # never marked complete
    flush_and_wait(m)
    listed = appresult_files(emulator, app_id)
    assert listed["broken.bin"]["Size"] == len(data)
    src = tmp_path / "broken.bin"
    src.write_bytes(data)
    assert sha256_file(result / "Files" / "broken.bin") == sha256_file(src)
    assert not any((Path(emulator.data_dir) / ".uploads").iterdir())  # the failed attempt: aborted


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


def test_new_project_and_app_result_show_up_and_reuse_existing_names(emulator, mount_factory):
    m = mount_factory(emulator)
    (m.path("Projects") / "Fresh Project: 1").mkdir()
    assert "Fresh Project: 1" in os.listdir(m.path("Projects"))
    with api(emulator) as c:
        names = [p["Name"] for p in c.get("v1pre3/users/current/projects").json()["Response"]["Items"]]
        assert names.count("Fresh Project: 1") == 1
        # BaseSpace returns the existing project for a known name
        again = c.post("v1pre3/projects", json={"Name": "Fresh Project: 1"}).json()["Response"]
    assert again["Id"] == (m.path("Projects", "Fresh Project: 1", ".id")).read_text().strip()
    result = m.path("Projects", "Fresh Project: 1", "AppResults", "Out")
    result.mkdir()
    session = json.loads((result / ".json").read_text())["Response"]["AppSession"]
    assert session["Status"] == "Running" and session["Name"].startswith("BaseSpaceCLI - ")
    assert any(n.startswith("BaseSpaceCLI - ") for n in os.listdir(m.path("Projects", "Fresh Project: 1", "AppSessions")))


def test_everything_else_stays_read_only(emulator, mount_factory):
    m = mount_factory(emulator)
    cases = [
        (lambda: m.path("Runs", "NewRun").mkdir(), errno.EROFS),
        (lambda: m.path("Projects", "Existing", "Samples", "New").mkdir(), errno.EROFS),
        (lambda: open(m.path("Projects", "Existing", "Samples", "S1", "Files", "x"), "wb"), errno.EROFS),
        (lambda: open(m.path("Projects", "Existing", "Samples", "S1", "Files", "r1.fastq"), "ab"), errno.EROFS),
        (lambda: open(m.path("README"), "w"), errno.EROFS),
        (lambda: os.rename(m.path("Projects", "Existing"), m.path("Projects", "Renamed")), errno.EROFS),
    ]
    for action, code in cases:
        with pytest.raises(OSError) as raised:
            action()
        assert raised.value.errno in (code, errno.EACCES), raised.value
    # a Complete app result is read-only: its Files/ refuses new files
    done_files = m.path("Projects", "Existing", "AppResults", "Done", "Files")
    with pytest.raises(OSError) as raised:
        open(done_files / "new.txt", "wb")
    assert raised.value.errno == errno.EROFS
    with pytest.raises(OSError):
        os.unlink(done_files / "old.txt")
