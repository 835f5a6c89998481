"""The mount works from the shapes real BaseSpace sends, not from fields our emulator once invented.

Recorded real traffic (emedgene/fs_basespace cassettes) shows sample list items without
``AppSession``, ``SampleNumber`` or a project, and property items referencing samples or app
results in that same lean list shape. The emulator answers the same way; these tests check, through
a real mount, that the entries built from those fields still work and cost calls only when used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import cli_in_process, write_entity, write_file

from basemount_py.cli import basemount_cmd_main
from basemount_py.emulator.control import EmulatorProcess

# Fields real list items never carry (recordings); the mount must not need them.
NOT_IN_SAMPLE_LIST = {"AppSession", "Project", "Projects", "SampleNumber", "HrefFiles", "DateModified"}
NOT_IN_APPRESULT_LIST = {"Project", "Projects", "Description", "HrefFiles", "DateModified"}


@pytest.fixture(scope="module")
def real_shapes_account(tmp_path_factory) -> Path:
    acc = tmp_path_factory.mktemp("real-shapes") / "account"
    p, q = acc / "Projects" / "P", acc / "Projects" / "Q"
    write_entity(p / "Samples" / "S1", AppSession={"Name": "FASTQ Generation"})
    write_file(p / "Samples" / "S1" / "Files" / "S1_R1.fastq", b"@r1\nACGT\n+\nFFFF\n")
    write_entity(p / "Samples" / "S2")  # uploaded sample: no app session
    write_file(p / "Samples" / "S2" / "Files" / "S2_R1.fastq", b"@r2\nTTTT\n+\nFFFF\n")
    write_entity(q / "Samples" / "T1")
    write_file(q / "AppResults" / "Other" / "Files" / "o.txt", b"other\n")
    write_entity(acc / "Runs" / "R1")
    write_entity(
        p / "AppResults" / "A",
        Properties=[
            {"Type": "sample[]", "Name": "Input.Samples", "Items": [{"Ref": "Projects/P/Samples/S1"}, {"Ref": "Projects/Q/Samples/T1"}]},
            {"Type": "appresult", "Name": "Input.Result", "Content": {"Ref": "Projects/Q/AppResults/Other"}},
            {"Type": "run", "Name": "Input.Run", "Content": {"Ref": "Runs/R1"}},
        ],
    )
    write_file(p / "AppResults" / "A" / "Files" / "a.txt", b"a\n")
    # archival storage: one file of an app result (sidecar), and a whole dataset
    write_file(p / "AppResults" / "A" / "Files" / "old.bam", b"archived bytes")
    (p / "AppResults" / "A" / "Files" / "old.bam.file.json").write_text('{"IsArchived": true}')
    write_entity(p / "Datasets" / "D", IsArchived=True, DatasetType="common.fastq")
    write_file(p / "Datasets" / "D" / "Files" / "d_R1.fastq.gz", b"gz")
    return acc


@pytest.fixture(scope="module")
def real_shapes_emulator(real_shapes_account):
    """One emulator for the tests that only read the account (each mount is the test's own)."""
    with EmulatorProcess(real_shapes_account) as emulator:
        yield emulator


def _api(emulator: EmulatorProcess, path: str) -> dict:
    response = httpx.get(emulator.url.rstrip("/") + "/" + path, headers={"x-access-token": emulator.token}, timeout=30)
    response.raise_for_status()
    return response.json()["Response"]


def _project_id(emulator: EmulatorProcess, name: str) -> str:
    return next(p["Id"] for p in _api(emulator, "v1pre3/users/current/projects")["Items"] if p["Name"] == name)


def test_the_emulator_answers_exactly_the_real_shapes(real_shapes_emulator):
    """Guard: every answer the mount tests below build on has the shape recorded from real
    BaseSpace (the conformance suite's checker: no field more, none less), so list items lack
    the fields the mount once needed."""
    from test_conformance import check

    emulator = real_shapes_emulator
    headers = {"x-access-token": emulator.token}

    def answer(route: str, path: str, **params) -> dict:
        response = httpx.get(emulator.url + path, params=params, headers=headers, timeout=30)
        assert check(route, response) == [], (path, check(route, response))
        return response.json()

    pid = _project_id(emulator, "P")
    samples = answer("GET v1pre3/projects/{id}/samples", f"v1pre3/projects/{pid}/samples")["Response"]["Items"]
    assert samples and all(not NOT_IN_SAMPLE_LIST & set(sample) for sample in samples)
    results = answer("GET v1pre3/projects/{id}/appresults", f"v1pre3/projects/{pid}/appresults")["Response"]["Items"]
    assert results and all(not NOT_IN_APPRESULT_LIST & set(result) for result in results)
    s1 = next(s["Id"] for s in samples if s["Name"] == "S1")
    answer("GET v1pre3/samples/{id}", f"v1pre3/samples/{s1}")
    a = next(r["Id"] for r in results if r["Name"] == "A")
    answer("GET v1pre3/appresults/{id}", f"v1pre3/appresults/{a}")
    answer("GET v1pre3/appresults/{id}/files", f"v1pre3/appresults/{a}/files")
    props = answer("GET v1pre3/appresults/{id}/properties", f"v1pre3/appresults/{a}/properties")["Response"]["Items"]
    referenced = [i for p in props for i in (p.get("Items") or [p.get("Content")]) if isinstance(i, dict)]
    assert referenced and all(not {"Project", "Projects"} & set(i) for i in referenced)
    (dataset,) = answer("GET v2/datasets", "v2/datasets", projectid=pid)["Items"]
    answer("GET v2/datasets/{id}/files", f"v2/datasets/{dataset['Id']}/files")


def test_links_parent_session_and_sample_properties_from_real_shapes(real_shapes_emulator, mount_factory):
    emulator = real_shapes_emulator
    m = mount_factory(emulator)
    samples = m.path("Projects", "P", "Samples")
    emulator.reset_counters()
    listing = os.listdir(samples)
    assert {"S1", "S2"} <= set(listing)
    # reading a sample's file needs no per-sample call
    assert (samples / "S1" / "Files" / "S1_R1.fastq").read_bytes() == b"@r1\nACGT\n+\nFFFF\n"
    assert "GET v1pre3/samples/{id}" not in emulator.counters()["requests"]

    # ParentAppSession: from GET samples/{id}, made when the entry is looked up
    link = samples / "S1" / "ParentAppSession"
    session_dir = Path(os.path.realpath(link))
    session_id = (session_dir / ".id").read_text().strip()
    assert session_dir.parent == m.path("Projects", "P", "AppSessions")
    assert (session_dir / ".name").read_text().strip() == "FASTQ Generation"
    s1 = _api(emulator, f"v1pre3/samples/{(samples / 'S1' / '.id').read_text().strip()}")
    assert s1["AppSession"]["Id"] == session_id
    # a sample without a session has no such entry
    assert "ParentAppSession" not in os.listdir(samples / "S2")
    with pytest.raises(OSError) as err:
        os.lstat(samples / "S2" / "ParentAppSession")
    assert err.value.errno == errno.ENOENT

    # SampleProperties shows SampleNumber, which only GET samples/{id} carries
    text = (samples / "S1" / "SampleProperties").read_text()
    assert f"SampleNumber: {s1['SampleNumber']}\n" in text and text.startswith("Name: S1\n")
    assert os.stat(samples / "S1" / "SampleProperties").st_size == len(text.encode())

    # property links to samples (own and other project), an app result elsewhere, a run
    props = m.path("Projects", "P", "AppResults", "A", "Properties")
    own, other = props / "Input.Samples" / "0", props / "Input.Samples" / "1"
    sid, pid = (samples / "S1" / ".id").read_text().strip(), (samples.parent / ".id").read_text().strip()
    assert os.readlink(own) == f"../../../../../.id.{pid}/Samples/.id.{sid}"
    assert Path(os.path.realpath(own)) == samples / "S1"
    assert (other / ".name").read_text().strip() == "T1"
    assert Path(os.path.realpath(other)).parent == m.path("Projects", "Q", "Samples")
    result = props / "Input.Result"
    assert result.is_symlink() and (result / "Files" / "o.txt").read_bytes() == b"other\n"
    assert Path(os.path.realpath(result)).parent == m.path("Projects", "Q", "AppResults")
    assert (props / "Input.Run" / ".type").read_text().strip() == "runs"


def test_archived_files_are_refused_clearly_and_without_calls(real_shapes_emulator, mount_factory):
    emulator = real_shapes_emulator
    pid = _project_id(emulator, "P")
    # the emulator marks them as real BaseSpace does (files and datasets), and its content host
    # refuses an archived object as S3 does
    headers = {"x-access-token": emulator.token}
    (dataset,) = httpx.get(f"{emulator.url}v2/datasets", params={"projectid": pid}, headers=headers).json()["Items"]
    assert dataset["IsArchived"] is True
    (d_file,) = httpx.get(f"{emulator.url}v2/datasets/{dataset['Id']}/files", headers=headers).json()["Items"]
    assert d_file["IsArchived"] is True
    meta = _api(emulator, f"v1pre3/files/{d_file['Id']}/content?redirect=meta")
    refused = httpx.get(meta["HrefContent"])
    assert refused.status_code == 403 and b"InvalidObjectState" in refused.content
    m = mount_factory(emulator)
    files = m.path("Projects", "P", "AppResults", "A", "Files")
    meta = json.loads((m.path("Projects", "P", "AppResults", "A", "Files.metadata", "old.bam") / ".json").read_text())
    assert meta["Response"]["IsArchived"] is True
    assert (files / "a.txt").read_bytes() == b"a\n"  # its sibling reads normally
    emulator.reset_counters()
    for archived in (files / "old.bam", m.path("Projects", "P", "Datasets", "D", "Files", "d_R1.fastq.gz")):
        assert archived.stat().st_size > 0  # listed with its size, like any file
        with pytest.raises(OSError) as err:
            archived.read_bytes()
        assert err.value.errno == errno.EACCES
        error = (archived.parent / ".error").read_text()
        assert f"{archived.name} is archived in BaseSpace" in error and "Restore" in error and "refresh" in error
    counters = emulator.counters()
    assert not any("content" in route for route in counters["requests"]), counters["requests"]
    assert counters["content_bytes"] == 0


def test_verify_checks_whole_file_reads_against_the_md5_etag(tmp_path, mount_factory):
    """--verify: real ETags are the content's MD5. A file whose bytes do not match its ETag fails
    with EIO and a log line, every time it is read whole; a multipart ETag (<md5>-<n>) is not
    checkable and reads normally; without --verify nothing is checked."""
    acc = tmp_path / "account"
    files = acc / "Projects" / "P" / "AppResults" / "A" / "Files"
    good = write_file(files / "good.bin", os.urandom(3 * 2**20 + 17))
    bad = write_file(files / "bad.bin", os.urandom(2 * 2**20 + 5))
    (files / "bad.bin.file.json").write_text(json.dumps({"ETag": hashlib.md5(b"other bytes").hexdigest()}))
    multi = write_file(files / "multi.bin", os.urandom(2**20))
    (files / "multi.bin.file.json").write_text(json.dumps({"ETag": hashlib.md5(b"parts").hexdigest() + "-3"}))
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator, "--verify")
        mounted = m.path("Projects", "P", "AppResults", "A", "Files")
        meta = json.loads((mounted.parent / "Files.metadata" / "good.bin" / ".json").read_text())["Response"]
        assert meta["ETag"] == hashlib.md5(good.read_bytes()).hexdigest()  # the emulator's ETag is the MD5
        assert (mounted / "good.bin").read_bytes() == good.read_bytes()
        assert (mounted / "multi.bin").read_bytes() == multi.read_bytes()
        for _ in range(2):  # the page cache never serves the failed bytes unchecked
            result = subprocess.run(["cp", str(mounted / "bad.bin"), str(tmp_path / "copy")], capture_output=True, text=True)
            assert result.returncode != 0 and "Input/output error" in result.stderr
        # a partial read is not checked (nothing to compare it with)
        with open(mounted / "bad.bin", "rb") as f:
            assert f.read(4096) == bad.read_bytes()[:4096]
        assert m.log.read_text().count("but the ETag says") >= 2  # one error line per failed check
        # without --verify the same bytes are served as they come
        plain = mount_factory(emulator, name="plain")
        assert (plain.path("Projects", "P", "AppResults", "A", "Files", "bad.bin")).read_bytes() == bad.read_bytes()


