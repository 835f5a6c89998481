"""Hostile server data and credentials, through a real mount.

Hostile data is served by the emulator from ``NAME.file.json`` sidecars (Name/Path/Size/Id of a
file item overridden while the bytes still come from NAME), ``.entity.json`` overrides and the
``total_count_skew`` knob (docs/emulator.md). Names with ``/``, ``..`` (entities), 300 bytes,
newlines and duplicates are covered by ``test_mount_cli.py::test_hostile_names``; the pure naming
rule by ``test_naming.py``. Here: the same rules for *file paths*, NUL and invalid UTF-8, ids,
sizes, lying listings (in-process: the listing logic, not the kernel), a shell-injecting Href, and
where the token may (never) appear.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shlex
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import cli_in_process, write_entity, write_file, write_synthetic
from inprocess import Core, run_core_on_mock_clock

from basemount_py.api.client import tls_context
from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.synthetic import synthetic_bytes
from basemount_py.tree.naming import SLASH_SUBSTITUTE

FILES = ("Projects", "P", "Samples", "S", "Files")


def sidecar(path: Path, **fields) -> None:
    path.with_name(path.name + ".file.json").write_text(json.dumps(fields))


def visible(folder: Path) -> set[str]:
    return {n for n in os.listdir(folder) if not n.startswith(".")}


def inside(m, path: Path) -> bool:
    real = os.path.realpath(path)
    return real == str(m.mountpoint) or real.startswith(str(m.mountpoint) + "/")


# -- hostile file items ---------------------------------------------------------------------------


@pytest.fixture
def hostile_files(tmp_path) -> Path:
    acc = tmp_path / "account"
    files = acc.joinpath(*FILES)
    contents = {
        "trav.txt": b"traversal\n",
        "abs.txt": b"absolute\n",
        "nul.txt": b"nul\n",
        "utf.txt": b"not utf-8\n",
        "long.txt": b"long\n",
        "dup1.txt": b"first 4242\n",
        "dup2.txt": b"other 4242\n",
        "neg.txt": b"negative size\n",
        "junk.txt": b"junk size\n",
        "huge.txt": b"huge size\n",
        "listed_short.bin": os.urandom(100_000),
        "listed_long.bin": os.urandom(1000),
    }
    for name, data in contents.items():
        write_file(files / name, data)
    sidecar(files / "trav.txt", Path="../../../../etc/passwd", Name="passwd")
    sidecar(files / "abs.txt", Path="/abs//x.txt", Name="/abs/x.txt")
    sidecar(files / "nul.txt", Path="n\u0000ul/line\nbreak.txt", Name="line\nbreak.txt")
    sidecar(files / "utf.txt", Path="bad\udc80name.txt", Name="bad\udc80name.txt")
    sidecar(files / "long.txt", Path="D" * 300 + ".txt", Name="D" * 300 + ".txt")
    sidecar(files / "dup1.txt", Id="4242")
    sidecar(files / "dup2.txt", Id="4242")
    sidecar(files / "neg.txt", Size=-5)
    sidecar(files / "junk.txt", Size="abc")
    sidecar(files / "huge.txt", Size=10**30)
    sidecar(files / "listed_short.bin", Size=1000)  # the listing says less than the content
    sidecar(files / "listed_long.bin", Size=5000)  # the listing says more than the content
    write_synthetic(files / "synthetic.bin", 3 << 20, 9)
    sidecar(files / "synthetic.bin", Size=(3 << 20) + 1)
    (acc / "contents.json").write_text(json.dumps({k: v.hex() for k, v in contents.items()}))
    return acc


def test_hostile_file_paths_names_ids_and_sizes(hostile_files, mount_factory):
    contents = {k: bytes.fromhex(v) for k, v in json.loads((hostile_files / "contents.json").read_text()).items()}
    with EmulatorProcess(hostile_files) as emulator:
        m = mount_factory(emulator)
        files = m.path(*FILES)
        top = visible(files)
        # Path "../../../../etc/passwd": every ".." is a plain folder "_..": nothing escapes.
        trav = files / "_.." / "_.." / "_.." / "_.." / "etc" / "passwd"
        assert trav.read_bytes() == contents["trav.txt"] and inside(m, trav)
        # Leading and doubled slashes are dropped.
        assert (files / "abs" / "x.txt").read_bytes() == contents["abs.txt"]
        # NUL and newline become "_"; lone surrogates become U+FFFD.
        assert (files / "n_ul" / "line_break.txt").read_bytes() == contents["nul.txt"]
        assert (files / "bad\ufffdname.txt").read_bytes() == contents["utf.txt"]
        # 304 bytes: cut to 255 with a hash tag, still readable.
        long_names = [n for n in top if n.startswith("DDD")]
        assert len(long_names) == 1 and len(long_names[0].encode()) <= 255 and "~" in long_names[0]
        assert (files / long_names[0]).read_bytes() == contents["long.txt"]
        # Two items with the same Id in one listing: the first is kept, and its bytes are the
        # bytes the server serves for that Id.
        dups = top & {"dup1.txt", "dup2.txt"}
        assert len(dups) == 1, top
        assert (files / dups.pop()).read_bytes() == contents["dup1.txt"]
        # Sizes: negative and junk show as 0 (and read as empty); huge is capped at 2**62.
        assert os.stat(files / "neg.txt").st_size == 0 and (files / "neg.txt").read_bytes() == b""
        assert os.stat(files / "junk.txt").st_size == 0 and (files / "junk.txt").read_bytes() == b""
        assert os.stat(files / "huge.txt").st_size == 2**62
        out = subprocess.run(["ls", "-l", str(files)], capture_output=True, text=True)
        assert out.returncode == 0 and "huge.txt" in out.stdout
        # Listed size N, content M. N < M: the file is its first N bytes (exactly).
        assert os.stat(files / "listed_short.bin").st_size == 1000
        assert (files / "listed_short.bin").read_bytes() == contents["listed_short.bin"][:1000]
        # N > M: the read path checks Content-Range against what it asked for; a range the
        # content does not have is EIO, never short, padded or shifted data.
        for name, offset in (("listed_long.bin", 0), ("huge.txt", 0), ("synthetic.bin", (3 << 20) - 10)):
            fd = os.open(files / name, os.O_RDONLY)
            try:
                with pytest.raises(OSError) as info:
                    os.pread(fd, 65536, offset)
                assert info.value.errno == errno.EIO
            finally:
                os.close(fd)
        # ...while the part of a long file that lies well before the real end reads exactly.
        fd = os.open(files / "synthetic.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == synthetic_bytes(9, 0, 4096)
        finally:
            os.close(fd)
        for dirpath, dirnames, filenames in os.walk(m.path("Projects")):
            for n in dirnames + filenames:
                assert "/" not in n and "\0" not in n and len(n.encode()) <= 255
                assert inside(m, Path(dirpath) / n)
        assert m.process.poll() is None


# -- hostile entities --------------------------------------------------------------------------


def test_hostile_entity_names_ids_and_a_shell_injecting_href(tmp_path, mount_factory):
    acc = tmp_path / "account"
    samples = acc / "Projects" / "P" / "Samples"
    write_entity(samples / "nul", Name="nul\u0000name")
    write_entity(samples / "utf", Name="bad\udcffname")
    write_entity(samples / "tab", Name="\t")
    write_entity(samples / "empty", Name="")
    write_entity(samples / "slashid", Id="../../users/current")
    marker = tmp_path / "pwned"
    injection = f'v1pre3/samples/1"; touch {marker}; echo "$(touch {marker})`touch {marker}`'
    write_entity(samples / "inject", Href=injection)
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator)
        folder = m.path("Projects", "P", "Samples")
        names = visible(folder)
        assert {"nul_name", "bad\ufffdname", "_"} <= names, names
        # An Id with slashes: the hidden link's name cannot contain "/", and the folder (whose
        # listing the server refuses) fails clean instead of reaching another route's data.
        links = [n for n in os.listdir(folder) if n.startswith(".id.")]
        assert all("/" not in n for n in links) and any(SLASH_SUBSTITUTE in n for n in links)
        try:
            listed = os.listdir(folder / "slashid" / "Files")
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.EIO)
        else:
            assert listed == []
        # `.curl` is shell-quoted: running it runs curl with the server's Href as one argument.
        curl = (folder / "inject" / ".curl").read_text()
        fakebin = tmp_path / "bin"
        fakebin.mkdir()
        (fakebin / "curl").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        os.chmod(fakebin / "curl", 0o755)
        env = {"PATH": f"{fakebin}:/usr/bin:/bin", "BASESPACE_ACCESS_TOKEN": "t"}
        run = subprocess.run(["sh", "-c", curl], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        assert not marker.exists(), "the .curl file ran a command from the server's Href"
        args = run.stdout.splitlines()
        assert args[-1].endswith(injection) and len(shlex.split(curl)) == 5
        assert m.process.poll() is None


# -- lying TotalCount ----------------------------------------------------------------------------


SKEWS = {"grows-between-pages": +700, "huge": 10**9, "shrinks": -1100}


@pytest.fixture(scope="module")
def many_samples(tmp_path_factory) -> Path:
    acc = tmp_path_factory.mktemp("many") / "account"
    for i in range(3000):
        (acc / "Projects" / "Big" / "Samples" / f"S{i:04d}").mkdir(parents=True)
    return acc


@pytest.mark.parametrize("case", list(SKEWS))
def test_a_listing_whose_total_count_changes_between_pages(many_samples, case):
    """Pages are read until the largest TotalCount seen is reached or a page comes back empty;
    page requests go out in bounded waves, so a lying count costs at most one wasted wave.
    In-process (the daemon's core over the emulator's app, tests/inprocess.py): the listing
    logic is what is tested, not the kernel."""
    skew = SKEWS[case]
    real = {f"S{i:04d}" for i in range(3000)}

    async def scenario(core: Core):
        assert "Big" in await core.visible("Projects")
        core.knobs(total_count_skew=skew)
        core.emulator.counters.reset()
        names = set(await core.visible("Projects", "Big", "Samples"))
        return names, sum(n for route, n in core.emulator.counters.requests.items() if route.endswith("/samples"))

    names, pages = run_core_on_mock_clock(many_samples, scenario)
    print(f"skew {skew}: {len(names)} names, {pages} page requests")
    if skew > 0:
        assert names == real  # every item, each once
    else:
        # A first page that under-reports cannot be second-guessed: a prefix, no duplicates.
        assert names <= real and len(names) >= 3000 + skew
    assert pages <= 3 + 32 + 1, pages


# -- credentials ----------------------------------------------------------------------------------


def _home_with_config(home: Path, name: str, server: str, token: str, mode: int = 0o600) -> Path:
    cfg_dir = home / ".basespace"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg_dir, 0o700)
    path = cfg_dir / f"{name}.cfg"
    path.write_text(f"apiServer   = {server}\naccessToken = {token}\n")
    os.chmod(path, mode)
    return path


def _clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASESPACE_")}
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def small_account(tmp_path_factory) -> Path:
    """Six files and an empty sample; no test here changes it (tokens and knobs live in the emulator)."""
    acc = tmp_path_factory.mktemp("small") / "account"
    for i in range(6):
        write_synthetic(acc.joinpath(*FILES, f"f{i}.bin"), 300_000 + i, 40 + i)
    write_entity(acc / "Projects" / "Q" / "Samples" / "T")
    return acc


@pytest.fixture(scope="module")
def plain_emulator(small_account):
    """One emulator of the small account, default token and knobs, for the tests that only mount
    and read it (those that rotate the token, set knobs or need TLS start their own)."""
    with EmulatorProcess(small_account) as emulator:
        yield emulator


def test_the_token_never_appears_in_logs_files_errors_or_arguments(small_account, tmp_path, mount_factory):
    token = "tok-" + secrets.token_hex(16)
    log_file = tmp_path / "debug.log"
    with EmulatorProcess(small_account, token=token, url_lifetime=3) as emulator:
        # --op-timeout 6: the listing that fails below gives up after its 4.5 s retry deadline,
        # while a read that meets all five content faults in a row (backoff up to 3.1 s) has room
        # fresh_python: the daemon's own command line is checked below, not the launcher's
        m = mount_factory(emulator, "--log-level", "DEBUG", "--log-file", str(log_file), "--op-timeout", "6", fresh_python=True)
        emulator.set_knobs(
            fail_next=[
                {"kind": "503", "count": 2, "scope": "api"},
                {"kind": "reset", "count": 2, "scope": "content"},
                {"kind": "truncate", "count": 2, "scope": "content"},
                {"kind": "500", "count": 1, "scope": "content"},
            ]
        )
        files = m.path(*FILES)
        for i in range(6):
            assert (files / f"f{i}.bin").read_bytes() == synthetic_bytes(40 + i, 0, 300_000 + i)
        # errors in .error files and messages: a folder whose listing fails, throttled first (a
        # 429 here, not among the reads above: the budget it slows would hold up those reads)
        emulator.set_knobs(fail_next=[{"kind": "429", "count": 1, "scope": "api"}], error_rate=1.0, fault_scope="api")
        with pytest.raises(OSError):
            os.listdir(m.path("Projects", "Q", "Samples"))
        emulator.set_knobs(error_rate=0.0)
        # the failed listing waited out its retry deadline (4.5 s): signed URLs (usable for half
        # their 3 s) are re-resolved now, so more URLs pass through
        assert (files / "f0.bin").read_bytes()[:10] == synthetic_bytes(40, 0, 10)
        texts = [(m.path("Projects", "Q", "Samples", ".error")).read_bytes()]
        for folder in (m.path("Projects"), m.path("Projects", "P"), m.path("Projects", "P", "Samples", "S"), files):
            for hidden in (".curl", ".json", ".href", ".error"):
                if (folder / hidden).exists():
                    texts.append((folder / hidden).read_bytes())
        cmdline = Path(f"/proc/{m.process.pid}/cmdline").read_bytes()
        pid = m.process.pid
        m.stop()
        faults = emulator.counters()["faults"]
        assert {"503", "429", "reset", "truncate", "500"} <= set(faults), faults
    logs = log_file.read_bytes() + m.log.read_bytes()
    assert b"GET" in log_file.read_bytes() or b"retry" in log_file.read_bytes(), "DEBUG log is empty"
    for blob, where in [(logs, "log"), (cmdline, f"/proc/{pid}/cmdline"), *[(t, "a hidden file") for t in texts]]:
        assert token.encode() not in blob, f"token leaked in {where}"
        assert b"Signature=" not in blob, f"a signed URL leaked in {where}"
    assert b"BASESPACE_ACCESS_TOKEN" in b"".join(texts)  # .curl refers to the variable instead


def test_a_group_readable_config_is_refused_at_mount(tmp_path):
    home = tmp_path / "home"
    token = "tok-" + secrets.token_hex(8)
    _home_with_config(home, "loose", "http://127.0.0.1:9", token, mode=0o640)
    mp = tmp_path / "mp"
    mp.mkdir()
    r = cli_in_process("mount", str(mp), "--config", "loose", env=_clean_env(home))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "chmod 600" in r.stderr and token not in r.stderr and "Traceback" not in r.stderr
    assert not os.path.ismount(mp)


def test_plain_http_needs_loopback_or_the_explicit_flag(plain_emulator, tmp_path, mount_factory):
    """``127.1`` reaches 127.0.0.1 but is not a recognised loopback spelling: refused unless
    ``--allow-insecure-http``; then the mount works (still loopback traffic only)."""
    emulator = plain_emulator
    odd = emulator.url.replace("127.0.0.1", "127.1")
    home = tmp_path / "home"
    _home_with_config(home, "odd", odd, emulator.token)
    mp = tmp_path / "mp"
    mp.mkdir()
    r = cli_in_process("mount", str(mp), "--config", "odd", env=_clean_env(home))
    r2 = cli_in_process("mount", str(mp), "--config", "odd", "--api-server", odd, env=_clean_env(home))
    assert r.returncode != 0 and "--allow-insecure-http" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r2.returncode != 0 and "https" in r2.stderr.lower()
    m = mount_factory(None, "--config", "odd", "--allow-insecure-http", env={"HOME": str(home)})
    assert "P" in os.listdir(m.path("Projects"))


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_https_end_to_end_and_an_untrusted_certificate_is_refused(small_account, tmp_path, mount_factory):
    """Real BaseSpace is HTTPS: the API and the signed content URLs over TLS give exact bytes, and
    the certificate is verified (an untrusted one stops the mount with one clear line)."""
    cert, key = _self_signed_certificate(tmp_path)
    with EmulatorProcess(small_account, tls=(cert, key)) as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        home, mp = tmp_path / "home", tmp_path / "mp"
        home.mkdir()
        mp.mkdir()
        env = {k: v for k, v in _clean_env(home).items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        env.update(BASESPACE_API_SERVER=emulator.url, BASESPACE_ACCESS_TOKEN=emulator.token)
        # refused without the CA (the daemon forked from this process finds the certificate
        # untrusted), mounted with it (the CA the user trusts)
        r = cli_in_process("mount", str(mp), env=env)
        m = mount_factory(emulator, env={"SSL_CERT_FILE": str(cert)})
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "certificate" in r.stderr and "SSL_CERT_FILE" in r.stderr and "Traceback" not in r.stderr
        assert emulator.token not in r.stderr and not os.path.ismount(mp)
        files = m.path(*FILES)
        for i in range(6):
            assert (files / f"f{i}.bin").read_bytes() == synthetic_bytes(40 + i, 0, 300_000 + i)
        requests = emulator.counters()["requests"]
        assert requests["GET content"] >= 6 and requests["GET v1pre3/files/{id}/content"] >= 6


def test_one_tls_context_per_trust_setting_is_shared_by_the_clients(tmp_path, monkeypatch):
    """The API client, the content client and the content fetcher's threads verify with one TLS
    context (its CA bundle is loaded once per process, not once per client), and a changed
    SSL_CERT_FILE gives a context that trusts that file."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = tls_context()
    assert tls_context() is default
    cert, _ = _self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    own = tls_context()
    assert own is not default and own.verify_mode == ssl.CERT_REQUIRED and own.check_hostname
    ours = ((("commonName", "127.0.0.1"),),)
    assert any(ca["subject"] == ours for ca in own.get_ca_certs())
    assert not any(ca["subject"] == ours for ca in default.get_ca_certs())


