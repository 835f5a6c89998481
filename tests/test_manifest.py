"""``basemount-py manifest PATH > FILE`` and ``mount --manifest FILE``: a subtree served from a
snapshot with no listing calls (counted by the emulator), reads still fetched; bad manifests
refused with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import cli_in_process, write_entity, write_file

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.tree.manifest import ManifestError, load_manifest

SUBTREE = "Projects/Study/Samples"
SAMPLES = 4


def run_cli(*args: str, emulator: EmulatorProcess, home: Path) -> subprocess.CompletedProcess:
    """``basemount-py ARGS`` against the emulator, in this process (the manifest command and the
    refusals before mounting need no process of their own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASESPACE_")}
    env.update(HOME=str(home), BASESPACE_API_SERVER=emulator.url, BASESPACE_ACCESS_TOKEN=emulator.token)
    return cli_in_process(*args, env=env)


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    acc = tmp_path_factory.mktemp("manifest") / "account"
    for i in range(SAMPLES):
        folder = acc / "Projects" / "Study" / "Samples" / f"S{i}"
        write_entity(folder, Name=f"S{i}")
        for read in (1, 2):
            write_file(folder / "Files" / f"S{i}_R{read}.fastq.gz", os.urandom(3000 + i * 100 + read))
    write_entity(acc / "Projects" / "Other" / "Samples" / "X", Name="X")
    write_file(acc / "Projects" / "Other" / "Samples" / "X" / "Files" / "x.fastq.gz", b"x" * 10)
    return acc


@pytest.fixture(scope="module")
def emulator(account):
    with EmulatorProcess(account) as emu:
        yield emu


@pytest.fixture(scope="module")
def manifest_file(emulator, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    result = run_cli("manifest", SUBTREE, emulator=emulator, home=home)
    assert result.returncode == 0, result.stderr
    path = home / "samples.manifest.json"
    path.write_text(result.stdout)
    return path


def listing_calls(counters: dict) -> dict[str, int]:
    """Requests other than the token check and content resolution (and the content host)."""
    allowed = ("GET v1pre3/users/current", "GET v1pre3/files/{id}/content", "GET content")
    return {route: n for route, n in counters["requests"].items() if route not in allowed}


def test_manifest_mount_lists_nothing_and_reads_real_bytes(emulator, manifest_file, account, mount_factory):
    emulator.reset_counters()
    m = mount_factory(emulator, "--manifest", str(manifest_file))
    samples = m.path(*SUBTREE.split("/"))
    names = sorted(n for n in os.listdir(samples) if not n.startswith("."))
    assert names == [f"S{i}" for i in range(SAMPLES)]
    for i in range(SAMPLES):
        for read in (1, 2):
            name = f"S{i}_R{read}.fastq.gz"
            source = account / "Projects" / "Study" / "Samples" / f"S{i}" / "Files" / name
            assert (samples / f"S{i}" / "Files" / name).read_bytes() == source.read_bytes()
    counters = emulator.counters()
    assert listing_calls(counters) == {}
    api_calls = sum(n for route, n in counters["requests"].items() if route != "GET content")
    # one token check at mount + one content resolution per file read
    assert api_calls == 1 + 2 * SAMPLES, counters["requests"]


def test_folders_outside_the_manifest_are_refused_with_a_reason(emulator, manifest_file, mount_factory):
    m = mount_factory(emulator, "--manifest", str(manifest_file))
    other = m.path("Projects", "Other", "Samples")
    with pytest.raises(PermissionError):
        os.listdir(other)
    assert "not in the manifest" in (other / ".error").read_text()
    assert "Other" in os.listdir(m.path("Projects"))  # the ancestors' listings are in it


def test_manifest_of_a_missing_folder_is_one_clear_line(emulator, tmp_path):
    missing = run_cli("manifest", "Projects/Nope", emulator=emulator, home=tmp_path)
    outside = run_cli("manifest", "../etc", emulator=emulator, home=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "basemount-py: manifest of Projects/Nope: no folder Projects/Nope in this account"
    assert outside.returncode == 1 and "'..'" in outside.stderr and "Traceback" not in outside.stderr


def hostile(manifest: dict) -> list[tuple[str, object, str]]:
    """(name, file content, expected part of the message)."""
    wrong_server = {**manifest, "api_server": "https://api.example.org"}
    bad_path = {**manifest, "listings": [{"path": "../../etc", "items": []}]}
    bad_items = {**manifest, "listings": [{"path": "v1pre3/x", "items": [1, 2]}]}
    bad_params = {**manifest, "listings": [{"path": "v1pre3/x", "params": {"a": [1]}, "items": []}]}
    return [
        ("not-json", "{", "is not valid JSON"),
        ("deep", "[" * 100000, "is not valid JSON"),
        ("wrong-format", json.dumps({"listings": []}), "not a basemount_py manifest"),
        ("future-version", json.dumps({**manifest, "version": 99}), "version 99 is not supported"),
        ("other-server", json.dumps(wrong_server), "was made against 'https://api.example.org'"),
        ("bad-path", json.dumps(bad_path), "bad API path"),
        ("bad-items", json.dumps(bad_items), "items must be a list of objects"),
        ("bad-params", json.dumps(bad_params), "params must map names"),
    ]


def test_hostile_manifests_are_refused_before_mounting(emulator, manifest_file, tmp_path):
    manifest = json.loads(manifest_file.read_text())
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    through_cli = []
    for name, content, expected in hostile(manifest):
        bad = tmp_path / f"{name}.json"
        bad.write_text(content)
        with pytest.raises(ManifestError) as info:
            load_manifest(str(bad), emulator.url)
        assert expected in str(info.value), name
        if name in ("not-json", "other-server"):  # the CLI path is the same for all: two suffice
            through_cli.append((name, bad, expected))
    refused = [run_cli("mount", "--foreground", "--manifest", str(bad), str(mountpoint), emulator=emulator, home=tmp_path) for _, bad, _ in through_cli]
    result = run_cli("mount", "--manifest", str(tmp_path / "missing.json"), str(mountpoint), emulator=emulator, home=tmp_path)
    for (name, _, expected), refusal in zip(through_cli, refused, strict=True):
        assert refusal.returncode == 1 and expected in refusal.stderr and "Traceback" not in refusal.stderr, (name, refusal.stderr)
    assert result.returncode == 1 and "cannot read manifest" in result.stderr
    assert "No such file or directory" in result.stderr
    assert not os.path.ismount(mountpoint)


def test_demo_project_walk_with_lazy_entries_costs_no_listing_call(demo_emulator, demo_account, mount_factory, tmp_path):
    """The demo project has the lazy entries (app session links, SampleProperties): their GETs
    come from the manifest too, so a full walk with every link and text read costs nothing."""
    project = "Projects/Demo Project: WGS (NA12878)"
    result = run_cli("manifest", project, emulator=demo_emulator, home=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "demo.json"
    manifest.write_text(result.stdout)
    demo_emulator.reset_counters()
    m = mount_factory(demo_emulator, "--manifest", str(manifest))
    seen = 0
    for folder, dirs, files in os.walk(m.path(*project.split("/"))):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                os.readlink(path)
            elif name in files and not name.endswith((".gz", ".bam", ".bai", ".tbi", ".fa")):
                with open(path, "rb") as f:  # hidden/text files, SampleProperties
                    f.read()
            seen += 1
    assert seen > 20
    counters = demo_emulator.counters()
    assert listing_calls(counters) == {}, counters["requests"]
