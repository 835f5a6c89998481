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

import httpx
import pytest
import trio
import trio.testing

from basemount_py.api.errors import FsError, NotFound, ShuttingDown, errno_for
from basemount_py.blocking import inline
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.write import UploadConfig
from basemount_py.write.upload import WriteFailure

from conftest import write_entity, write_file
from inprocess import BASE_URL, MOUNTPOINT, Core, EmulatorTransport, emulator_app, run_core_on_mock_clock

KiB, MiB = 2**10, 2**20
# multipart above 1 MiB, 512 KiB parts (the real-mount tests' --upload-threshold 1 --upload-part-size 0.5)
SMALL = UploadConfig(small_threshold=1 * MiB, part_size=512 * KiB)
HOLD = 600.0  # a write-back delay nothing reaches unless flushed (or fsync'd): the real tests' --write-back 600
RESULT = ("Projects", "Uploads", "AppResults", "Result")
FILES = RESULT + ("Files",)
OUTAGE = [{"kind": "500", "count": 1_000_000, "scope": "api"}]  # every API call fails until cleared


def httpx_client(core: Core) -> httpx.AsyncClient:
    """Someone else's client of the same server (the API, not through the core)."""
    return httpx.AsyncClient(transport=core.transport, base_url=BASE_URL, headers={"x-access-token": core.emulator.token})


def upload(cfg: UploadConfig = SMALL, **changes) -> UploadConfig:
    return UploadConfig(**{**cfg.__dict__, **changes})


@pytest.fixture
def account(tmp_path) -> Path:
    return make_account(tmp_path)


def make_account(tmp_path) -> Path:
    """The account of the write tests: a project with two samples and a completed app result, a run."""
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
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".json")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


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


async def linked_id(core: Core, *path: str) -> str:
    """The id of the entity a link of the mount points to (its targets end in ``.id.<id>``): what
    reading ``LINK/.id`` through the kernel, which follows the link, gives."""
    target = await core.fs.readlink(await core.ino(*path))
    assert "/.id." in target, target
    return target.rsplit("/.id.", 1)[1]


async def written_while_parts_go(core: Core, name: str, data: bytes) -> None:
    """create, write in 128 KiB pieces, wait until 4 parts of it are on the server, close."""
    opened, _ = await core.fs.create(await core.ino(*FILES), name)
    for off in range(0, len(data), 128 * KiB):
        await core.fs.write(opened.fh, off, data[off : off + 128 * KiB])
    await until(lambda: core.emulator.counters.requests.get("PUT v1pre3/files/{id}/parts/{n}", 0) >= 4, poll=0.05)
    await core.fs.flush(opened.fh)
    await core.fs.release(opened.fh)


async def until(condition, bound: float = 3600.0, poll: float = 0.5) -> None:
    """Wait (in virtual time) until ``condition()`` holds."""
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


def _source_tree() -> dict[str, bytes]:
    """test_write_spool's source tree: a multipart file, small ones, nested folders."""
    return {
        "big.bin": os.urandom(2 * MiB + 333),
        "a.txt": b"alpha\n",
        "nested/b.vcf": b"##fileformat=VCFv4.2\n",
        "nested/deeper/c.bin": os.urandom(70000),
    }


async def _folders(core: Core, folder: tuple[str, ...], rel: str) -> None:
    """mkdir the folders on the way to ``rel`` below ``folder`` (mkdir -p)."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts)):
        if parts[i] not in await core.names(*folder, *parts[:i]):
            await core.mkdir(*folder, *parts[: i + 1])


async def _times_and_mode(core: Core, *path: str) -> None:
    """What cp -a, rsync -a and tar -x do after close: chmod/utimes (SETATTR without a size)."""
    ino = await core.ino(*path)
    await core.fs.setattr(ino, None)
    await core.fs.setattr(ino, None, ownership=True)


async def rsync_like(core: Core, dest: tuple[str, ...], tree: dict[str, bytes], *, attributes: bool) -> None:
    """rsync's pattern: each file written under a hidden temp name ``.NAME.XXXXXX`` in its folder,
    closed, (with -a: its mode and times set), then renamed over NAME; then the folders' times."""
    for n, (rel, data) in enumerate(sorted(tree.items())):
        await _folders(core, dest, rel)
        *where, name = rel.split("/")
        temp = f".{name}.{n:06d}"
        await core.write_file(data, *dest, *where, temp)
        if attributes:
            await _times_and_mode(core, *dest, *where, temp)
        folder = await core.ino(*dest, *where)
        with pytest.raises(NotFound):  # rsync looks the name up before it renames onto it
            await core.fs.lookup(folder, name)
        await core.fs.rename(folder, temp, folder, name)
    if attributes:
        await _times_and_mode(core, *dest)


async def copy_like(core: Core, dest: tuple[str, ...], tree: dict[str, bytes], *, attributes: bool) -> None:
    """cp -a / tar -x: folders made, each file created under its name, written, closed, and
    (cp -a, tar) its mode and times set after the close."""
    for rel, data in sorted(tree.items()):
        await _folders(core, dest, rel)
        await core.write_file(data, *dest, *rel.split("/"))
        if attributes:
            await _times_and_mode(core, *dest, *rel.split("/"))


def digests(tree: dict[str, bytes]) -> dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in tree.items()}


def test_the_tools_patterns_during_an_api_outage_all_land_after_it(account, tmp_path):
    """rsync's temp file + rename (-a with chmod/utimes, -r without), tar's and cp -a's chmod/utimes
    after close, new sub-folders, all while every API call fails, with the default write-back
    delay: each step succeeds, the files wait in the spool, and once the API is back every file is
    committed under its own name with its bytes (nothing lost, no temp names, nothing extra)."""
    tree = _source_tree()
    tools = ("rsync", "rsync-default", "tar/src", "cp-a")

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.names(*FILES)
        await core.mkdir(*FILES, "tar")
        core.knobs(fail_next=OUTAGE)
        await core.mkdir(*FILES, "rsync")
        await rsync_like(core, FILES + ("rsync",), tree, attributes=True)
        await core.mkdir(*FILES, "rsync-default")
        await rsync_like(core, FILES + ("rsync-default",), tree, attributes=False)
        await core.mkdir(*FILES, "tar", "src")
        await copy_like(core, FILES + ("tar", "src"), tree, attributes=True)
        await core.mkdir(*FILES, "cp-a")
        await copy_like(core, FILES + ("cp-a",), tree, attributes=True)
        wanted = len(tools) * len(tree)

        def all_met_the_outage() -> bool:
            return len([s for s in core.status() if s[0] in ("pending", "uploading") and "attempt" in s[-1]]) == wanted

        with trio.fail_after(3600):  # every file waits in the spool and has met the outage
            while not all_met_the_outage():
                await core.command("flush\n")
                await trio.sleep(0.5)
        settled = [s for s in core.status() if s[0] in ("failed", "committed")]
        core.knobs(fail_next=[])
        await core.flush_and_wait()
        failed = [s for s in core.status() if s[0] == "failed"]
        return settled, failed, set(await core.server_files(app_id))

    settled, failed, listed = run(account, tmp_path, scenario, upload(write_back=SMALL.write_back), metadata_ttl=3600)
    assert settled == [] and failed == []
    assert listed == {f"{tool}/{rel}" for tool in tools for rel in tree}
    for tool in tools:
        assert stored_tree(account, *tool.split("/")) == digests(tree), tool
    assert not leftover_parts(account)


def test_fsync_reports_a_failed_upload_and_the_file_still_lands_later(account, tmp_path):
    """close() does not wait for the server (the spool holds the bytes); fsync(fd) does, and
    reports the failure of its attempt (EIO, and the name in .error), while the upload goes on."""
    data = os.urandom(3 * MiB + 1)  # multipart

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "broken.bin")
        await core.fs.write(opened.fh, 0, data)
        core.knobs(fail_next=[{"kind": "500", "count": 1000, "scope": "api"}])
        with pytest.raises(WriteFailure) as raised:
            await core.fs.fsync(opened.fh)
        error = await text(core, *FILES, ".error")
        core.knobs(fail_next=[])
        await core.fs.flush(opened.fh)  # close(): fine, the bytes are safe in the spool
        await core.fs.release(opened.fh)
        before = set(await core.server_files(app_id))
        await core.flush_and_wait()
        return errno_for(raised.value), error, before, await core.server_files(app_id), await core.read_all(*FILES, "broken.bin")

    code, error, before, listed, back = run(account, tmp_path, scenario)
    assert code == errno.EIO and "broken.bin" in error
    assert "broken.bin" not in before  # never marked complete
    assert listed["broken.bin"]["Size"] == len(data)
    assert stored(account, "broken.bin") == data and back == data
    assert not leftover_parts(account)  # the failed attempt: aborted


# -- renames: before the upload, after it started, after it -------------------------------------------


