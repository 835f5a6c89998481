"""Lifecycle under load: signals with reads in flight, a killed daemon, two mounts side by side.

(A killed daemon with nothing in flight is ``test_mount_cli.py::test_killed_daemon_leaves_a_mount_that_unmount_clears``.)
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli_in_process, is_mounted, sha256_file, write_entity, write_synthetic

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes, synthetic_sha256

MiB = 1 << 20
FILES = ("Projects", "P", "Samples", "S", "Files")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One emulator for the tests with reads in flight (none changes the account)."""
    acc = tmp_path_factory.mktemp("lifecycle") / "account"
    for i in range(3):
        write_synthetic(acc.joinpath(*FILES, f"big{i}.bin"), 16 * MiB + i, 70 + i)
    with EmulatorProcess(acc) as emulator:
        yield emulator


@pytest.fixture
def slow_emulator(served):
    """The shared emulator with slow connections (16 MiB take ~4 s each, so reads stay in
    flight) and counters of this test only."""
    served.set_knobs(conn_bandwidth=4)
    served.reset_counters()
    yield served
    served.set_knobs(conn_bandwidth=0)


def start_readers(m, n: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(["cat", str(m.path(*FILES, f"big{i}.bin"))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(n)
    ]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(max(0.1, deadline - time.monotonic()))  # raises TimeoutExpired: a hung reader


def wait_reading(emulator: EmulatorProcess, at_least: int = 1 << 20, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while emulator.counters()["content_bytes"] < at_least:
        assert time.monotonic() < deadline, "the readers never started"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_unmounts_cleanly_with_reads_in_flight(slow_emulator, mount_factory, signum):
    emulator = slow_emulator
    m = mount_factory(emulator)
    readers = start_readers(m, 3)
    try:
        wait_reading(emulator)
        m.process.send_signal(signum)
        assert m.process.wait(15) == 0
        assert not is_mounted(str(m.mountpoint))
        wait_all(readers, 15)  # every reader returns (an error or EOF), none hangs
    finally:
        for p in readers:
            p.kill()
            p.wait()
    log = m.log.read_text(errors="replace")
    assert f"received {signal.Signals(signum).name}; unmounting" in log
    assert "Traceback" not in log, log[-3000:]
    # The mountpoint is reusable at once (and the server at full speed again: the slow
    # connections were only there to keep reads in flight).
    emulator.set_knobs(conn_bandwidth=0)
    again = mount_factory(emulator, name=m.mountpoint.name)
    assert sha256_file(again.path(*FILES, "big0.bin")) == synthetic_sha256(70, 16 * MiB)


def test_a_killed_daemon_fails_reads_in_flight_and_unmount_clears_it(slow_emulator, mount_factory):
    emulator = slow_emulator
    m = mount_factory(emulator)
    readers = start_readers(m, 2)
    try:
        wait_reading(emulator)
        m.process.kill()
        m.process.wait()
        wait_all(readers, 15)
        assert all(p.returncode != 0 for p in readers)  # ENOTCONN, not a hang or fake EOF
    finally:
        for p in readers:
            p.kill()
            p.wait()
    r = cli_in_process("unmount", str(m.mountpoint), env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert not is_mounted(str(m.mountpoint))


def visible(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _config(home: Path, name: str, server: str, token: str) -> None:
    folder = home / ".basespace"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"{name}.cfg"
    path.write_text(f"apiServer = {server}\naccessToken = {token}\n")
    os.chmod(path, 0o600)


def test_two_mounts_of_different_configs_at_once(tmp_path, mount_factory):
    """Two accounts, two servers, two tokens, one HOME: each mount sees only its own account, both
    read concurrently, and unmounting one leaves the other working."""
    accounts = {}
    for label, seed in (("work", 1), ("personal", 2)):
        acc = tmp_path / f"acc-{label}"
        write_synthetic(acc / "Projects" / f"{label}-project" / "Samples" / "S" / "Files" / "data.bin", 5 * MiB + seed, seed)
        write_entity(acc / "Runs" / f"{label}-run")
        accounts[label] = acc
    home = tmp_path / "home"
    with EmulatorProcess(accounts["work"], token="w-" + secrets.token_hex(8)) as work, EmulatorProcess(
        accounts["personal"], token="p-" + secrets.token_hex(8)
    ) as personal:
        _config(home, "work", work.url, work.token)
        _config(home, "personal", personal.url, personal.token)
        env = {"HOME": str(home)}
        mw = mount_factory(None, "--config", "work", name="work", env=env)
        mp = mount_factory(None, "--config", "personal", name="personal", env=env)
        assert visible(mw.path("Projects")) == ["work-project"]
        assert visible(mp.path("Projects")) == ["personal-project"]
        assert visible(mp.path("Runs")) == ["personal-run"]
        paths = {
            label: m.path("Projects", f"{label}-project", "Samples", "S", "Files", "data.bin")
            for label, m in (("work", mw), ("personal", mp))
        }
        procs = {label: subprocess.Popen(["sha256sum", str(p)], stdout=subprocess.PIPE, text=True) for label, p in paths.items()}
        for label, seed in (("work", 1), ("personal", 2)):
            out, _ = procs[label].communicate(timeout=60)
            assert out.split()[0] == synthetic_sha256(seed, 5 * MiB + seed)
        assert work.counters()["content_bytes"] >= 5 * MiB and personal.counters()["content_bytes"] >= 5 * MiB
        mw.stop()
        assert not is_mounted(str(mw.mountpoint))
        with open(paths["personal"], "rb") as f:
            f.seek(3 * MiB)
            assert f.read(1000) == synthetic_bytes(2, 3 * MiB, 1000)
