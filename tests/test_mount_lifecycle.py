"""Mount lifecycle, as a new user meets it: which mounts `unmount` touches, where a background
mount logs, `.error` and `refresh` during an outage, two mounts racing for one mountpoint, and a
quiet log on refresh."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from conftest import cli_in_process, require_fuse, write_entity, write_file
from inprocess import Core, run_core_on_mock_clock

from basemount_py.api.errors import ShuttingDown, errno_for

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.mount_table import mount_entry

CLI = [sys.executable, "-m", "basemount_py"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def clean_env(tmp_path: Path, emulator: EmulatorProcess | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASESPACE_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    if emulator is not None:
        env.update(BASESPACE_API_SERVER=emulator.url, BASESPACE_ACCESS_TOKEN=emulator.token)
    return env


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def visible(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "lifecycle-test", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One emulator for the tests that mount an account without changing it (each resets the
    counters or knobs it uses)."""
    acc = tmp_path_factory.mktemp("lifecycle") / "account"
    write_file(acc / "Projects" / "P" / "Samples" / "S" / "Files" / "a.txt", b"payload\n")
    for s in ("S1", "S2"):
        write_file(acc / "Projects" / "P" / "Samples" / s / "Files" / "r.txt", s.encode())
    with EmulatorProcess(acc) as emulator:
        yield emulator


def test_unmount_refuses_a_mount_that_is_not_basemount_py(tmp_path, tmpfs):
    (tmpfs / "keep.txt").write_text("still here")
    env = dict(clean_env(tmp_path), BASESPACE_API_SERVER="http://127.0.0.1:9", BASESPACE_ACCESS_TOKEN="t")
    # every refusal in this process (none may change anything; none gets as far as a daemon)
    plain = cli_in_process("unmount", str(tmpfs), env=env)
    lazy = cli_in_process("unmount", str(tmpfs), "--lazy", env=env)
    root = cli_in_process("unmount", "/", env=env)
    mounts = [cli_in_process("mount", "/", env=env), cli_in_process("mount", str(tmpfs), env=env)]
    assert plain.returncode == 1 and "not a basemount_py mount (tmpfs)" in plain.stderr, plain.stderr
    assert lazy.returncode == 1
    assert mount_entry(str(tmpfs)).fstype == "tmpfs" and (tmpfs / "keep.txt").read_text() == "still here"
    # `/` is never unmounted, and never suggested for unmounting
    assert root.returncode == 1 and "refusing" in root.stderr and mount_entry("/") is not None
    for r in mounts:
        assert r.returncode == 1 and "already a mount point" in r.stderr, r.stderr
        assert "basemount-py unmount" not in r.stderr


def test_a_background_mount_logs_to_a_private_file_and_says_where(tmp_path, served):
    require_fuse()
    mp = tmp_path / "mp"
    mp.mkdir()
    emulator = served
    env = clean_env(tmp_path, emulator)
    r = run_cli("mount", str(mp), "--log-level", "DEBUG", env=env)
    try:
        assert r.returncode == 0, r.stderr
        log_file = tmp_path / "home" / ".basespace" / "basemount_py.log"
        first = r.stdout.splitlines()[0]
        assert f"log: {log_file}" in first, first
        assert (mp / "Projects" / "P" / "Samples" / "S" / "Files" / "a.txt").read_bytes() == b"payload\n"
    finally:
        u = cli_in_process("unmount", str(mp), env=env)
    assert u.returncode == 0, u.stderr
    wait_until(lambda: "unmounting" in log_file.read_text(), what="the daemon's last log line")
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    text = log_file.read_text()
    assert "mounted " in text and emulator.token not in text and "Traceback" not in text