def test_rename_before_upload_renames_the_spooled_file_and_after_is_erofs(account, tmp_path):
    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)
        await core.write_file(b"draft\n", *FILES, ".tmp.part")
        await core.fs.rename(files, ".tmp.part", files, "final.txt")
        names = await core.visible(*FILES)
        await core.write_file(b"kept\n", *FILES, "kept.txt", fsync=True)  # fsync: committed when it returns
        after_fsync = set(await core.server_files(app_id))
        with pytest.raises(WriteFailure) as raised:
            await core.fs.rename(files, "kept.txt", files, "moved.txt")
        renamed_error = await text(core, *FILES, ".error")
        with pytest.raises(WriteFailure) as touched:  # touch: create, close with nothing written
            await core.write_file(b"", *FILES, "empty")
        errors = await text(core, *FILES, ".error")
        await _times_and_mode(core, *FILES, "kept.txt")  # accepted and ignored on an uploaded file too
        await core.flush_and_wait()
        sizes = {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}
        return names, after_fsync, errno_for(raised.value), renamed_error, errno_for(touched.value), errors, sizes

    names, after_fsync, code, renamed_error, touched, errors, sizes = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert names == ["final.txt"]
    assert after_fsync == {"kept.txt"}
    assert code == errno.EROFS and "cannot be renamed" in renamed_error
    assert touched == errno.EINVAL
    assert "cannot be renamed" in errors and "zero-byte" in errors  # every failure in the folder, not only the last
    assert sizes == {"kept.txt": 5, "final.txt": 6}


def test_a_rename_that_arrives_after_the_upload_started_still_renames(account, tmp_path):
    """The soak's race: the write-back delay has passed and the upload started (here: no delay,
    every API answer 15 s late, so the multipart start is held) when the rename comes. It must
    still rename (before the fix: EROFS), the started upload is aborted, and only the new name
    reaches BaseSpace."""
    data = os.urandom(3 * MiB + 3)
    start = "POST v1pre3/appresults/{id}/files"

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)
        await core.names(*FILES)
        opened, _ = await core.fs.create(files, ".payload.bin.Xy12Zq")
        await core.fs.write(opened.fh, 0, data)
        core.emulator.counters.reset()
        core.knobs(stall_seconds=15, stall_rate=1.0, fault_scope="api")  # every API answer 15 s late
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await until(lambda: core.emulator.counters.requests.get(start), poll=0.05)
        parts_sent = core.emulator.counters.requests.get("PUT v1pre3/files/{id}/parts/{n}", 0)
        uploading = [s for s in core.status() if s[0] == "uploading" and s[2].endswith(".payload.bin.Xy12Zq")]
        await core.fs.rename(files, ".payload.bin.Xy12Zq", files, "payload.bin")
        core.knobs(stall_rate=0.0)
        names = await core.visible(*FILES)
        await core.flush_and_wait()
        return parts_sent, uploading, names, list(await core.server_files(app_id))

    parts_sent, uploading, names, listed = run(account, tmp_path, scenario, upload(write_back=0.0))
    assert parts_sent == 0 and uploading  # held: the upload had started, nothing sent yet
    assert names == ["payload.bin"]
    assert listed == ["payload.bin"] and stored(account, "payload.bin") == data
    assert not leftover_parts(account)  # the started upload was aborted


def test_parts_go_while_the_file_is_written_and_later_writes_are_not_lost(account, tmp_path):
    """A large file's parts are sent while it is still open (before: nothing before close). A
    write into a part already sent, a file that shrinks below parts already sent, one opened
    again with O_TRUNC, and a rename after parts were sent under the old name all still give the
    right bytes under the right name."""
    parts = "PUT v1pre3/files/{id}/parts/{n}"
    expected: dict[str, bytes] = {}

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)

        async def write_and_wait_for_parts(name: str, data: bytes) -> int:
            core.emulator.counters.reset()
            opened, _ = await core.fs.create(files, name)
            for off in range(0, len(data), 128 * KiB):
                await core.fs.write(opened.fh, off, data[off : off + 128 * KiB])
            await until(lambda: core.emulator.counters.requests.get(parts, 0) >= 4, poll=0.05)
            return opened.fh

        async def close(fh: int) -> None:
            await core.fs.flush(fh)
            await core.fs.release(fh)

        # a write into a part already sent, and one past the end
        data = bytearray(os.urandom(3 * MiB))
        fh = await write_and_wait_for_parts("rewritten.bin", bytes(data))
        await core.fs.write(fh, 100, b"X" * 10)
        await core.fs.write(fh, len(data), b"tail")
        await close(fh)
        data[100:110] = b"X" * 10
        expected["rewritten.bin"] = bytes(data) + b"tail"
        # shrunk below parts already sent (still multipart)
        data2 = os.urandom(3 * MiB)
        fh = await write_and_wait_for_parts("shrunk.bin", data2)
        await core.fs.setattr(await core.ino(*FILES, "shrunk.bin"), fh, size=MiB + 7)
        await close(fh)
        expected["shrunk.bin"] = data2[: MiB + 7]
        # opened again with O_TRUNC after its parts went, and only its last bytes written
        await close(await write_and_wait_for_parts("truncated.bin", os.urandom(3 * MiB)))
        fh = (await core.fs.open(await core.ino(*FILES, "truncated.bin"), os.O_WRONLY | os.O_TRUNC)).fh
        await core.fs.write(fh, 3 * MiB - 3, b"end")
        await close(fh)
        expected["truncated.bin"] = b"\0" * (3 * MiB - 3) + b"end"
        # renamed after parts went under its first name
        data4 = os.urandom(2 * MiB + 1)
        await close(await write_and_wait_for_parts("first.bin", data4))
        await core.fs.rename(files, "first.bin", files, "second.bin")
        expected["second.bin"] = data4
        await core.flush_and_wait()
        return {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}

    sizes = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert sizes == {k: len(v) for k, v in expected.items()}
    for name, want in expected.items():
        assert stored(account, name) == want, name
    assert not leftover_parts(account)  # what was sent under a dropped upload: aborted


# -- the next mount: adopted entries ---------------------------------------------------------------


def test_an_upload_that_landed_before_the_crash_is_not_sent_twice(account, tmp_path):
    """A mount stops with two files pending; meanwhile the earlier attempt of one "landed" (same
    bytes on the server) and someone else wrote the other (different bytes). The next mount of
    the account adopts both from the spool, sends neither again, takes the first as committed and
    fails the second with the reason; a retry fails again; rm removes it from the spool."""
    emulator = emulator_app(account)

    async def first(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"same bytes\n", *FILES, "same.txt")
        await core.write_file(b"ours\n", *FILES, "other.txt")
        return app_id, [s[0] for s in core.status()]

    app_id, states = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)
    assert states == ["pending", "pending"]

    async def meanwhile():  # between the two mounts
        async with httpx.AsyncClient(transport=EmulatorTransport(emulator[1]), base_url=BASE_URL, headers={"x-access-token": emulator[0].token}) as c:
            for name, body in (("same.txt", b"same bytes\n"), ("other.txt", b"theirs\n")):
                r = await c.post(f"v1pre3/appresults/{app_id}/files", params={"name": name, "directory": ""}, content=body)
                assert r.status_code in (200, 201), r.text

    trio.run(meanwhile, clock=trio.testing.MockClock(autojump_threshold=0))
    emulator[0].counters.reset()

    async def second(core: Core):
        await core.flush_and_wait()
        resent = core.emulator.counters.requests.get("POST v1pre3/appresults/{id}/files", 0)
        lines = core.status()
        error = await text(core, *FILES, ".error")
        readable = await core.read_all(*FILES, "other.txt")  # still readable, from the spool
        sizes = {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}
        await core.command("retry " + "/".join(FILES + ("other.txt",)) + "\n")
        await until(lambda: [s[0] for s in core.status() if s[0] != "committed"] == ["failed"])
        await core.fs.unlink(await core.ino(*FILES), "other.txt")  # the user gives up on it
        left = [s for s in core.status() if s[0] != "committed"]
        return resent, lines, error, readable, sizes, left

    resent, lines, error, readable, sizes, left = run(account, tmp_path, second, upload(write_back=HOLD), emulator=emulator)
    assert resent == 0  # nothing re-sent
    failed = [s for s in lines if s[0] == "failed"]
    assert len(failed) == 1 and failed[0][2].endswith("Files/other.txt") and "different file" in failed[0][3]
    assert "other.txt" in error and readable == b"ours\n"
    assert sizes == {"same.txt": 11, "other.txt": 7}
    assert left == []


