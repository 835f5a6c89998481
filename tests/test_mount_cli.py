"""Mount behaviour on purpose-built accounts: hostile names, refresh, listing cost, CLI errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_in_process, require_fuse, write_entity, write_file

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.tree.naming import SLASH_SUBSTITUTE

CLI = [sys.executable, "-m", "basemount_py"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def clean_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASESPACE_")}
    env["HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


@pytest.fixture
def hostile_account(tmp_path):
    acc = tmp_path / "account"
    samples = acc / "Projects" / "P" / "Samples"
    write_entity(samples / "slash", Name="a/b")
    write_entity(samples / "dotdot", Name="..")
    write_entity(samples / "long", Name="L" * 300)
    write_entity(samples / "newline", Name="two\nlines")
    write_entity(samples / "dup1", Name="same")
    write_entity(samples / "dup2", Name="same")
    write_entity(samples / "jsonname", Name=".json")
    write_file(samples / "slash" / "Files" / "x.txt", b"hello\n")
    return acc


def test_hostile_names(hostile_account, mount_factory):
    with EmulatorProcess(hostile_account) as emulator:
        m = mount_factory(emulator)
        names = set(os.listdir(m.path("Projects", "P", "Samples")))
        visible = {n for n in names if not n.startswith(".id.")}
        assert f"a{SLASH_SUBSTITUTE}b" in visible
        assert "_.." in visible
        assert "two_lines" in visible
        assert {"same", "same (2)"} <= visible
        assert ".json (2)" in visible  # cannot shadow the listing's own .json
        long_names = [n for n in visible if n.startswith("LLL")]
        assert len(long_names) == 1 and len(long_names[0].encode()) <= 255
        assert m.path("Projects", "P", "Samples", f"a{SLASH_SUBSTITUTE}b", "Files", "x.txt").read_bytes() == b"hello\n"
        # nothing escapes the mount
        for n in visible:
            assert os.path.realpath(m.path("Projects", "P", "Samples", n)).startswith(str(m.mountpoint))


def test_refresh_picks_up_a_new_entity(tmp_path, mount_factory):
    acc = tmp_path / "account"
    write_entity(acc / "Projects" / "P" / "Samples" / "S1")
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator, "--metadata-ttl", "3600")
        samples = m.path("Projects", "P", "Samples")
        assert [n for n in os.listdir(samples) if not n.startswith(".")] == ["S1"]
        write_entity(acc / "Projects" / "P" / "Samples" / "S2")
        emulator.reload()
        assert [n for n in os.listdir(samples) if not n.startswith(".")] == ["S1"]  # cached
        result = cli_in_process("refresh", str(samples), env=dict(os.environ))
        assert result.returncode == 0, result.stderr
        assert sorted(n for n in os.listdir(samples) if not n.startswith(".")) == ["S1", "S2"]
        # the same through BaseMount's own interface
        write_entity(acc / "Projects" / "P" / "Samples" / "S3")
        emulator.reload()
        (samples / ".commands").write_text("refresh\n")
        assert "S3" in os.listdir(samples)


def test_ls_l_of_5000_samples_costs_only_the_listing_pages(tmp_path, mount_factory):
    acc = tmp_path / "account"
    samples = acc / "Projects" / "Big" / "Samples"
    for i in range(5000):
        (samples / f"S{i:04d}").mkdir(parents=True)
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator)
        emulator.reset_counters()
        start = time.monotonic()
        out = subprocess.run(["ls", "-l", str(m.path("Projects", "Big", "Samples"))], capture_output=True, text=True, check=True)
        elapsed = time.monotonic() - start
        assert len(out.stdout.splitlines()) == 5001  # "total" + 5000 entries
        requests = emulator.counters()["requests"]
        sample_pages = sum(n for route, n in requests.items() if route.endswith("/samples"))
        assert sample_pages == math.ceil(5000 / 1024), requests
        assert sum(requests.values()) == sample_pages + 1, requests  # + the projects listing
        print(f"ls -l of 5,000 samples: {elapsed:.2f} s, {sum(requests.values())} API calls")


def one_line(r: subprocess.CompletedProcess) -> bool:
    return len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_errors_are_one_clear_line(small_emulator, tmp_path):
    """Every refused mount says why in one line, each on a mountpoint of its own (so one that
    mounted by mistake cannot hide another's answer). The refusals run in this process (cli.main:
    the checks, and for a token or server that fails the forked daemon's answer through its pipe);
    the second mount on a live one runs as a real process: its exit code and one stderr line."""
    require_fuse()
    mps = {name: tmp_path / f"mp-{name}" for name in ("none", "broken", "unknown", "token", "dead", "http", "bg")}
    for mp in mps.values():
        mp.mkdir()
    env = clean_env(tmp_path)
    cfg = tmp_path / "home" / ".basespace"
    cfg.mkdir(parents=True)
    (cfg / "broken.cfg").write_text("this is not a config\n")
    os.chmod(cfg / "broken.cfg", 0o600)
    # a server name that does not resolve (.invalid never does): one line, without the whole
    # retry budget of a file operation (that took 13 s)
    unknown = clean_env(tmp_path, BASESPACE_API_SERVER="https://basespace.invalid", BASESPACE_ACCESS_TOKEN="t")
    dead = clean_env(tmp_path, BASESPACE_API_SERVER="http://127.0.0.1:9", BASESPACE_ACCESS_TOKEN="t")
    plain = clean_env(tmp_path, BASESPACE_API_SERVER="http://example.org", BASESPACE_ACCESS_TOKEN="t")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    good = clean_env(tmp_path, BASESPACE_API_SERVER=small_emulator.url, BASESPACE_ACCESS_TOKEN=small_emulator.token)
    bad = dict(good, BASESPACE_ACCESS_TOKEN="wrong-token-123")

    # no credentials at all
    no_credentials = cli_in_process("mount", str(mps["none"]), env=env)
    assert no_credentials.returncode != 0 and one_line(no_credentials), no_credentials.stderr
    # bad config file
    broken = cli_in_process("mount", str(mps["broken"]), "--config", "broken", env=env)
    assert broken.returncode != 0 and one_line(broken) and "broken.cfg" in broken.stderr
    unresolved = cli_in_process("mount", str(mps["unknown"]), env=unknown)
    assert unresolved.returncode == 1 and one_line(unresolved) and "basespace.invalid" in unresolved.stderr
    assert "ConnectError" in unresolved.stderr
    # missing mountpoint
    missing = cli_in_process("mount", str(tmp_path / "nope"), env=good)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and one_line(missing)
    # non-empty mountpoint
    full = cli_in_process("mount", str(tmp_path / "full"), env=good)
    assert full.returncode == 1 and "not empty" in full.stderr
    # bad token: refused before mounting, token not echoed
    bad_token = cli_in_process("mount", str(mps["token"]), env=bad)
    assert bad_token.returncode == 1 and "401" in bad_token.stderr and "wrong-token-123" not in bad_token.stderr
    assert one_line(bad_token)
    # unreachable server: one line, well within a generous bound
    start = time.monotonic()
    unreachable = cli_in_process("mount", str(mps["dead"]), "--op-timeout", "10", env=dead)
    took = time.monotonic() - start
    assert unreachable.returncode == 1 and one_line(unreachable), unreachable.stderr
    assert took < 30
    # https is required for a non-loopback server
    http = cli_in_process("mount", str(mps["http"]), env=plain)
    assert http.returncode == 1 and "https" in http.stderr.lower()
    assert not any(os.path.ismount(mp) for mp in mps.values())
    # background mount returns once live; unmount clears it
    mp = mps["bg"]
    r = run_cli("mount", str(mp), "--log-file", str(tmp_path / "daemon.log"), env=good)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp) and "Projects" in os.listdir(mp)
        # a second mount on the same place is refused with one line (a real process: its exit
        # code and its stderr as the shell sees them)
        r2 = run_cli("mount", str(mp), env=good)
        assert r2.returncode == 1 and "already mounted" in r2.stderr and one_line(r2), r2.stderr
    finally:
        u = cli_in_process("unmount", str(mp), env=good)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mp)


@pytest.fixture(scope="module")
def small_emulator(tmp_path_factory):
    """One emulator of a one-sample account for the tests that only mount it or are refused (none
    changes the account, the token or a knob)."""
    acc = tmp_path_factory.mktemp("cli") / "account"
    write_entity(acc / "Projects" / "P" / "Samples" / "S1")
    with EmulatorProcess(acc) as emulator:
        yield emulator


def test_unmount_busy_names_the_process(small_emulator, mount_factory):
    m = mount_factory(small_emulator)
    holder = subprocess.Popen(["sleep", "60"], cwd=m.path("Projects"))
    try:
        r = cli_in_process("unmount", str(m.mountpoint), env=dict(os.environ))
        assert r.returncode == 1 and "busy" in r.stderr and str(holder.pid) in r.stderr
    finally:
        holder.kill()
        holder.wait()
    r = cli_in_process("unmount", str(m.mountpoint), env=dict(os.environ))
    assert r.returncode == 0, r.stderr


def test_killed_daemon_leaves_a_mount_that_unmount_clears(small_emulator, mount_factory):
    m = mount_factory(small_emulator)
    m.process.kill()
    m.process.wait()
    with pytest.raises(OSError):
        os.listdir(m.mountpoint)  # Transport endpoint is not connected
    r = cli_in_process("unmount", str(m.mountpoint), env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(m.mountpoint)