def test_error_stays_readable_and_refresh_keeps_the_listing_during_an_outage(tmp_path):
    """In-process on trio's MockClock (tests/inprocess.py): the outage's retries are waited out in
    virtual time. The refresh command through a real mount is tested in test_mount_cli.py."""
    acc = tmp_path / "account"
    write_entity(acc / "Projects" / "P" / "Samples" / "S1")
    write_entity(acc / "Projects" / "Q" / "Samples" / "T1")
    samples, q_samples = ("Projects", "P", "Samples"), ("Projects", "Q", "Samples")

    async def scenario(core: Core):
        seen = [await core.visible(*samples)]
        await core.ino(*q_samples)  # known, but its own listing was never loaded
        core.knobs(error_rate=1.0, fault_scope="api")  # every API call fails: an outage
        failed, _ = await core.timed(core.names, *q_samples)
        # .error stays readable and says why (it failed with EIO, too)
        reason = (await core.read_all(*q_samples, ".error")).decode()
        # refresh during the outage: the old listing stays until a reload succeeds
        await core.command("refresh\n", *samples)
        seen.append(await core.visible(*samples))
        kept = (await core.read_all(*samples, ".error")).decode()
        write_entity(acc / "Projects" / "P" / "Samples" / "S2")
        core.emulator.reload()
        core.knobs(error_rate=0.0)  # the server is back
        await core.command("refresh\n", *samples)
        seen.append(await core.visible(*samples))
        q_listed = await core.visible(*q_samples)
        errors_after = (await core.read_all(*samples, ".error"), await core.read_all(*q_samples, ".error"))
        return failed, reason, kept, seen, q_listed, errors_after

    failed, reason, kept, seen, q_listed, errors_after = run_core_on_mock_clock(acc, scenario, op_timeout=4, metadata_ttl=3600)
    assert errno_for(failed) == errno.EIO, failed
    assert "listing this folder failed" in reason and ("500" in reason or "503" in reason), reason
    assert "reloading this folder failed, showing the earlier listing" in kept, kept
    assert seen == [["S1"], ["S1"], ["S1", "S2"]]
    assert q_listed == ["T1"]
    assert errors_after == (b"", b"")  # the good listings cleared both