def test_a_retry_while_the_close_is_being_recorded_uploads_the_file_at_once(account, tmp_path):
    """``basemount-py retry FILE`` (or ``flush``) that comes while the close is still recording the
    file in the spool (its fsync, in a worker thread in a mount) uploads it at once. Before, the
    close scheduled the upload after that record with the write-back delay, overriding the
    request: the file waited ``--write-back`` although ``retry`` had said "queued for upload"
    (test_write_spool's real mount met it once)."""
    gate = {"armed": False, "entered": trio.Event(), "go": trio.Event()}

    async def held_sync(func, /, *args):
        target = getattr(func, "func", func)  # WriteManager._spool passes a functools.partial
        entry = (getattr(func, "args", ()) or (None,))[0]
        # the close's record of the file as complete (state pending), not an earlier fsync
        if gate["armed"] and getattr(target, "__name__", "") == "sync" and getattr(entry, "state", None) == "pending":
            gate["armed"] = False
            gate["entered"].set()
            await gate["go"].wait()
        return await inline(func, *args)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        gate["armed"] = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.write_file, b"third\n", *FILES, "third.txt")
            await gate["entered"].wait()
            during = [s[0] for s in core.status() if s[2].endswith("third.txt")]
            await core.command("retry " + "/".join(FILES + ("third.txt",)) + "\n")
            gate["go"].set()
        asked = trio.current_time()
        with trio.move_on_after(HOLD / 2):
            while "third.txt" not in await core.server_files(app_id):
                await trio.sleep(0.5)
        return during, trio.current_time() - asked, await core.server_files(app_id)

    during, took, files = run(account, tmp_path, scenario, upload(write_back=HOLD), run_blocking=held_sync)
    assert during == ["pending"]  # what `basemount-py status` showed when retry was asked
    assert "third.txt" in files and took < 60, took  # not after the write-back delay (600 s)
    assert stored(account, "third.txt") == b"third\n"


# -- commands and limits keep state true ---------------------------------------------------------------


def test_mark_as_complete_waits_for_uploads_refuses_failed_ones_and_refreshes_everything(account, tmp_path):
    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"ours\n", *FILES, "dup.txt")
        async with httpx_client(core) as c:  # someone else puts a different dup.txt there: ours fails for good (409)
            (await c.post(f"v1pre3/appresults/{app_id}/files", params={"name": "dup.txt", "directory": ""}, content=b"theirs\n")).raise_for_status()
        await core.flush_and_wait()
        states = [s[0] for s in core.status() if s[0] != "committed"]
        with pytest.raises(WriteFailure) as refused:
            await core.command("mark-as-complete\n", *RESULT)
        await core.fs.unlink(await core.ino(*FILES), "dup.txt")
        await core.command("rename-appsession Renamed run\n", *RESULT)
        renamed = json.loads(await core.read_all(*RESULT, ".json"))["Response"]["AppSession"]["Name"]
        await core.write_file(b"late\n", *FILES, "late.txt")  # pending (long write-back): mark-as-complete sends it first
        await core.command("mark-as-complete\n", *RESULT)
        late = (await core.server_files(app_id))["late.txt"]["Size"]
        status = (await text(core, *RESULT, ".status")).strip()
        session = json.loads(await core.read_all(*RESULT, ".json"))["Response"]["AppSession"]["Status"]
        mode = (await core.fs.getattr(await core.ino(*FILES))).mode
        with pytest.raises(WriteFailure) as more:
            await core.write_file(b"x", *FILES, "more.txt")
        return states, refused.value, renamed, late, status, session, mode, errno_for(more.value)

    states, refused, renamed, late, status, session, mode, more = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert states == ["failed"]
    assert "not committed yet" in refused.message and "dup.txt" in refused.message
    assert renamed == "Renamed run"
    assert late == 5 and status == "Complete" and session == "Complete"
    assert not mode & 0o200 and more == errno.EROFS


def test_a_full_spool_is_enospc_with_the_reason(account, tmp_path):
    async def scenario(core: Core):
        await new_appresult(core)
        await core.write_file(os.urandom(512 * KiB), *FILES, "fits.bin")
        opened, _ = await core.fs.create(await core.ino(*FILES), "too-big.bin")
        with pytest.raises(WriteFailure) as raised:
            for n in range(16):
                await core.fs.write(opened.fh, n * 128 * KiB, os.urandom(128 * KiB))
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        error = await text(core, *FILES, ".error")
        # the partial file is not uploaded: it is kept as failed until the user removes it
        await until(lambda: [s[0] for s in core.status() if s[2].endswith("too-big.bin")] == ["failed"])
        await core.fs.unlink(await core.ino(*FILES), "too-big.bin")
        await core.flush_and_wait()  # what fitted is uploaded; the space comes back
        await core.write_file(os.urandom(700 * KiB), *FILES, "later.bin")
        await core.flush_and_wait()
        return errno_for(raised.value), error, await core.visible(*FILES)

    code, error, names = run(account, tmp_path, scenario, upload(write_back=HOLD, spool_max=int(0.001 * 2**30)))
    assert code == errno.ENOSPC and "spool is full" in error
    assert names == ["fits.bin", "later.bin"]


def test_files_waiting_in_the_spool_hold_no_descriptors(account, tmp_path):
    """Each closed file costs a few fsyncs of the spool: 40 of them show a descriptor per file as
    well as 300 would (the real-mount test wrote 300 and allowed the daemon 100 descriptors)."""
    WAITING = 40
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario(core: Core):
        await new_appresult(core)
        before = open_fds()
        for i in range(WAITING):
            await core.write_file(b"%d\n" % i, *FILES, f"f{i:03d}.txt")
        pending = sum(1 for s in core.status() if s[0] == "pending")
        held = open_fds() - before
        await core.flush_and_wait()
        return pending, held, await core.visible(*FILES)

    pending, held, names = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert pending == WAITING
    assert held < 20  # not one per waiting file (ulimit -n is often 1024)
    assert len(names) == WAITING


def test_a_property_without_a_namespace_is_refused_at_open(account, tmp_path):
    async def scenario(core: Core):
        await new_appresult(core)
        with pytest.raises(WriteFailure) as raised:
            await core.write_file(b"x\n", *RESULT, "Properties", "plain")
        return errno_for(raised.value), await text(core, *RESULT, "Properties", ".error")

    code, error = run(account, tmp_path, scenario)
    assert code == errno.EINVAL and "namespace" in error  # before: exit 0, nothing set


def test_an_unusable_cache_dir_leaves_files_read_only_with_the_reason(account, tmp_path):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a file where the cache directory should be")

    async def scenario(core: Core):
        await new_appresult(core)  # creating the app result needs no spool
        with pytest.raises(WriteFailure) as raised:
            await core.write_file(b"x\n", *FILES, "x.txt")
        error = await text(core, *FILES, ".error")
        return errno_for(raised.value), error, await core.read_all("Projects", "Existing", "Samples", "S1", "Files", "r1.fastq")

    code, error, fastq = run_core_on_mock_clock(account, scenario, writes=SMALL, cache_dir=not_a_dir)
    assert code == errno.EROFS
    assert "upload spool" in error and "--cache-dir" in error
    assert fastq == b"@r\nACGT\n+\nIIII\n"


# -- uploads: sizes, order, ETags, what the server keeps (from test_write_upload) ---------------------------


def test_big_and_small_files_into_a_new_app_result_with_the_default_settings(account, tmp_path):
    """A 36 MiB file (multipart: 8 MiB parts, the last one 4 MiB; the real-mount test copied
    300 MiB, which costs 12 s in-process and checks nothing more), a 10 MiB one (between one part and the 25 MiB
    threshold: one request), small ones and a nested folder, with the mount's default upload
    settings. The server gets the parts and requests expected, ETags as real BaseSpace gives them
    (the content MD5, or S3's ``<md5 of the part MD5s>-<parts>``), and keeps the bytes: an emulator
    started afresh on its folder serves them to a fresh core."""
    big = synthetic_bytes(7, 0, 36 * MiB)
    tree = {"big.bin": big, "mid.bin": os.urandom(10 * MiB), "notes.txt": b"hello\n", "nested/deeper/tiny.vcf": b"##fileformat=VCFv4.2\n"}

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        status = (await text(core, *RESULT, ".status")).strip()
        core.emulator.counters.reset()
        await core.mkdir(*FILES, "src")
        await copy_like(core, FILES + ("src",), tree, attributes=False)
        await core.flush_and_wait()
        size = (await core.fs.getattr(await core.ino(*FILES, "src", "big.bin"))).size
        return app_id, status, size, dict(core.emulator.counters.requests), await core.server_files(app_id)

    app_id, status, size, counters, listed = run(account, tmp_path, scenario, UploadConfig())
    assert status == "Running" and size == 36 * MiB  # shown at once in this mount, with its size
    assert counters["PUT v1pre3/files/{id}/parts/{n}"] == 36 // 8 + 1  # 5 parts of 8 MiB (the last 4 MiB)
    assert counters["POST v1pre3/files/{id}"] == 1  # one multipart upload marked complete
    assert counters["POST v1pre3/appresults/{id}/files"] == 4  # 3 small + the multipart start
    assert {p.removeprefix("src/") for p in listed} == set(tree)
    for rel in ("notes.txt", "nested/deeper/tiny.vcf", "mid.bin"):
        assert listed[f"src/{rel}"]["ETag"] == hashlib.md5(tree[rel]).hexdigest()
    parts = [big[i : i + 8 * MiB] for i in range(0, len(big), 8 * MiB)]
    assert listed["src/big.bin"]["ETag"] == hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"
    del big, parts

    async def fresh(core: Core):  # the emulator persisted it: a new one on the folder, a fresh core
        return {rel: hashlib.sha256(await core.read_all(*FILES, "src", *rel.split("/"))).hexdigest() for rel in tree}

    assert run_core_on_mock_clock(account, fresh) == digests(tree)
    assert not leftover_parts(account)


