"""What a writer is promised when the disk fills or the daemon stops at a bad moment: nothing
partial is uploaded (BaseSpace files can be neither replaced nor removed), nothing waiting is lost
or stuck, the failure is told (errno, ``.error``, status) and the mount stays up. Each test failed
on the code before its fix (found by a review of the write path). In-process, on trio's MockClock,
like tests/test_write_logic.py, whose fixtures they use: a full disk is a ``Spool.persist`` that
raises ENOSPC, a killed daemon a ``BaseException`` raised from ``os.rename``."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from basemount_py.api.errors import FsError, errno_for
from basemount_py.write.spool import PENDING, Spool
from basemount_py.write.uploader import Uploader

from test_write_logic import (
    FILES,
    HOLD,
    RESULT,
    KiB,
    emulator_app,
    new_appresult,
    run,
    stored,
    text,
    until,
    upload,
)
from test_write_logic import make_account
from inprocess import Core


@pytest.fixture
def account(tmp_path):
    return make_account(tmp_path)


class FullDisk:
    """``Spool.persist`` on a disk that fills up: while ``on``, a persist raises ENOSPC (``once``:
    only the next one, then the disk has room again)."""

    def __init__(self, monkeypatch, once: bool):
        self.on, self.once = False, once
        self.real_persist = Spool.persist

        def persist(spool: Spool, entry) -> None:
            if self.on:
                self.on = not self.once
                raise OSError(errno.ENOSPC, "No space left on device")
            self.real_persist(spool, entry)

        monkeypatch.setattr(Spool, "persist", persist)


def after_a_new_mount(account, tmp_path, emulator, app_id: str) -> tuple[list[str], dict]:
    """A new mount of the account once the one before has died: the states it keeps in the spool
    after its uploads, and the files the app result holds on the server."""

    async def next_mount(core: Core):
        await core.flush_and_wait()
        return _states(core), await core.server_files(app_id)

    return run(account, tmp_path, next_mount, upload(write_back=HOLD), emulator=emulator)


def _states(core: Core) -> list[str]:
    return [s[0] for s in core.status()]


# -- a close through one descriptor, then more writes through another: the daemon dies -------------


def test_a_close_of_a_dup_then_more_writes_then_a_crash_is_not_uploaded_partial(account, tmp_path):
    """``subprocess.Popen(stdout=f)`` and the parent closes its ``f``, or any close of one of two
    descriptors of one open file: FUSE sends FLUSH, which records ``closed_once`` in the spool. The
    child goes on writing; the daemon dies before the last close. The bytes are partial: the next
    mount must keep the file as failed ("the writer never closed this file"), not upload it."""
    emulator = emulator_app(account)
    head, tail = os.urandom(100 * KiB), os.urandom(100 * KiB)

    async def first(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "out.log")
        await core.fs.write(opened.fh, 0, head)
        await core.fs.flush(opened.fh)  # the parent's close of its copy of the descriptor
        await core.fs.write(opened.fh, len(head), tail[: 50 * KiB])  # the child writes on...
        return app_id  # ...and the daemon dies here (no last close, no release)

    app_id = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)

    states, listed = after_a_new_mount(account, tmp_path, emulator, app_id)
    assert listed == {}, f"a partial file was uploaded: {listed['out.log']['Size']} of {len(head) + len(tail)} bytes"
    assert states == ["failed"]


# -- a write the shutdown refused, the writer's close, and no release before the daemon ends ------


def test_a_spoiled_file_closed_but_not_released_before_the_daemon_ends_is_not_uploaded(account, tmp_path):
    """test_write_logic's test_a_file_whose_write_the_shutdown_refused_is_never_uploaded_partial,
    except that the RELEASE (sent by the kernel after the close returned, asynchronously) does not
    reach the daemon before it ends, which is what a shutdown makes likely. The spool then says
    ``open``, ``closed_once`` and the write's error: the next mount must not upload it."""
    emulator = emulator_app(account)
    head = os.urandom(300 * KiB)

    async def first(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "copy.bin")
        await core.fs.write(opened.fh, 0, head)
        core.fs.shutdown()  # SIGTERM
        refused, _ = await core.timed(core.fs.write, opened.fh, len(head), os.urandom(100 * KiB))
        assert isinstance(refused, FsError) and errno_for(refused) == errno.EIO
        await core.fs.flush(opened.fh)  # cp closes the file after the error; the release never comes
        return app_id

    app_id = run(account, tmp_path, first, upload(write_back=HOLD), emulator=emulator)

    states, listed = after_a_new_mount(account, tmp_path, emulator, app_id)
    assert listed == {}, f"the partial file was uploaded: {listed}"
    assert states == ["failed"]