def _mount_options(mountpoint: Path) -> set[str]:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_the_mount_is_private_by_default_and_allow_other_keeps_default_permissions(plain_emulator, mount_factory):
    emulator = plain_emulator
    private = mount_factory(emulator, name="private")
    opts = _mount_options(private.mountpoint)
    assert "default_permissions" in opts and "allow_other" not in opts, opts
    assert {"nosuid", "nodev"} <= opts
    shared = mount_factory(emulator, "--allow-other", name="shared")
    opts = _mount_options(shared.mountpoint)
    assert {"allow_other", "default_permissions"} <= opts, opts
    # Files are read-only for everyone, whatever the options.
    mode = os.stat(shared.path(*FILES, "f0.bin")).st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_a_401_re_reads_the_config_once_then_fails_clean_with_eacces(small_account, tmp_path, mount_factory):
    home = tmp_path / "home"
    with EmulatorProcess(small_account, token="first-" + secrets.token_hex(8)) as emulator:
        cfg = _home_with_config(home, "rot", emulator.url, emulator.token)
        m = mount_factory(None, "--config", "rot", "--op-timeout", "10", env={"HOME": str(home)})
        files = m.path(*FILES)
        assert (files / "f0.bin").read_bytes() == synthetic_bytes(40, 0, 300_000)
        # Rotation: the server accepts only a new token, and the config file holds it.
        second = "second-" + secrets.token_hex(8)
        emulator.rotate_token(second)
        _home_with_config(home, "rot", emulator.url, second)
        for i in (1, 2):  # new files: their URLs are resolved with the API (and the new token)
            assert (files / f"f{i}.bin").read_bytes() == synthetic_bytes(40 + i, 0, 300_000 + i)
        assert "T" in os.listdir(m.path("Projects", "Q", "Samples"))
        # Revoked with no new token in the config: EACCES, a clean failure.
        emulator.rotate_token("third-" + secrets.token_hex(8))
        for i in (3, 4):
            with pytest.raises(OSError) as info:
                (files / f"f{i}.bin").read_bytes()
            assert info.value.errno == errno.EACCES
        log = m.log.read_text(errors="replace")
        assert log.count("retrying with the re-read access token") == 1, log[-2000:]
        assert "Traceback" not in log
        failures = [line for line in log.splitlines() if "401" in line and "f" in line and "WARNING" in line]
        assert failures, log[-2000:]
        assert second not in log and emulator.token not in log
        assert oct(os.stat(cfg).st_mode & 0o777) == "0o600"
        assert m.process.poll() is None