def test_out_of_order_writes_spill_and_upload_correctly(account, tmp_path):
    data = os.urandom(3 * MiB + 12345)
    chunks = [(off, data[off : off + 256 * KiB]) for off in range(0, len(data), 256 * KiB)]

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "shuffled.bin")
        for off, chunk in chunks[1:] + chunks[:1]:  # the first chunk last: a hole, then filled
            await core.fs.write(opened.fh, off, chunk)
        await core.fs.fsync(opened.fh)  # fsync commits too
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        return await core.read_all(*FILES, "shuffled.bin"), (await core.server_files(app_id))["shuffled.bin"]["Size"]

    back, size = run(account, tmp_path, scenario)
    assert back == data and size == len(data)
    assert stored(account, "shuffled.bin") == data


def test_zero_byte_files_are_refused_on_close(account, tmp_path):
    """touch (create, close with nothing written) is EINVAL with the reason in .error, and the
    name goes; a shell redirect (open, dup2, close of the first descriptor while still empty,
    then the write through the other and its close) uploads what was written."""

    async def scenario(core: Core):
        await new_appresult(core)
        files = await core.ino(*FILES)
        with pytest.raises(WriteFailure) as touched:
            await core.write_file(b"", *FILES, "empty")
        error = await text(core, *FILES, ".error")
        names = await core.visible(*FILES)
        opened, _ = await core.fs.create(files, "greeting.txt")
        with pytest.raises(WriteFailure) as early:  # the first close, before anything is written
            await core.fs.flush(opened.fh)
        await core.fs.write(opened.fh, 0, b"hello\n")
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        return errno_for(touched.value), error, names, errno_for(early.value), await core.read_all(*FILES, "greeting.txt")

    touched, error, names, early, greeting = run(account, tmp_path, scenario)
    assert touched == errno.EINVAL and "zero-byte" in error and "empty" not in names
    assert early == errno.EINVAL  # only the writer hears of it (a shell ignores that close)
    assert greeting == b"hello\n"


def test_new_project_and_app_result_show_up_and_reuse_existing_names(account, tmp_path):
    async def scenario(core: Core):
        await core.mkdir("Projects", "Fresh Project: 1")
        projects = await core.visible("Projects")
        names = [p["Name"] for p in (await core.api("v1pre3/users/current/projects"))["Response"]["Items"]]
        async with httpx_client(core) as c:  # BaseSpace returns the existing project for a known name
            again = (await c.post("v1pre3/projects", json={"Name": "Fresh Project: 1"})).json()["Response"]
        project_id = (await text(core, "Projects", "Fresh Project: 1", ".id")).strip()
        await core.mkdir("Projects", "Fresh Project: 1", "AppResults", "Out")
        session = json.loads(await core.read_all("Projects", "Fresh Project: 1", "AppResults", "Out", ".json"))["Response"]["AppSession"]
        sessions = await core.visible("Projects", "Fresh Project: 1", "AppSessions")
        return projects, names, again["Id"], project_id, session, sessions

    projects, names, again, project_id, session, sessions = run(account, tmp_path, scenario)
    assert "Fresh Project: 1" in projects and names.count("Fresh Project: 1") == 1
    assert again == project_id
    assert session["Status"] == "Running" and session["Name"].startswith("BaseSpaceCLI - ")
    assert any(n.startswith("BaseSpaceCLI - ") for n in sessions)


def test_everything_else_stays_read_only(account, tmp_path):
    async def scenario(core: Core):
        sample_files = ("Projects", "Existing", "Samples", "S1", "Files")
        done_files = ("Projects", "Existing", "AppResults", "Done", "Files")

        async def code(call, *args) -> int:
            with pytest.raises(Exception) as raised:
                await call(*args)
            return errno_for(raised.value)

        return [
            await code(core.fs.mkdir, await core.ino("Runs"), "NewRun"),
            await code(core.fs.mkdir, await core.ino("Projects", "Existing", "Samples"), "New"),
            await code(core.fs.create, await core.ino(*sample_files), "x"),
            await code(core.fs.open, await core.ino(*sample_files, "r1.fastq"), os.O_WRONLY | os.O_APPEND),
            await code(core.fs.open, await core.ino("README"), os.O_WRONLY | os.O_TRUNC),
            await code(core.fs.rename, await core.ino("Projects"), "Existing", await core.ino("Projects"), "Renamed"),
            # a Complete app result is read-only: its Files/ refuses new files and deletes
            await code(core.fs.create, await core.ino(*done_files), "new.txt"),
        ], await code(core.fs.unlink, await core.ino(*done_files), "old.txt")

    codes, unlinked = run(account, tmp_path, scenario)
    assert codes == [errno.EROFS] * 7
    assert unlinked in (errno.EPERM, errno.EROFS)  # files in BaseSpace are never deleted


# -- commands: trash, restore, properties, app sessions (from test_write_commands) -------------------------