def test_two_mounts_started_at_once_on_one_mountpoint_the_second_fails(tmp_path, served):
    require_fuse()
    mp = tmp_path / "mp"
    mp.mkdir()
    emulator = served
    emulator.reset_counters()  # the stall counted below is this test's
    env = clean_env(tmp_path, emulator)
    # The first mount's first API call is held until the second mount has answered: it has
    # passed every check but is not mounted yet, which is exactly when a second mount used to
    # slip through. (Lowering stall_seconds releases the held answer.)
    emulator.set_knobs(stall_seconds=600, fail_next=[{"kind": "stall", "scope": "api"}])
    first = subprocess.Popen([*CLI, "mount", str(mp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: emulator.counters()["faults"].get("stall") == 1, what="the first mount's API check")
        second = cli_in_process("mount", str(mp), env=env)  # the lock check, then refused: no daemon
        emulator.set_knobs(stall_seconds=0)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert second.returncode == 1 and "already running or starting" in second.stderr, second.stdout + second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert "P" in os.listdir(mp / "Projects")
    finally:
        emulator.set_knobs(stall_seconds=0)
        first.kill()
        for _ in range(3):  # a stacked mount (the bug) needs more than one
            if mount_entry(str(mp)) is None:
                break
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    # the lock went with the daemon: the mountpoint is usable again at once
    r = run_cli("mount", str(mp), env=env)
    try:
        assert r.returncode == 0, r.stderr
    finally:
        assert cli_in_process("unmount", str(mp), env=env).returncode == 0


def test_refresh_of_names_the_kernel_already_forgot_logs_no_error(served, mount_factory):
    emulator = served
    m = mount_factory(emulator, "--metadata-ttl", "3600")
    walk = ["ls", "-laR", str(m.path("Projects"))]
    subprocess.run(walk, capture_output=True, check=True)
    for _ in range(2):  # the second refresh invalidates names the first one made the kernel drop
        assert cli_in_process("refresh", str(m.mountpoint), env=dict(os.environ)).returncode == 0
    # Invalidations are sent in order by one thread. S1 is looked up again (the kernel holds
    # its name for an hour), then refreshed: until its invalidation reaches the kernel a stat
    # is answered from the kernel's cache; after it, the stat is a LOOKUP that reloads the
    # expired listing from the API. By then every earlier invalidation has been sent too.
    samples = m.path("Projects", "P", "Samples")
    os.stat(samples / "S1")
    emulator.reset_counters()
    assert cli_in_process("refresh", str(samples), env=dict(os.environ)).returncode == 0

    def s1_looked_up_again() -> bool:
        os.stat(samples / "S1")
        return sum(emulator.counters()["requests"].values()) > 0

    wait_until(s1_looked_up_again, what="the refresh's invalidations")
    log = m.log.read_text(errors="replace")
    assert "Failed to submit invalidate_entry" not in log and "Traceback" not in log, log[-3000:]


def test_the_demo_tells_how_to_get_its_token_without_printing_it_and_says_what_ctrl_c_deletes(tmp_path):
    require_fuse()
    mp = tmp_path / "demo-mp"
    env = clean_env(tmp_path)
    demo = subprocess.Popen([*CLI, "demo", str(mp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in demo.stdout:  # ends when the demo exits (then the assert below shows why)
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                lines.append(demo.stdout.readline())
                break
        session = "".join(lines)
        assert "Press Ctrl-C" in session, session
        env_file = Path(next(w for w in session.split() if w.endswith("/demo.env")))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        token = next(line.split("=", 1)[1].strip("'\n") for line in env_file.read_text().splitlines() if "ACCESS_TOKEN" in line)
        assert token and token not in session
        assert "deletes" in session and "including anything you wrote" in session
        # the .curl of a folder works once demo.env is sourced (it got 401 before: no way to get the token)
        curl = subprocess.run(["sh", "-c", f'. "{env_file}" && sh "{mp}/Projects/.curl"'], capture_output=True, text=True, timeout=60)
        assert '"Items"' in curl.stdout and "Unauthorized" not in curl.stdout, curl.stdout[:500]
        workdir = env_file.parent
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
        assert demo.returncode == 0 and "deleted" in rest and token not in rest
        assert not workdir.exists() and mount_entry(str(mp)) is None
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if mount_entry(str(mp)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_sigterm_ends_a_read_waiting_on_a_hung_server_at_once(tmp_path, mount_factory):
    """A daemon whose server hangs (accepts requests, never answers) exits promptly on SIGTERM: the
    read under way, which would wait out 20 s request timeouts until its 290 s retry deadline
    (--op-timeout 300), fails with EIO at once, then the mount goes. Before Filesystem.shutdown,
    pyfuse3 waited for that read and the daemon took minutes to exit."""
    acc = tmp_path / "account"
    write_file(acc / "Projects" / "P" / "Samples" / "S" / "Files" / "a.txt", b"payload\n" * 1000)
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator, "--op-timeout", "300")
        target = m.path("Projects", "P", "Samples", "S", "Files", "a.txt")
        assert target.stat().st_size == 8000  # listed while the server answers
        emulator.set_knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")  # from now on it hangs
        reader = subprocess.Popen(["cat", str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: emulator.counters()["faults"].get("stall", 0) >= 1, timeout=120, what="the read's request hanging")
            assert reader.poll() is None  # the read is under way
            m.process.send_signal(signal.SIGTERM)
            try:
                m.process.wait(timeout=120)  # generous for a loaded machine; the old code took minutes
            except subprocess.TimeoutExpired:
                pytest.fail("the daemon did not exit within 120 s of SIGTERM")
            out, err = reader.communicate(timeout=60)
            assert reader.returncode != 0 and out == b"" and err  # an error, not a hang nor made-up bytes
            assert mount_entry(str(m.mountpoint)) is None
            assert "operation(s) under way fail with EIO" in m.log.read_text(errors="replace")
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
            emulator.set_knobs(stall_seconds=0)  # releases the held requests before the emulator stops


def test_unmount_written_to_commands_ends_the_read_under_way_at_once(tmp_path):
    """In-process on MockClock: `unmount` written to .commands while a read waits on a hung server
    ends that read with EIO at once (as SIGTERM does), the command's own write succeeds, and the
    session is ended."""
    acc = tmp_path / "account"
    write_file(acc / "Projects" / "P" / "Samples" / "S" / "Files" / "a.txt", b"payload\n")

    async def scenario(core: Core):
        fh = (await core.fs.open(await core.ino("Projects", "P", "Samples", "S", "Files", "a.txt"), os.O_RDONLY)).fh
        await core.names()  # the root's .commands is listed before the server hangs
        core.knobs(stall_rate=1.0, stall_seconds=3600, fault_scope="api")
        ended: dict[str, object] = {}

        async def read() -> None:
            ended["result"], _ = await core.timed(core.fs.read, fh, 0, 4096)
            ended["at"] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(30)  # the read is waiting on the hung server
            asked_at = trio.current_time()
            await core.command("unmount\n")
        return ended, asked_at, core.kernel.terminated

    ended, asked_at, terminated = run_core_on_mock_clock(acc, scenario, op_timeout=300, metadata_ttl=3600)
    assert isinstance(ended["result"], ShuttingDown) and errno_for(ended["result"]) == errno.EIO, ended
    assert ended["at"] == asked_at  # at once, not at the retry deadline (290 s)
    assert terminated