# -- fsync after a failed write ---------------------------------------------------------------------


def test_fsync_after_a_failed_write_does_not_upload_the_incomplete_file(account, tmp_path):
    """A write fails (ENOSPC: the spool is full); the writer goes on and calls fsync. A file with
    a failed write is "not uploaded at close but kept as failed" (manager._spoiled); fsync must
    not upload it either (BaseSpace files can never be removed or replaced)."""

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "partial.bin")
        failed = None
        for n in range(16):
            try:
                await core.fs.write(opened.fh, n * 128 * KiB, os.urandom(128 * KiB))
            except FsError as exc:
                failed = exc
                break
        assert failed is not None and errno_for(failed) == errno.ENOSPC
        synced, _ = await core.timed(core.fs.fsync, opened.fh)
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        return synced, _states(core), await core.server_files(app_id)

    synced, states, listed = run(account, tmp_path, scenario, upload(write_back=HOLD, spool_max=int(0.001 * 2**30)))
    assert listed == {}, f"the incomplete file was uploaded by fsync: {listed['partial.bin']['Size']} bytes; fsync returned {synced!r}"
    assert states == ["failed"]


# -- the spool cannot record fsync's state change (disk full) ----------------------------------------


def test_fsync_whose_spool_record_fails_leaves_no_file_stuck_pending(account, tmp_path, monkeypatch):
    """fsync: ``entry.state = PENDING`` then ``persist``; the persist fails (ENOSPC: the disk is
    full; a new .json.tmp needs a block). fsync fails (fine), but the entry stays ``pending`` in
    memory with no upload scheduled: nothing ever uploads it in this mount and ``unmount`` (which
    waits for every pending upload) waits forever."""
    full = FullDisk(monkeypatch, once=True)  # one failure: the disk has room again right after

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        opened, _ = await core.fs.create(await core.ino(*FILES), "synced.txt")
        await core.fs.write(opened.fh, 0, b"data\n")
        await core.fs.flush(opened.fh)  # (fsync below calls flush again: already recorded)
        orig_sync = Spool.sync

        def sync(self, entry):  # flush's own sync succeeds; the persist after it fails once
            os.fsync(self._fd(entry))
            full.real_persist(self, entry)
            full.on = True

        monkeypatch.setattr(Spool, "sync", sync)
        synced, _ = await core.timed(core.fs.fsync, opened.fh)
        monkeypatch.setattr(Spool, "sync", orig_sync)
        await core.fs.release(opened.fh)
        try:
            await core.flush_and_wait(bound=3600)  # what `basemount-py unmount` does
        except trio.TooSlowError:
            return synced, _states(core), "flush_and_wait timed out after 3600 s (unmount would wait forever)"
        return synced, _states(core), await core.server_files(app_id)

    synced, states, listed = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert isinstance(listed, dict) and list(listed) == ["synced.txt"], (synced, states, listed)


# -- a reopen whose spool record fails --------------------------------------------------------------


def test_a_reopen_that_fails_on_a_full_disk_leaves_the_waiting_file_uploadable(account, tmp_path, monkeypatch):
    """A closed file waits for its upload; ``echo more >> f`` opens it again and the spool cannot
    record that (ENOSPC). The open fails (fine), but the entry is left ``open`` in memory with no
    handle: it is never uploaded in this mount, and ``unmount`` does not wait for ``open`` entries,
    so it ends saying nothing about it."""
    full = FullDisk(monkeypatch, once=True)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"first\n", *FILES, "f.txt")
        full.on = True
        opened, _ = await core.timed(core.fs.open, await core.ino(*FILES, "f.txt"), os.O_WRONLY | os.O_APPEND)
        assert isinstance(opened, FsError) and errno_for(opened) == errno.ENOSPC, opened
        after = _states(core)
        try:
            await core.flush_and_wait(bound=3600)
        except trio.TooSlowError:
            pass
        return after, _states(core), await core.server_files(app_id)

    after, states, listed = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert list(listed) == ["f.txt"] and stored(account, "f.txt") == b"first\n", (after, states, listed)


# -- `>>` on a property whose previous value is being sent -------------------------------------------