@pytest.fixture
def commands_account(tmp_path) -> Path:
    root = tmp_path / "account"
    write_file(root / "Projects" / "Keep" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")
    write_file(root / "Projects" / "Keep" / "Samples" / "S2" / "Files" / "r2.fastq", b"@q\nTTTT\n+\nIIII\n")
    write_file(root / "Projects" / "Doomed" / "Samples" / "D1" / "Files" / "d.fastq", b"@d\nGGGG\n+\nIIII\n")
    write_entity(root / "Projects" / "Doomed", Description="to be trashed")
    write_file(root / "Runs" / "Run1" / "Files" / "RunInfo.xml", b"<RunInfo/>\n")
    return root


def api_once(emulator, path: str, **params) -> dict:
    """A GET to an emulator_app outside any core run (e.g. one started afresh on the folder)."""

    async def get():
        headers = {"x-access-token": emulator[0].token}
        async with httpx.AsyncClient(transport=EmulatorTransport(emulator[1]), base_url=BASE_URL, headers=headers) as c:
            response = await c.get(path, params=params)
            response.raise_for_status()
            return response.json()

    return trio.run(get, clock=trio.testing.MockClock(autojump_threshold=0))


def test_trash_and_restore_round_trip(commands_account, tmp_path):
    async def scenario(core: Core):
        doomed_id = (await text(core, "Projects", "Doomed", ".id")).strip()
        await core.fs.rmdir(await core.ino("Projects"), "Doomed")  # rmdir of an entity = move to trash
        gone = await core.visible("Projects")
        item_type = await text(core, ".Trash", "Doomed", "TrashItemType")
        listed = [p["Id"] for p in (await core.api("v1pre3/users/current/projects"))["Response"]["Items"]]
        await core.command("restore-from-trash\n", ".Trash", "Doomed")  # what basemount-py restore sends
        back = (await core.visible("Projects"), await core.visible(".Trash"), (await text(core, "Projects", "Doomed", ".id")).strip())
        fastq = await core.read_all("Projects", "Doomed", "Samples", "D1", "Files", "d.fastq")
        await core.command("move-to-trash\n", "Projects", "Keep", "Samples", "S2")  # basemount-py trash, on a sample
        samples = await core.visible("Projects", "Keep", "Samples")
        sample_type = await text(core, ".Trash", "S2", "TrashItemType")
        return doomed_id, gone, item_type, listed, back, fastq, samples, sample_type

    doomed_id, gone, item_type, listed, back, fastq, samples, sample_type = run(commands_account, tmp_path, scenario)
    assert "Doomed" not in gone
    assert item_type == "DeletedProject (FILEDATA+METADATA)\n"
    assert listed.count(doomed_id) == 0
    assert back == (["Doomed", "Keep"], [], doomed_id)  # the same entity back
    assert fastq == b"@d\nGGGG\n+\nIIII\n"
    assert samples == ["S1"] and sample_type.startswith("DeletedSample")
    restarted = emulator_app(commands_account)  # the trash survives a restart
    assert [s["Name"] for s in api_once(restarted, "v2/trash")["Items"]] == ["S2"]


def test_trash_errors_and_the_rm_rf_guard(commands_account, tmp_path):
    async def scenario(core: Core):
        with pytest.raises(WriteFailure) as not_here:
            await core.command("move-to-trash\n", "Projects")
        with pytest.raises(WriteFailure) as not_trash:
            await core.command("restore-from-trash\n", "Projects", "Keep")
        # rm -rf walks into the project first: the refused deletes block the final rmdir
        projects, keep = await core.ino("Projects"), await core.ino("Projects", "Keep")
        with pytest.raises(WriteFailure) as hidden:
            await core.fs.unlink(keep, ".id")
        with pytest.raises(WriteFailure) as blocked:
            await core.fs.rmdir(projects, "Keep")
        errors = await text(core, "Projects", ".error") + await text(core, "Projects", "Keep", ".error")
        return not_here.value.message, not_trash.value.message, errno_for(hidden.value), errno_for(blocked.value), await core.visible("Projects"), errors

    not_here, not_trash, hidden, blocked, projects, errors = run(commands_account, tmp_path, scenario)
    assert "not valid in this folder" in not_here
    assert "restore-from-trash" in not_trash
    assert hidden == errno.EPERM and blocked == errno.EPERM
    assert "Keep" in projects and "blocked" in errors


def test_properties_written_through_the_mount_are_visible_in_the_api(commands_account, tmp_path):
    async def scenario(core: Core):
        result = ("Projects", "Keep", "AppResults", "Analysis")
        props = result + ("Properties",)
        samples = ("Projects", "Keep", "Samples")
        await core.mkdir(*result)
        rid = (await text(core, *result, ".id")).strip()
        s1, s2 = [(await text(core, *samples, s, ".id")).strip() for s in ("S1", "S2")]
        await core.write_file(b"first value\n", *props, "Input.note")
        opened = await core.fs.open(await core.ino(*props, "Input.note"), os.O_WRONLY | os.O_TRUNC)  # echo 'second value' >
        await core.fs.write(opened.fh, 0, b"second value\n")
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await core.flush_and_wait()  # property values go through the upload spool too
        props_ino = await core.ino(*props)
        await core.fs.symlink(props_ino, "Input.sample", f"{MOUNTPOINT}/Projects/Keep/Samples/S1")
        await core.fs.mkdir(props_ino, "Input.samples")
        array = await core.ino(*props, "Input.samples")
        await core.fs.symlink(array, "0", "../../../../Samples/S1")
        await core.fs.symlink(array, "1", f"{MOUNTPOINT}/Projects/Keep/Samples/.id.{s2}")
        items = {p["Name"]: p for p in (await core.api(f"v1pre3/appresults/{rid}/properties"))["Response"]["Items"]}
        through_mount = (
            await text(core, *props, "Input.note"),
            await core.fs.readlink(await core.ino(*props, "Input.sample")),
            await core.visible(*props, "Input.samples"),
        )
        # Past the 20 items a properties listing shows, each new link still keeps every earlier item
        # (posting a property replaces its items, so the mount must send all of them).
        for n in range(2, 24):
            await core.fs.symlink(await core.ino(*props, "Input.samples"), str(n), f"../../../../Samples/S{1 + n % 2}")
        full = {p["Name"]: p for p in (await core.api(f"v1pre3/appresults/{rid}/properties", propertyitemslimit=100))["Response"]["Items"]}
        array_names = await core.visible(*props, "Input.samples")
        last = await linked_id(core, *props, "Input.samples", "23")
        # rm / rmdir in Properties/ deletes the property (string, reference, array), nothing else
        await core.fs.unlink(props_ino, "Input.note")
        await core.fs.unlink(props_ino, "Input.sample")
        await core.fs.rmdir(props_ino, "Input.samples")
        left = {p["Name"] for p in (await core.api(f"v1pre3/appresults/{rid}/properties"))["Response"]["Items"]}
        shown = set(await core.names(*props))
        with pytest.raises(WriteFailure) as bad_link:  # a link to something that is not an entity folder
            await core.fs.symlink(props_ino, "Input.bad", "/etc")
        bad_error = await text(core, *props, ".error")
        with pytest.raises(WriteFailure) as no_namespace:  # property names must be namespaced
            await core.write_file(b"x", *props, "nonamespace")
        return s1, s2, items, through_mount, full, array_names, last, left, shown, errno_for(bad_link.value), bad_error, errno_for(no_namespace.value)

    s1, s2, items, through_mount, full, array_names, last, left, shown, bad_link, bad_error, no_namespace = run(commands_account, tmp_path, scenario)
    assert items["Input.note"]["Type"] == "string" and items["Input.note"]["Content"] == "second value"
    assert items["Input.sample"]["Type"] == "sample" and items["Input.sample"]["Content"]["Id"] == s1
    assert items["Input.samples"]["Type"] == "sample[]"
    assert [i["Id"] for i in items["Input.samples"]["Items"]] == [s1, s2]
    note, sample_link, array = through_mount
    assert note == "second value" and sample_link.endswith(f"Samples/.id.{s1}") and array == ["0", "1"]
    assert [i["Id"] for i in full["Input.samples"]["Items"]] == [s1, s2] * 12
    assert sorted(array_names, key=int) == [str(n) for n in range(24)] and last == s2
    assert not left & {"Input.note", "Input.sample", "Input.samples"}
    assert not {"Input.note", "Input.sample", "Input.samples"} & shown
    assert bad_link == errno.EINVAL and "not a project, sample" in bad_error
    assert no_namespace == errno.EINVAL


def test_commands_success_and_error_paths(commands_account, tmp_path):
    async def scenario(core: Core):
        result = ("Projects", "Keep", "AppResults", "Run A")
        await core.mkdir(*result)
        session_id = await linked_id(core, *result, "ParentAppSession")

        async def listed(*folder: str) -> list[str]:  # what basemount-cmd --path FOLDER prints
            listing = (await text(core, *folder, ".commands")).split("Commands valid here:", 1)[1]
            return [line.split()[0] for line in listing.strip("\n").splitlines()]

        async def refused(command: str, *folder: str) -> str:
            with pytest.raises(WriteFailure) as raised:
                await core.command(command + "\n", *folder)
            assert errno_for(raised.value) == errno.EINVAL
            return raised.value.message

        in_result, at_top = await listed(*result), await listed()
        unknown = await refused("explode", *result)
        no_name = await refused("rename-appsession", *result)
        not_here = await refused("mark-as-complete", "Runs")
        await core.command("rename-appsession My analysis\n", *result)
        renamed = (await core.api(f"v1pre3/appsessions/{session_id}"))["Response"]["Name"]
        sessions = await core.visible("Projects", "Keep", "AppSessions")
        await core.write_file(b"result\n", *result, "Files", "out.txt")
        await core.command("mark-as-complete\n", *result)
        status = (await core.api(f"v1pre3/appsessions/{session_id}"))["Response"]["Status"]
        shown = await text(core, *result, ".status")
        # complete = read-only; marking again is an error; the command is no longer listed
        with pytest.raises(WriteFailure):
            await core.write_file(b"late\n", *result, "Files", "late.txt")
        after = await listed(*result)
        again = await refused("mark-as-complete", *result)
        error = await text(core, *result, ".error")
        await core.command("refresh\n", "Projects")
        await core.command("move-to-trash\n", *result)
        results = await core.visible("Projects", "Keep", "AppResults")
        with pytest.raises(WriteFailure):
            await core.command("restore-from-trash\n", "Projects", "Keep", "Samples", "S1")
        await core.command("unmount\n")
        return (in_result, at_top, unknown, no_name, not_here, renamed, sessions, status, shown, after, again, error, results, core.kernel.terminated)

    (in_result, at_top, unknown, no_name, not_here, renamed, sessions, status, shown, after, again, error, results, terminated) = run(
        commands_account, tmp_path, scenario
    )
    assert in_result == ["refresh", "move-to-trash", "mark-as-complete", "rename-appsession"]
    assert at_top == ["refresh", "unmount", "flush", "retry"]
    assert "unknown command" in unknown and "needs the new name" in no_name and "not valid in this folder" in not_here
    assert renamed == "My analysis" and "My analysis" in sessions
    assert status == "Complete" and shown == "Complete\n"
    assert "mark-as-complete" not in after
    assert "not valid in this folder" in again and "not valid in this folder" in error
    assert "Run A" not in results
    assert terminated  # unmount from the top folder ends the session


def test_an_app_session_goes_to_the_trash_with_its_outputs_and_comes_back(tmp_path):
    root = tmp_path / "account"
    for name, data in (("Align", b"bam"), ("QC", b"qc\n")):
        write_file(root / "Projects" / "Keep" / "AppResults" / name / "Files" / f"{name}.out", data)
        write_entity(root / "Projects" / "Keep" / "AppResults" / name, AppSession={"Name": "Pipeline"})
    write_file(root / "Projects" / "Keep" / "Samples" / "S1" / "Files" / "r1.fastq", b"@r\nACGT\n+\nIIII\n")

    async def scenario(core: Core):
        keep = ("Projects", "Keep")
        session_id = (await text(core, *keep, "AppSessions", "Pipeline", ".id")).strip()
        await core.fs.rmdir(await core.ino(*keep, "AppSessions"), "Pipeline")  # = move-to-trash in the session
        gone = (await core.visible(*keep, "AppSessions"), await core.visible(*keep, "AppResults"), await core.visible(*keep, "Samples"))
        item_type = await text(core, ".Trash", "Pipeline", "TrashItemType")
        trash = [t["Name"] for t in (await core.api("v2/trash"))["Items"]]
        await core.command("restore-from-trash\n", ".Trash", "Pipeline")
        back = (await core.visible(*keep, "AppResults"), await core.visible(*keep, "AppSessions"))
        same = (await text(core, *keep, "AppSessions", "Pipeline", ".id")).strip() == session_id
        qc = await core.read_all(*keep, "AppResults", "QC", "Files", "QC.out")
        return gone, item_type, trash, back, same, qc, (await core.api("v2/trash"))["Items"]

    gone, item_type, trash, back, same, qc, trash_after = run(root, tmp_path, scenario)
    assert gone == ([], [], ["S1"])  # the samples are not outputs of the session: untouched
    assert item_type.startswith("DeletedAppSession") and trash == ["Pipeline"]
    assert back == (["Align", "QC"], ["Pipeline"]) and same
    assert qc == b"qc\n" and trash_after == []


# -- shutdown: at once, nothing written lost ---------------------------------------------------------


def test_shutdown_fails_the_operations_under_way_at_once_and_keeps_what_was_written(account, tmp_path):
    """``Filesystem.shutdown`` (the daemon's SIGTERM) while the server hangs: a read under way, which
    would wait out request timeouts until its retry deadline (290 s with --op-timeout 300), fails
    with EIO at the same virtual instant, and so does a later operation; a file written before
    stays in the spool and lands at the next mount. (Through a real mount: test_mount_lifecycle.)"""
    emulator = emulator_app(account)
    r1 = ("Projects", "Existing", "Samples", "S1", "Files", "r1.fastq")

    async def first(core: Core):
        await new_appresult(core)
        await core.write_file(b"written before the shutdown\n", *FILES, "kept.txt")
        fh = (await core.fs.open(await core.ino(*r1), os.O_RDONLY)).fh
        core.knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")  # the server hangs
        ended: dict[str, object] = {}

        async def read() -> None:
            try:
                await core.fs.read(fh, 0, 4096)
            except FsError as exc:
                ended["error"] = exc
            ended["at"] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(30)  # the read is waiting on the hung server
            shutdown_at = trio.current_time()
            cancelled = core.fs.shutdown()
        later, later_took = await core.timed(core.ino, "Runs", "Run1", "Files")
        core.knobs(stall_rate=0.0)  # lets the first run's shielded requests end
        return cancelled, ended, shutdown_at, later, later_took

    cancelled, ended, shutdown_at, later, later_took = run(account, tmp_path, first, op_timeout=300, emulator=emulator)
    assert cancelled == 1
    assert isinstance(ended.get("error"), ShuttingDown) and errno_for(ended["error"]) == errno.EIO, ended
    assert ended["at"] == shutdown_at  # at once, not at the retry deadline
    assert isinstance(later, ShuttingDown) and later_took == 0

    async def next_mount(core: Core):
        await core.flush_and_wait()
        return [line[0] for line in core.status()]

    assert run(account, tmp_path, next_mount, emulator=emulator) == ["committed"]
    assert stored(account, "kept.txt") == b"written before the shutdown\n"


def test_an_abort_that_failed_in_an_outage_is_retried_after_it(account, tmp_path):
    """Parts of a large file are sent while it is written; then the API goes down and the file is
    removed: the abort of its multipart upload fails. Once the API answers again (the next upload
    succeeds) the abort is tried again, so no multipart upload is left on the server. Before
    10b3277 the failed abort was only logged and the parts stayed on the server for good."""
    abort = "POST v1pre3/files/{id}"

    async def scenario(core: Core):
        await new_appresult(core)
        files = await core.ino(*FILES)
        await written_while_parts_go(core, "dropped.bin", os.urandom(3 * MiB))
        parts_before_outage = leftover_parts(account)
        await core.names(*FILES)  # listed before the outage (the unlink looks the name up)
        core.knobs(fail_next=OUTAGE)
        core.emulator.counters.reset()
        await core.fs.unlink(files, "dropped.bin")  # its multipart upload is to be aborted
        await until(lambda: core.emulator.counters.requests.get(abort, 0) >= 1)
        await trio.sleep(60)  # virtual: past the abort's own bound (30 s); it has failed
        parts_after_failed_abort = leftover_parts(account)
        core.knobs(fail_next=[])  # the API is back
        await core.write_file(b"after the outage\n", *FILES, "next.txt")
        await core.flush_and_wait()
        return parts_before_outage, parts_after_failed_abort, core.emulator.counters.faults

    before, after_failed, faults = run(account, tmp_path, scenario, upload(write_back=HOLD), metadata_ttl=3600)
    assert len(before) == 1 and after_failed == before  # the failed abort left the parts there
    assert faults.get("500", 0) >= 1
    assert stored(account, "next.txt") == b"after the outage\n"
    assert not leftover_parts(account)  # the abort was tried again once the API answered


@pytest.mark.parametrize("ending", ["signal", "unmount-command"])
def test_a_shutdown_during_a_hung_commit_ends_at_once_and_the_next_mount_commits_each_file_once(account, tmp_path, ending):
    """SIGTERM (``Filesystem.shutdown``, then the WriteManager ends as the daemon's main does), or
    ``unmount`` written to ``.commands``, while the server hangs on the commit of a small file (its one POST) and of a multipart one
    (``complete``, every part sent): the daemon is done at once, not when those shielded requests
    reach their retry deadline (290 s with --op-timeout 300; before the fix the exit waited that
    long). Both files stay in the spool and the next mount commits each of them once."""
    emulator = emulator_app(account)
    small, big = b"small result\n", os.urandom(2 * MiB + 5)  # big: 5 parts of 512 KiB
    commit_small, commit_big = "POST v1pre3/appresults/{id}/files", "POST v1pre3/files/{id}"
    marks: dict[str, object] = {}

    async def first(core: Core):
        marks["app_id"] = await new_appresult(core)
        await core.names(*FILES)
        await core.write_file(small, *FILES, "small.txt")
        await core.write_file(big, *FILES, "big.bin")
        await until(lambda: core.emulator.counters.requests.get("PUT v1pre3/files/{id}/parts/{n}", 0) >= 5, poll=0.05)
        core.emulator.counters.reset()
        core.knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")  # the server hangs
        await core.command("flush\n")
        await until(lambda: core.emulator.counters.requests.get(commit_small) and core.emulator.counters.requests.get(commit_big), poll=0.05)
        await trio.sleep(5)  # both commits are waiting on the hung server
        marks["states"] = sorted(s[0] for s in core.status())
        marks["shutdown_at"] = trio.current_time()
        if ending == "signal":
            core.fs.shutdown()  # what the daemon's signal handler does
        else:
            await core.command("unmount\n")
            assert core.kernel.terminated
        return core

    core = run(account, tmp_path, first, upload(write_back=HOLD), op_timeout=300, emulator=emulator)
    assert marks["states"] == ["uploading", "uploading"]
    assert core.closed_at is not None and core.closed_at - marks["shutdown_at"] <= 1.0, core.closed_at - marks["shutdown_at"]
    emulator[0].knobs.merge({"stall_rate": 0.0})

    async def next_mount(core: Core):
        await core.flush_and_wait()
        return [s[0] for s in core.status()], await core.server_files(marks["app_id"])

    states, listed = run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator)
    assert states == ["committed", "committed"]
    assert {p: f["Size"] for p, f in listed.items()} == {"small.txt": len(small), "big.bin": len(big)}
    assert stored(account, "small.txt") == small and stored(account, "big.bin") == big
    assert not leftover_parts(account)