def test_mark_as_complete_of_a_sample_from_its_real_list_item(tmp_path, mount_factory):
    """Real sample list items have no AppSession: the command is offered by the sample's own
    Status and finds the session through GET samples/{id}."""
    acc = tmp_path / "account"
    samples = acc / "Projects" / "P" / "Samples"
    write_entity(samples / "Up", Status="Running", AppSession={"Name": "Upload", "Status": "Running"})
    write_entity(samples / "Done", AppSession={"Name": "FASTQ Generation"})
    with EmulatorProcess(acc) as emulator:
        m = mount_factory(emulator)
        up = m.path("Projects", "P", "Samples", "Up")
        # basemount-cmd's function in this process (the installed entry point runs for real in
        # tests/test_write_commands.py)
        def cmd(*args: str) -> subprocess.CompletedProcess:
            return cli_in_process("--path", *args, env=dict(os.environ), entry=basemount_cmd_main)

        listed = cmd(str(up))
        assert "mark-as-complete" in listed.stdout, listed
        assert "mark-as-complete" not in cmd(str(up.parent / "Done")).stdout
        run = cmd(str(up), "mark-as-complete")
        assert run.returncode == 0, run.stderr
        session_id = _api(emulator, f"v1pre3/samples/{(up / '.id').read_text().strip()}")["AppSession"]["Id"]
        assert _api(emulator, f"v1pre3/appsessions/{session_id}")["Status"] == "Complete"