def test_appending_to_a_property_while_its_value_is_sent_keeps_the_value(account, tmp_path):
    """``echo a > Properties/Input.x; echo b >> Properties/Input.x``: the second open finds the
    first value being sent (a property has no write-back delay). open_for_write waits for that
    attempt, then starts the new value from nothing whatever the open's flags; the kernel writes
    the appended bytes at the size it knows (2), so the value becomes NUL NUL 'b'. Without the
    race (the TEXT node path) the O_APPEND open starts from the current content: 'a\\nb'."""

    async def scenario(core: Core):
        await new_appresult(core)
        props = RESULT + ("Properties",)
        rid = (await core.read_all(*RESULT, ".id")).decode().strip()
        core.knobs(latency_ms=2000)  # every API answer takes 2 s: the first value is in flight
        opened, attrs = await core.fs.create(await core.ino(*props), "Input.x")  # echo a > Input.x
        await core.fs.write(opened.fh, 0, b"a\n")
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        await until(lambda: _states(core) == ["uploading"], poll=0.01)
        # echo b >> Input.x: the kernel's dentry is cached, so it opens the same inode (no lookup)
        opened = await core.fs.open(attrs.ino, os.O_WRONLY | os.O_APPEND)
        await core.fs.write(opened.fh, 2, b"b\n")  # O_APPEND: at the size the kernel knows (2)
        await core.fs.flush(opened.fh)
        await core.fs.release(opened.fh)
        core.knobs(latency_ms=0)
        await core.flush_and_wait()
        items = {p["Name"]: p for p in (await core.api(f"v1pre3/appresults/{rid}/properties"))["Response"]["Items"]}
        return items["Input.x"]["Content"]

    value = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert "\x00" not in value and value.startswith("a"), repr(value)


# -- a full disk while an upload records its state; an unexpected error in one upload ------------------


def test_a_full_disk_while_an_upload_attempt_records_its_state_does_not_kill_the_uploader(account, tmp_path, monkeypatch):
    """The spool's disk is full when an upload attempt starts: its ``persist`` (UPLOADING) fails,
    and so does the persist in its failure path. The exception must be a failed attempt (retried,
    shown in status), not escape the uploader's task: that cancels the WriteManager's nursery,
    i.e. the whole mount dies (and every other upload with it)."""
    full = FullDisk(monkeypatch, once=False)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"result\n", *FILES, "r.txt")
        full.on = True  # the disk fills up (another program)
        await core.command("flush\n")
        await trio.sleep(30)
        full.on = False  # space again
        await core.flush_and_wait()
        return await core.server_files(app_id)

    try:
        listed = run(account, tmp_path, scenario, upload(write_back=HOLD))
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"the mount died: {type(exc).__name__}: {exc!r}")
    assert list(listed) == ["r.txt"]
    assert stored(account, "r.txt") == b"result\n"


def test_an_unexpected_error_in_one_files_upload_fails_that_file_visibly_and_the_mount_stays_up(account, tmp_path, monkeypatch):
    """A bug outside an attempt's own failure handling (here: the first attempt raises) must not
    end the uploader's nursery (the mount), nor leave the file pending with no upload scheduled:
    the file is failed, with the reason in status and ``.error``, other files still upload, and
    ``retry`` sends it."""
    real_attempt = Uploader._attempt
    broken = {"on": True}

    async def attempt(self, entry, p):
        if broken["on"] and entry.name == "bug.txt":
            broken["on"] = False
            raise RuntimeError("a bug")
        await real_attempt(self, entry, p)

    monkeypatch.setattr(Uploader, "_attempt", attempt)

    async def scenario(core: Core):
        app_id = await new_appresult(core)
        await core.write_file(b"bug\n", *FILES, "bug.txt")
        await core.write_file(b"fine\n", *FILES, "fine.txt")
        await core.flush_and_wait()
        states = {s[2].rsplit("/", 1)[-1]: s for s in core.status()}
        error = await text(core, *FILES, ".error")
        await core.command("retry " + "/".join(FILES + ("bug.txt",)) + "\n")
        await core.flush_and_wait()
        return states, error, await core.server_files(app_id)

    try:
        states, error, listed = run(account, tmp_path, scenario, upload(write_back=HOLD))
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"the mount died: {type(exc).__name__}: {exc!r}")
    assert states["bug.txt"][0] == "failed" and "a bug" in states["bug.txt"][3], states
    assert states["fine.txt"][0] == "committed", states
    assert "bug.txt" in error and "a bug" in error, error
    assert sorted(listed) == ["bug.txt", "fine.txt"]
    assert stored(account, "bug.txt") == b"bug\n"