def test_an_abort_owed_when_the_daemon_ends_is_made_by_the_next_mount(account, tmp_path):
    """A large file whose parts were sent while it was written is removed during an outage: the
    abort of its multipart upload fails, and the daemon ends before the API is back. The next
    mount of the account makes that abort (the owed aborts are kept in the spool), so no parts are
    left on the server. Before: the owed abort lived in memory only, and the parts stayed for good."""
    emulator = emulator_app(account)

    async def first(core: Core):
        await new_appresult(core)
        files = await core.ino(*FILES)
        await core.names(*FILES)
        await written_while_parts_go(core, "dropped.bin", os.urandom(3 * MiB))
        core.knobs(fail_next=OUTAGE)
        core.emulator.counters.reset()
        await core.fs.unlink(files, "dropped.bin")
        await until(lambda: core.emulator.counters.requests.get("POST v1pre3/files/{id}", 0) >= 1)
        await trio.sleep(60)  # past the abort's own bound: it has failed
        core.fs.shutdown()
        return leftover_parts(account)

    assert len(run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)) == 1  # the failed abort left them
    emulator[0].knobs.merge({"fail_next": []})

    async def next_mount(core: Core):
        await until(lambda: not leftover_parts(account), bound=600)
        return [s for s in core.status()]

    assert run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator) == []
    assert not leftover_parts(account)
    assert not list((tmp_path / "cache" / "spool").rglob("*.owed"))  # nothing owed any more


def test_a_rename_while_the_abort_of_the_old_name_hangs_uploads_under_the_new_name(account, tmp_path):
    """Parts of a large file went while it was written, under its first name; it is renamed, and
    the abort of that first multipart upload hangs on the server. The upload that follows must
    start a new multipart upload under the new name. Before the fix it reused the first one (the
    entry kept its file id until the abort ended), so the file was committed under its OLD name."""
    data = os.urandom(2 * MiB + 9)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)
        await core.names(*FILES)
        await core.write_file(data, *FILES, "first.bin")
        await until(lambda: core.emulator.counters.requests.get("PUT v1pre3/files/{id}/parts/{n}", 0) >= 5, poll=0.05)
        core.emulator.counters.reset()
        core.knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")
        await core.fs.rename(files, "first.bin", files, "second.bin")
        await until(lambda: core.emulator.counters.requests.get("POST v1pre3/files/{id}", 0) >= 1, poll=0.05)  # the abort, held
        core.knobs(stall_rate=0.0)  # the held abort stays held; what follows is answered
        await core.command("flush\n")
        await until(lambda: not [s for s in core.status() if s[0] in ("pending", "uploading")], poll=0.05)
        listed = {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}
        core.knobs(stall_seconds=0)  # releases the held abort
        await core.flush_and_wait()
        await until(lambda: not leftover_parts(account), bound=600)  # the abort is retried after its timeout
        return listed

    # one file uploads at a time: the stream of the old name still counts when the rename
    # reschedules the file, so no new stream replaces the entry's file id
    listed = run(account, tmp_path, scenario, upload(write_back=HOLD, parallel_files=1), metadata_ttl=3600)
    assert listed == {"second.bin": len(data)}
    assert stored(account, "second.bin") == data
    assert not leftover_parts(account)


class AnswerLost(EmulatorTransport):
    """The server takes the first request that ``matches``, and its answer is lost (the connection
    drops after the server acted); ``then``: knobs set at that moment (an outage, say)."""

    def __init__(self, emulator, matches, then: dict | None = None):
        super().__init__(emulator[1])
        self.emulator, self.matches, self.then, self.armed = emulator[0], matches, then, True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if self.armed and self.matches(request):
            self.armed = False
            if self.then:
                self.emulator.knobs.merge(self.then)
            raise httpx.ReadError("connection lost before the answer", request=request)
        return response


def _commit_request(request: httpx.Request) -> bool:
    """The request that commits a file: a small file's POST, a multipart upload's complete."""
    params = request.url.params
    small = request.url.path.endswith("/files") and "multipart" not in params
    return request.method == "POST" and (small or params.get("uploadstatus") == "complete")


@pytest.mark.parametrize("size", [11, 2 * MiB + 3], ids=["small", "multipart"])
def test_a_commit_whose_answer_was_lost_is_committed_once(account, tmp_path, size):
    """The server commits the file but the answer is lost; the client sends the request again and
    the server refuses it (409: the file exists; 404: that multipart upload is complete). The
    server holds our bytes at our path, so that is our commit. Before: the file was *failed for
    good* with that refusal, although BaseSpace had it."""
    data = os.urandom(size)
    emulator = emulator_app(account)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(data, *FILES, "lost.bin")
        await core.flush_and_wait()
        return [s[0] for s in core.status()], await core.server_files(app_id)

    transport = AnswerLost(emulator, _commit_request)
    states, listed = run(account, tmp_path, scenario, upload(write_back=HOLD), emulator=emulator, transport=transport)
    assert not transport.armed  # an answer was lost
    assert states == ["committed"]
    assert list(listed) == ["lost.bin"] and stored(account, "lost.bin") == data
    assert not leftover_parts(account)


def test_a_rename_after_a_commit_whose_answer_was_lost_never_makes_a_second_file(account, tmp_path):
    """rsync's temp file is committed under its temp name, the answer is lost and the API goes
    down at that moment; then rsync renames it (or a shell appends to it, or rm removes it). The rename cannot know whether the first name
    is on BaseSpace already: it fails with EIO (the reason in .error) rather than let a second
    file appear under the new name; once the API answers, the server says the file landed: it
    is committed under its first name, and a rename is EROFS. Before: the rename succeeded and the
    file ended on BaseSpace twice, under both names."""
    data = b"rsync temp file bytes\n"
    emulator = emulator_app(account)
    temp = ".result.txt.Xy12Zq"

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)
        await core.names(*FILES)
        await core.write_file(data, *FILES, temp)
        await core.command("flush\n")
        await until(lambda: [s[0] for s in core.status() if len(s) > 3 and "attempt 1" in s[3]] == ["pending"])
        during, _ = await core.timed(core.fs.rename, files, temp, files, "result.txt")
        reopened, _ = await core.timed(core.fs.open, await core.ino(*FILES, temp), os.O_WRONLY | os.O_APPEND)  # echo more >> it
        removed, _ = await core.timed(core.fs.unlink, files, temp)  # rm: it could not be undone on BaseSpace
        error = await text(core, *FILES, ".error")
        core.knobs(fail_next=[])
        after, _ = await core.timed(core.fs.rename, files, temp, files, "result.txt")
        await core.flush_and_wait()
        return during, reopened, removed, error, after, {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}

    transport = AnswerLost(emulator, _commit_request, then={"fail_next": OUTAGE})
    during, reopened, removed, error, after, listed = run(account, tmp_path, scenario, upload(write_back=HOLD), emulator=emulator, transport=transport, metadata_ttl=3600)
    assert isinstance(during, FsError) and errno_for(during) == errno.EIO, during
    assert isinstance(reopened, FsError) and errno_for(reopened) == errno.EIO, reopened  # nor rewritten
    assert isinstance(removed, FsError) and errno_for(removed) == errno.EIO, removed  # nor removed
    assert "may have reached BaseSpace" in error
    assert isinstance(after, FsError) and errno_for(after) == errno.EROFS, after
    assert listed == {temp: len(data)}  # one file, never a second under the new name
    assert stored(account, temp) == data


def test_a_file_failed_for_good_and_written_again_gets_every_attempt_again(account, tmp_path):
    """A file that used up its attempts in an outage (failed for good: kept, readable) is opened
    again and appended to (``echo more >> f``) once the API answers (during the outage that open
    is EIO: its commit got no answer, so it may be on BaseSpace already). Its next upload gets the
    full number of attempts: when the API fails again it waits and retries, and it lands once the
    API is back, with every byte. Before: the attempts it had used counted, so its first new
    failure made it failed for good."""

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.names(*FILES)
        core.knobs(fail_next=OUTAGE)
        await core.write_file(b"first line\n", *FILES, "log.txt")
        await core.command("flush\n")
        await until(lambda: [s[0] for s in core.status()] == ["failed"])
        during, _ = await core.timed(core.fs.open, await core.ino(*FILES, "log.txt"), os.O_WRONLY | os.O_APPEND)
        core.knobs(fail_next=[])
        opened = await core.fs.open(await core.ino(*FILES, "log.txt"), os.O_WRONLY | os.O_APPEND)
        await core.fs.write(opened.fh, len(b"first line\n"), b"second line\n")
        core.knobs(fail_next=OUTAGE)
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await core.command("flush\n")
        await until(lambda: [s for s in core.status() if len(s) > 3 and "attempt 1:" in s[3]] != [])
        after_a_new_failure = [s[0] for s in core.status()]
        core.knobs(fail_next=[])
        await core.flush_and_wait()
        return errno_for(during), after_a_new_failure, [s[0] for s in core.status()], list(await core.server_files(app_id))

    during, after_a_new_failure, states, listed = run(account, tmp_path, scenario, upload(write_back=HOLD, attempts=2), metadata_ttl=3600)
    assert during == errno.EIO
    assert after_a_new_failure == ["pending"]
    assert states == ["committed"] and listed == ["log.txt"]
    assert stored(account, "log.txt") == b"first line\nsecond line\n"


def test_unmount_waiting_for_uploads_never_says_all_committed_when_one_failed(tmp_path, monkeypatch):
    """``basemount-py unmount`` waits for the uploads; one of them then fails for good (kept in the
    spool). Its last line must say so, not "all uploads committed" (before: it said that, then
    listed the failure below it)."""
    import io

    from basemount_py import pending

    status = tmp_path / ".uploads"
    status.write_text("summary: x\nuploading\t5\tP/x.txt\tsent 0 of 5 bytes\nuploading\t6\tP/y.txt\tsent 0 of 6 bytes\n")
    (tmp_path / ".commands").write_text("")

    def upload_ends(seconds: float) -> None:  # what the daemon does meanwhile
        status.write_text("summary: x\nfailed\t5\tP/x.txt\ta different file 'x.txt' is already there\ncommitted\t6\tP/y.txt\n")

    monkeypatch.setattr(pending.time, "sleep", upload_ends)
    out = io.StringIO()
    pending.wait_for_uploads(str(tmp_path), out=out)
    text = out.getvalue()
    assert "all uploads committed" not in text
    assert "1 upload(s) failed for good" in text and "failed upload kept in the spool: /P/x.txt" in text