def test_a_create_that_fails_on_a_full_disk_leaves_no_phantom_open_upload(account, tmp_path, monkeypatch):
    """``Spool.create`` adds the entry to ``entries`` before its first persist; the persist fails
    (ENOSPC). The create fails (fine), but the entry must not stay in the spool's table as ``open``
    with no node and no handle: status would list an ``open`` upload that does not exist, and
    mark-as-complete of the app result would be refused (EBUSY) until the daemon restarts."""
    full = FullDisk(monkeypatch, once=True)

    async def scenario(core: Core):
        await new_appresult(core)
        await core.write_file(b"ok\n", *FILES, "ok.txt")
        full.on = True
        created, _ = await core.timed(core.fs.create, await core.ino(*FILES), "new.txt")
        assert isinstance(created, FsError) and errno_for(created) == errno.ENOSPC, created
        await core.command("flush\n")
        await until(lambda: "committed" in _states(core))  # ok.txt is on BaseSpace
        states = core.status()
        marked, _ = await core.timed(core.command, "mark-as-complete\n", *RESULT)
        return states, marked

    states, marked = run(account, tmp_path, scenario, upload(write_back=HOLD))
    assert [s[0] for s in states if s[0] != "committed"] == [], states
    assert marked is None, marked
    spooled = [p.name for p in (tmp_path / "cache" / "spool").rglob("*") if p.suffix in (".data", ".json")]
    assert spooled == [], spooled  # the failed create left no file behind


def dead_session_with_a_file(root, account_id: str):
    """A spool session holding one file waiting for its upload (``x.bin``: b"precious bytes"),
    whose daemon then died (its lock is free): the session, and the file's entry."""
    first = Spool(root, account_id, 2**30)
    first.open()
    entry = first.create(kind="file", mount_path=["P", "Files", "x.bin"], name="x.bin", owner_id="1")
    first.write(entry, 0, b"precious bytes")
    entry.state = PENDING
    first.sync(entry)
    os.close(first._lock_fd)
    first._lock_fd = None
    return first, entry


def test_a_daemon_killed_while_adopting_an_entry_does_not_lose_it(tmp_path, monkeypatch):
    """A new daemon adopts a dead session's entry (moves its ``<id>.data`` and ``<id>.json`` into
    its own session). A daemon killed between the two moves (kill -9, power loss at mount time)
    must leave the entry whole for the next mount: same name, same bytes."""
    root, account_id = tmp_path / "cache", "acct"
    first, entry = dead_session_with_a_file(root, account_id)

    second = Spool(root, account_id, 2**30)
    real_rename = os.rename

    class Killed(BaseException):
        pass

    def rename(src, dst):
        if str(src).endswith(".json") and "aborts" not in str(src):
            raise Killed()  # kill -9 right after the data file moved
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Killed):
        second.open()
    monkeypatch.setattr(os, "rename", real_rename)
    os.close(second._lock_fd)  # the second daemon is dead too
    second._lock_fd = None

    third = Spool(root, account_id, 2**30)
    adopted = third.open()
    assert [e.name for e in adopted] == ["x.bin"], adopted
    assert third.read(adopted[0], 0, 100) == b"precious bytes"
    third.close()
    fourth = Spool(root, account_id, 2**30)  # and once adopted, it is whole in one session only
    assert [e.name for e in fourth.open()] == ["x.bin"]


def test_bytes_an_earlier_version_left_apart_from_their_record_are_adopted_and_unclaimed_bytes_are_kept(tmp_path):
    """An earlier version, killed between its two renames, left the record in one dead session and
    the bytes in another: the next mount finds the bytes and adopts the entry. Bytes that no record
    claims are not deleted with their folder: the folder is kept (and the log says so)."""
    root, account_id = tmp_path / "cache", "acct"
    first, entry = dead_session_with_a_file(root, account_id)
    killed = first.account_dir / "0-killed"  # the daemon that moved the bytes, then was killed
    killed.mkdir()
    (killed / "lock").touch()
    os.rename(first.session / f"{entry.id}.data", killed / f"{entry.id}.data")
    unclaimed = first.account_dir / "0-unclaimed"
    unclaimed.mkdir()
    (unclaimed / "lock").touch()
    (unclaimed / "feed.data").write_bytes(b"whose?")

    second = Spool(root, account_id, 2**30)
    adopted = second.open()
    assert [e.name for e in adopted] == ["x.bin"], adopted
    assert second.read(adopted[0], 0, 100) == b"precious bytes"
    assert not first.session.exists() and not killed.exists()
    assert (unclaimed / "feed.data").read_bytes() == b"whose?"