@pytest.mark.parametrize("down", ["refused", "503", "429"])
def test_a_file_whose_commit_never_reached_the_server_can_still_be_appended_to_and_renamed(account, tmp_path, down):
    """The network is down (every connection refused), or the API answers every request with 503
    (unavailable) or 429 (too many requests), which mean it did not handle them: a file's upload
    attempt fails without its commit request ever reaching the server, so the file cannot be on
    BaseSpace. ``echo y >> f``
    and a rename then work at once (no EIO, unlike after a commit whose answer was lost), and once
    the network is back the file lands under its new name with every byte."""

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        files = await core.ino(*FILES)
        await core.names(*FILES)
        await core.write_file(b"x\n", *FILES, "f.txt")
        if down == "refused":
            core.transport.up = False
        else:
            core.knobs(fail_next=[{"kind": down, "count": 1_000_000, "scope": "api"}], retry_after=1)
        await core.command("flush\n")
        await until(lambda: [s[0] for s in core.status() if len(s) > 3 and "attempt 1" in s[3]] == ["pending"])
        opened = await core.fs.open(await core.ino(*FILES, "f.txt"), os.O_WRONLY | os.O_APPEND)
        await core.fs.write(opened.fh, 2, b"y\n")
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await core.fs.rename(files, "f.txt", files, "g.txt")
        core.transport.up = True
        core.knobs(fail_next=[])
        await core.flush_and_wait()
        return {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}

    assert run(account, tmp_path, scenario, upload(write_back=HOLD), metadata_ttl=3600) == {"g.txt": 4}
    assert stored(account, "g.txt") == b"x\ny\n"


def test_a_file_whose_write_the_shutdown_refused_is_never_uploaded_partial(account, tmp_path):
    """SIGTERM while ``cp`` is writing a file: its next write fails (EIO) and cp closes the file.
    The file is incomplete, so it must not reach BaseSpace: it is kept as failed (readable, in
    status, with the reason), at this mount and the next. Before: the close made it pending and
    the next mount uploaded the partial file under its real name."""
    emulator = emulator_app(account)
    head = os.urandom(300 * KiB)

    async def first(core: Core):
        await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "copy.bin")
        await core.fs.write(opened.fh, 0, head)
        core.fs.shutdown()  # SIGTERM
        refused, _ = await core.timed(core.fs.write, opened.fh, len(head), os.urandom(100 * KiB))
        await core.fs.flush(opened.fh)  # cp closes the file after the error
        await core.fs.release(opened.fh)
        return errno_for(refused) if isinstance(refused, FsError) else refused, core.status()

    code, states = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)
    assert code == errno.EIO
    assert [s[0] for s in states] == ["failed"] and "write" in states[0][3], states

    async def next_mount(core: Core):
        await core.flush_and_wait()
        return core.status(), await core.server_files((await core.read_all(*RESULT, ".id")).decode().strip())

    states, listed = run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator)
    assert [s[0] for s in states] == ["failed"], states
    assert listed == {}  # nothing partial on the server


def test_an_rsync_temp_file_the_mount_left_unrenamed_is_kept_not_uploaded_under_its_temp_name(account, tmp_path):
    """rsync writes ``.name.XXXXXX``, closes it, then renames it; the mount stops in between (the
    daemon dies, or an unmount). The next mount keeps the temp file in the spool as failed, with
    the reason, instead of uploading it: BaseSpace would keep it under the temp name for good. A
    retry uploads it under that name all the same. Other hidden names are uploaded as before.
    Before: the next mount uploaded ``.data.bin.Xy12Zq``."""
    emulator = emulator_app(account)

    async def first(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"rsync's bytes\n", *FILES, ".data.bin.Xy12Zq")
        await core.write_file(b"a hidden file\n", *FILES, ".notes")
        return app_id  # the mount stops here, before rsync's rename

    app_id = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)

    async def next_mount(core: Core):
        await core.flush_and_wait()
        states = sorted((s[2].rsplit("/", 1)[-1], s[0], s[3] if len(s) > 3 else "") for s in core.status())
        listed = sorted(await core.server_files(app_id))
        await core.command("retry " + "/".join(FILES + (".data.bin.Xy12Zq",)) + "\n")
        await core.flush_and_wait()
        return states, listed, sorted(await core.server_files(app_id))

    states, listed, after_retry = run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator)
    assert [s[:2] for s in states] == [(".data.bin.Xy12Zq", "failed"), (".notes", "committed")]
    assert "rsync temp file" in states[0][2]
    assert listed == [".notes"]
    assert after_retry == [".data.bin.Xy12Zq", ".notes"]


@pytest.mark.parametrize("how", ["append", "rewrite"])
def test_a_file_being_rewritten_when_the_daemon_dies_is_never_uploaded_half_changed(account, tmp_path, how):
    """A file waits in the spool; it is opened again (``cat more >> f``, or ``> f`` and new bytes)
    and the daemon dies in the middle of that write (before the writer's close). Its bytes are
    half old, half new: the next mount keeps it as failed (never closed), and uploads nothing.
    Before: the open was not written to the spool, which still said *pending*, so the next mount
    uploaded the half-changed file (a rewrite: new bytes, then zeros up to the old size)."""
    emulator = emulator_app(account)
    old = os.urandom(200 * KiB)

    async def first(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(old, *FILES, "f.bin")
        flags = os.O_WRONLY | (os.O_APPEND if how == "append" else os.O_TRUNC)
        opened = await core.fs.open(await core.ino(*FILES, "f.bin"), flags)
        await core.fs.write(opened.fh, len(old) if how == "append" else 0, os.urandom(50 * KiB))
        return app_id  # the daemon dies here: no close, no release

    app_id = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)

    async def next_mount(core: Core):
        await core.flush_and_wait()
        return [s[0] for s in core.status()], await core.server_files(app_id)

    states, listed = run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator)
    assert states == ["failed"] and listed == {}


@pytest.mark.parametrize("failing", ["close", "release"])
def test_a_close_whose_spool_fsync_fails_leaves_the_file_failed_and_says_so(account, tmp_path, monkeypatch, failing):
    """close() fsyncs the file into the spool; the disk fails that fsync (EIO). The writer gets the
    errno, but a shell ignores errors from close(): so the file must not go on as if it were safe.
    It is kept as failed (not uploaded: its bytes on disk are in doubt), and .error and the status
    say why. Before: .error said nothing, the file went on as pending and was uploaded.
    [release]: close() succeeded (the bytes are safe) and only recording the last close fails:
    the file is uploaded all the same, and .error says what failed. Before: it stayed *pending*
    with no upload scheduled, for good (an unmount waited for it forever)."""
    from basemount_py.write.spool import Spool

    real_sync = Spool.sync
    calls = {"n": 0}

    def sync(self, entry):
        calls["n"] += 1
        if calls["n"] == (1 if failing == "close" else 2):
            raise OSError(errno.EIO, "Input/output error")
        real_sync(self, entry)

    monkeypatch.setattr(Spool, "sync", sync)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "result.txt")
        await core.fs.write(opened.fh, 0, b"result\n")
        closed, _ = await core.timed(core.fs.flush, opened.fh)
        await core.fs.release(opened.fh)
        error = await text(core, *FILES, ".error")
        await core.flush_and_wait()
        return closed, core.status(), error, await core.server_files(app_id)

    closed, states, error, listed = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert "result.txt" in error and "Input/output error" in error
    if failing == "release":
        assert closed is None and [s[0] for s in states] == ["committed"] and list(listed) == ["result.txt"]
        assert stored(account, "result.txt") == b"result\n"
        return
    assert isinstance(closed, FsError) and errno_for(closed) == errno.EIO
    assert [s[0] for s in states] == ["failed"] and "Input/output error" in states[0][3], states
    assert listed == {}


class PartsRefused(EmulatorTransport):
    """Connections for multipart parts are refused while ``refusing`` (an outage that hits the
    parts of an upload already started)."""

    refusing = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refusing and request.method == "PUT" and "/parts/" in request.url.path:
            await trio.lowlevel.checkpoint()
            raise httpx.ConnectError("connection refused", request=request)
        return await super().handle_async_request(request)


def test_appending_to_a_file_whose_parts_are_being_sent_stops_that_upload_and_keeps_every_byte(account, tmp_path):
    """A large file's upload is sending its parts (before its point of no return) and the network
    fails them; ``cat more >> f`` then opens it: the open stops that upload (its multipart upload
    is aborted) instead of failing with EBUSY, the bytes are appended, and once the network is
    back the file lands with every byte. Before: EBUSY until the attempt gave up (~50 s)."""
    emulator = emulator_app(account)
    transport = PartsRefused(emulator[1])
    data, more = os.urandom(2 * MiB + 5), os.urandom(70 * KiB)
    name = ".big.bin"  # a hidden name: no parts go while it is written, all of them in the attempt

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(data, *FILES, name)
        transport.refusing = True
        await core.command("flush\n")
        await until(lambda: [s[0] for s in core.status()] == ["uploading"] and core.emulator.counters.requests.get("POST v1pre3/appresults/{id}/files"), poll=0.05)
        await trio.sleep(1)  # its parts are being refused
        opened, took = await core.timed(core.fs.open, await core.ino(*FILES, name), os.O_WRONLY | os.O_APPEND)
        assert not isinstance(opened, FsError), opened
        await core.fs.write(opened.fh, len(data), more)
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        transport.refusing = False
        await core.flush_and_wait()
        await until(lambda: not leftover_parts(account), bound=600)
        return took, {p: f["Size"] for p, f in (await core.server_files(app_id)).items()}

    took, listed = run(account, tmp_path, scenario, upload(write_back=HOLD), emulator=emulator, transport=transport)
    assert took < 1.0, took
    assert listed == {name: len(data) + len(more)} and stored(account, name) == data + more
    assert not leftover_parts(account)
