"""Tests of the BaseSpace API emulator, against the real server process over loopback.

One emulator (module scope) serves a small account built in a temp dir; an autouse fixture
puts the knobs back to their defaults and zeroes the counters before each test.  Tests that
change the folder (reload, restart) or need a special start-up get their own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import pytest

from basemount_py.emulator.account import DEFAULT_TOKEN
from basemount_py.emulator.control import EmulatorProcess
from basemount_py.emulator.knobs import Knobs
from basemount_py.emulator.synthetic import synthetic_bytes, synthetic_sha256


SMALL = bytes(range(256)) * 4  # 1024 known bytes for Range tests
BIG_SIZE = 100 * 1024 * 1024
BIG_SEED = 42


def _write(path, data: bytes | str = b"x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)


def _entity(folder, obj) -> None:
    _write(os.path.join(folder, ".entity.json"), json.dumps(obj))


def build_account(root: str) -> None:
    """A small account exercising every feature of the folder format."""
    _write(os.path.join(root, "account.json"), json.dumps({"User": {"Id": "77", "Name": "Ada", "Email": "ada@x.org"}}))
    p = os.path.join(root, "Projects", "Alpha")
    _entity(p, {"Description": "first project"})
    for i in range(20):  # exactly two pages of the default Limit
        _write(os.path.join(p, "Samples", f"S{i:02d}", "Files", f"S{i:02d}_R1.fastq.gz"), b"@r\nACGT\n+\n!!!!\n" * (i + 1))
    s0 = os.path.join(p, "Samples", "S00")
    _entity(s0, {"AppSession": {"Name": "FASTQ Generation", "Status": "Complete"}})
    _entity(os.path.join(p, "Samples", "S01"), {"AppSession": {"Name": "FASTQ Generation"}})
    # odd names: overridden Name/Id, a duplicate display name, a dotfile, nested paths
    sx = os.path.join(p, "Samples", "weird")
    _entity(
        sx,
        {
            "Id": "123",
            "Name": "S05",
            "NumReadsRaw": 1000,
            "Properties": [
                {"Type": "string", "Name": "Input.sample-sheet", "Content": "text"},
                {"Type": "string[]", "Name": "X.list", "Items": ["a", "b"]},
                {"Type": "run", "Name": "Input.Run", "Content": {"Ref": "Runs/Run1"}},
                {"Type": "sample[]", "Name": "Input.Samples", "Items": [{"Ref": "Projects/Alpha/Samples/S02"}]},
                {"Type": "string[]", "Name": "X.many", "Items": [f"v{i}" for i in range(50)]},
            ],
        },
    )
    _write(os.path.join(sx, "Files", ".hidden"), b"dot")
    _write(os.path.join(sx, "Files", "a", "b", "deep.vcf.gz"), b"vcf")
    _write(os.path.join(sx, "Files", "a", "top.bam"), b"bam")
    _write(os.path.join(sx, "Files", "ab", "other.bam"), b"bam2")
    ar = os.path.join(p, "AppResults", "Align")
    _write(os.path.join(ar, "Files", "small.bin"), SMALL)
    _write(os.path.join(ar, "Files", "big.bam.synthetic.json"), json.dumps({"size": BIG_SIZE, "seed": BIG_SEED}))
    _write(os.path.join(p, "AppResults", "Variants", "Files", "v.vcf"), b"##fileformat=VCFv4.2\n")
    _entity(os.path.join(p, "AppResults", "Variants"), {"Status": "Running", "AppSession": {"Name": "Variants", "Status": "Running"}})
    d = os.path.join(p, "Datasets", "DS1")
    _entity(d, {"BioSample": "BS-1", "DatasetType": {"Id": "common.fastq", "Name": "FASTQ"}})
    _write(os.path.join(d, "Files", "r1.fastq.gz"), b"fq")
    _write(os.path.join(d, "Files", "sub", "r2.fastq.gz"), b"fq2")
    _entity(os.path.join(root, "BioSamples", "BS-1"), {"DefaultProject": "Alpha", "LabStatus": "Sequenced"})
    os.makedirs(os.path.join(root, "Projects", "Empty"))
    run = os.path.join(root, "Runs", "Run1")
    _write(os.path.join(run, "Files", "RunInfo.xml"), b"<RunInfo/>")
    _write(os.path.join(run, "Files", "InterOp", "TileMetricsOut.bin"), b"\x02" * 10)
    _write(os.path.join(run, "Files", "Data", "Intensities", "BaseCalls", "L001", "C1.1", "s_1_1101.bcl.gz"), b"b")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("account"))
    build_account(root)
    with EmulatorProcess(root) as em:
        yield em
        # injected faults are deliberate: they must not spam the server log with tracebacks
        log = em.log_tail(100_000)
        assert "Traceback" not in log and "ERROR" not in log, log


@pytest.fixture(autouse=True)
def _clean(request):
    if "emu" in request.fixturenames:
        em = request.getfixturevalue("emu")
        em.set_knobs(**Knobs().to_dict())
        em.reset_counters()
    yield


@pytest.fixture
def api(emu):
    with httpx.Client(base_url=emu.url, headers={"x-access-token": emu.token}, timeout=10) as client:
        yield client


def ok(client: httpx.Client, path: str, **params) -> dict:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def items(client, path, **params) -> list[dict]:
    body = ok(client, path, **params)
    return body["Response"]["Items"] if "Response" in body else body["Items"]


def project_id(api, name="Alpha") -> str:
    return next(p["Id"] for p in items(api, "v1pre3/users/current/projects") if p["Name"] == name)


def by_name(entries, name):
    return next(e for e in entries if e["Name"] == name)


def appresult(api, name):
    return by_name(items(api, f"v1pre3/projects/{project_id(api)}/appresults"), name)


def file_of(api, appresult_name, file_name):
    ar = appresult(api, appresult_name)
    return by_name(items(api, f"v1pre3/appresults/{ar['Id']}/files"), file_name)


def content_url(api, file_id) -> str:
    r = api.get(f"v1pre3/files/{file_id}/content", params={"redirect": "meta"})
    assert r.status_code == 200, r.text
    return r.json()["Response"]["HrefContent"]


# -- routes and envelopes ------------------------------------------------------------------------


def test_user_and_token_current(api, emu):
    body = ok(api, "v1pre3/users/current")
    assert body["ResponseStatus"] == {} and body["Notifications"] == []
    user = body["Response"]
    assert (user["Id"], user["Name"], user["Email"], user["Href"]) == ("77", "Ada", "ada@x.org", "v1pre3/users/77")
    token = ok(api, "v1pre3/oauthv2/token/current")["Response"]
    assert token["AccessToken"] == DEFAULT_TOKEN[:4] + "…"
    assert DEFAULT_TOKEN not in json.dumps(token)
    assert token["Status"] == "Active" and token["Scopes"] and token["UserResourceOwner"]["Id"] == "77"


def test_projects_and_entity_envelope(api):
    projects = items(api, "v1pre3/users/current/projects")
    assert sorted(p["Name"] for p in projects) == ["Alpha", "Empty"]
    alpha = by_name(projects, "Alpha")
    assert alpha["Description"] == "first project"
    assert alpha["UserOwnedBy"]["Id"] == "77" and alpha["HasCollaborators"] is False
    assert "HrefSamples" not in alpha  # real list items have no Hrefs of children; GET has them
    assert alpha["TotalSize"] > BIG_SIZE
    assert len(alpha["Id"]) == 10 and alpha["Id"].isdigit()
    single = ok(api, f"v1pre3/projects/{alpha['Id']}")
    assert set(single) == {"Response", "ResponseStatus", "Notifications"}
    assert single["Response"]["Href"] == f"v1pre3/projects/{alpha['Id']}"
    assert single["Response"]["HrefSamples"] == f"v1pre3/projects/{alpha['Id']}/samples"
    assert single["Response"]["Properties"]["Href"] == f"v1pre3/projects/{alpha['Id']}/properties"


def test_samples_fields_and_overrides(api):
    samples = items(api, f"v1pre3/projects/{project_id(api)}/samples", Limit=100)
    assert len(samples) == 21
    weird = [s for s in samples if s["Id"] == "123"][0]
    assert weird["Name"] == "S05" and weird["NumReadsRaw"] == 1000 and weird["Href"] == "v1pre3/samples/123"
    assert [s["Name"] for s in samples].count("S05") == 2  # duplicate names are possible
    s0 = by_name(samples, "S00")
    # real list items: no AppSession, project, SampleNumber, HrefFiles or DateModified (GET has them)
    for field in ("AppSession", "Project", "Projects", "SampleNumber", "HrefFiles", "DateModified"):
        assert field not in s0
    for field in ("SampleId", "ExperimentName", "Status", "IsPairedEnd", "Read1", "Read2", "NumReadsPF", "Library", "Genome"):
        assert field in s0
    assert s0["TotalReadsRaw"] == s0["NumReadsRaw"] and s0["UserOwnedBy"]["Id"] == "77"
    one = lambda name: ok(api, f"v1pre3/samples/{by_name(samples, name)['Id']}")["Response"]
    d0 = one("S00")
    assert d0["AppSession"]["Name"] == "FASTQ Generation"
    assert one("S01")["AppSession"]["Id"] == d0["AppSession"]["Id"]  # shared session
    assert "AppSession" not in one("S02")
    assert [p["Name"] for p in d0["Projects"]] == ["Alpha"] and d0["TotalSize"] == 15 and d0["HrefFiles"].endswith("/files")
    assert isinstance(d0["SampleNumber"], int) and "Project" not in d0
    weird_one = ok(api, "v1pre3/samples/123")["Response"]
    assert weird_one["Name"] == "S05" and weird_one["NumReadsRaw"] == 1000
    assert weird_one["HrefFiles"] == "v1pre3/samples/123/files" and weird_one["Properties"]["TotalCount"] == 5


def test_appresults_appsessions_runs(api):
    pid = project_id(api)
    ars = items(api, f"v1pre3/projects/{pid}/appresults")
    assert sorted(a["Name"] for a in ars) == ["Align", "Variants"]
    align = by_name(ars, "Align")
    assert align["AppSession"]["Name"] == "Align" and align["TotalSize"] == BIG_SIZE + len(SMALL)
    sessions = items(api, "v1pre3/users/current/appsessions", **{"output.projects": pid})
    # the dataset DS1 has no sample of its name, so it gets a session of its own (real datasets
    # always come from one)
    assert sorted(s["Name"] for s in sessions) == ["Align", "DS1", "FASTQ Generation", "Variants"]
    session = ok(api, f"v1pre3/appsessions/{align['AppSession']['Id']}")["Response"]
    assert session["Status"] == "Complete" and session["Application"]["Name"] and session["UserCreatedBy"]["Id"] == "77"
    assert "DateModified" not in session and session["ModifiedOn"] and session["TotalSize"] == BIG_SIZE + len(SMALL)
    (ref,) = session["References"]
    assert ref["Type"] == "Project" and ref["HrefContent"] == ref["Href"] == f"v1pre3/projects/{pid}"
    empty = project_id(api, "Empty")
    assert items(api, "v1pre3/users/current/appsessions", **{"output.projects": empty}) == []
    # Statuses filters (comma lists, any case)
    assert [a["Name"] for a in items(api, f"v1pre3/projects/{pid}/appresults", Statuses="running")] == ["Variants"]
    assert sorted(a["Name"] for a in items(api, f"v1pre3/projects/{pid}/appresults", Statuses="Complete,Running")) == ["Align", "Variants"]
    assert [s["Name"] for s in items(api, "v1pre3/users/current/appsessions", **{"output.projects": pid, "status": "Running"})] == ["Variants"]
    v2_sessions = ok(api, "v2/appsessions", **{"output.projects": pid, "sortby": "Name", "limit": 2})
    assert [s["Name"] for s in v2_sessions["Items"]] == ["Align", "DS1"] and v2_sessions["Paging"]["TotalCount"] == 4
    assert v2_sessions["Items"][0]["ExecutionStatus"] == "Complete" and v2_sessions["Paging"]["SortBy"] == "Name"
    page2 = ok(api, "v2/appsessions", **{"output.projects": pid, "sortby": "Name", "offset": 2, "limit": 2})
    assert [s["Name"] for s in page2["Items"]] == ["FASTQ Generation", "Variants"]
    assert ok(api, f"v1pre3/projects/{pid}/appresults", Statuses="Aborted")["Response"]["TotalCount"] == 0
    assert ok(api, f"v1pre3/appresults/{align['Id']}")["Response"]["Id"] == align["Id"]
    (run,) = items(api, "v1pre3/users/current/runs")
    assert run["Name"] == "Run1" and run["InstrumentType"] and "SequencingStats" in run
    assert ok(api, f"v1pre3/runs/{run['Id']}")["Response"]["HrefFiles"] == f"v1pre3/runs/{run['Id']}/files"


def test_files_metadata_and_filters(api):
    run = items(api, "v1pre3/users/current/runs")[0]
    files = items(api, f"v1pre3/runs/{run['Id']}/files")
    assert sorted(f["Path"] for f in files) == [
        "Data/Intensities/BaseCalls/L001/C1.1/s_1_1101.bcl.gz",
        "InterOp/TileMetricsOut.bin",
        "RunInfo.xml",
    ]
    f = by_name(files, "RunInfo.xml")
    assert f["Size"] == 10 and f["HrefContent"] == f"v1pre3/files/{f['Id']}/content"
    assert f["IsArchived"] is False and "UploadStatus" not in f and f["IdAsLong"] == int(f["Id"])
    assert f["ETag"] == hashlib.md5(b"<RunInfo/>").hexdigest()
    assert f["DateCreated"].endswith(".0000000Z") and len(f["DateCreated"]) == 28
    one = ok(api, f"v1pre3/files/{f['Id']}")["Response"]
    assert one["UploadStatus"] == "complete" and one["Properties"]["TotalCount"] == 0 and "IdAsLong" not in one
    assert {k: v for k, v in one.items() if k not in ("UploadStatus", "Properties")} == {
        k: v for k, v in f.items() if k != "IdAsLong"
    }
    assert ok(api, f"v1pre3/files/{f['Id']}/properties")["Response"]["Items"] == []
    inter = items(api, f"v1pre3/runs/{run['Id']}/files", Directory="InterOp")
    assert [x["Name"] for x in inter] == ["TileMetricsOut.bin"]
    deep = items(api, f"v1pre3/runs/{run['Id']}/files", directory="/Data/Intensities/")
    assert [x["Name"] for x in deep] == ["s_1_1101.bcl.gz"]

    weird = f"v1pre3/samples/123/files"
    assert sorted(x["Path"] for x in items(api, weird)) == [".hidden", "a/b/deep.vcf.gz", "a/top.bam", "ab/other.bam"]
    assert sorted(x["Path"] for x in items(api, weird, Directory="a")) == ["a/b/deep.vcf.gz", "a/top.bam"]
    assert sorted(x["Name"] for x in items(api, weird, Extensions=".bam")) == ["other.bam", "top.bam"]
    assert sorted(x["Name"] for x in items(api, weird, extensions=".vcf.gz,.hidden")) == [".hidden", "deep.vcf.gz"]
    assert items(api, weird, Directory="a", Extensions=".vcf.gz")[0]["Path"] == "a/b/deep.vcf.gz"


def test_properties_with_refs(api):
    props = items(api, "v1pre3/samples/123/properties")
    run = by_name(props, "Input.Run")
    assert run["Type"] == "run" and run["Content"]["Name"] == "Run1" and run["Content"]["Href"].startswith("v1pre3/runs/")
    samples = by_name(props, "Input.Samples")
    assert samples["Items"][0]["Name"] == "S02" and samples["ItemsTotalCount"] == 1
    assert by_name(props, "X.list")["Items"] == ["a", "b"]
    assert by_name(props, "Input.sample-sheet")["Content"] == "text"
    for path in ("v1pre3/projects/{p}/properties", "v1pre3/runs/{r}/properties"):
        url = path.format(p=project_id(api), r=items(api, "v1pre3/users/current/runs")[0]["Id"])
        assert items(api, url) == []


def test_long_property_arrays_show_their_first_items_and_page_through_items(api):
    many = by_name(items(api, "v1pre3/samples/123/properties"), "X.many")
    assert many["Items"] == [f"v{i}" for i in range(20)]
    assert many["ItemsDisplayedCount"] == 20 and many["ItemsTotalCount"] == 50
    assert many["HrefItems"] == "v1pre3/samples/123/properties/X.many/items"
    assert len(by_name(items(api, "v1pre3/samples/123/properties", propertyitemslimit=100), "X.many")["Items"]) == 50
    assert by_name(items(api, "v1pre3/samples/123/properties", PropertyItemsLimit=0), "X.many")["Items"] == []
    got, offset = [], 0
    while True:
        body = ok(api, many["HrefItems"], Offset=offset, Limit=7)["Response"]
        assert body["TotalCount"] == 50 and body["Limit"] == 7
        if not body["Items"]:
            break
        got += body["Items"]
        offset += len(body["Items"])
    assert got == [f"v{i}" for i in range(50)]
    refs = items(api, "v1pre3/samples/123/properties/Input.Samples/items")
    assert [r["Name"] for r in refs] == ["S02"] and refs[0]["Href"].startswith("v1pre3/samples/")
    assert api.get("v1pre3/samples/123/properties/Input.sample-sheet/items").status_code == 404  # not an array
    assert api.get("v1pre3/samples/123/properties/No.such/items").status_code == 404
    assert api.get("v1pre3/samples/999999/properties/X.many/items").status_code == 403


def test_v2_datasets_biosamples(api, emu):
    pid = project_id(api)
    body = ok(api, "v2/datasets", projectid=pid)
    assert set(body) == {"Items", "Paging"} and body["Paging"]["TotalCount"] == 1
    ds = body["Items"][0]
    assert ds["Id"].startswith("ds.") and len(ds["Id"]) == 35
    assert ds["Href"] == f"{emu.url}v2/datasets/{ds['Id']}"
    assert ds["DatasetType"] == {
        "Id": "common.fastq",
        "Href": f"{emu.url}v2/datasettypes/common.fastq",
        "Name": "FASTQ",
        "ConformsToIds": ["common.files"],
    }
    assert ds["TotalSize"] == 5 and "FileCount" not in ds and "BioSample" not in ds
    assert ds["Project"]["Id"] == pid and "QcStatus" in ds and ds["AppSession"]["Name"] == "DS1"
    assert ok(api, f"v2/datasets/{ds['Id']}") == {**ds, "ValidationsPerformed": []}  # bare entity
    assert items(api, f"v2/projects/{pid}/datasets")[0]["Id"] == ds["Id"]
    bs_id = items(api, "v2/biosamples", projectid=pid)[0]["Id"]
    assert items(api, "v2/datasets", inputbiosamples=bs_id)[0]["Id"] == ds["Id"]
    assert body["Paging"]["SortBy"] == "DateCreated" and body["Paging"]["SortDir"] == "Desc"  # real default
    assert items(api, "v2/datasets", datasettypes="~common.files")[0]["Id"] == ds["Id"]  # conforms to
    assert items(api, "v2/datasets", datasettypes="common.files") == []  # exactly that type
    assert items(api, "v2/datasets", datasettypes="!common.fastq") == []
    assert items(api, "v2/datasets", appsessionids=ds["AppSession"]["Id"])[0]["Id"] == ds["Id"]
    assert items(api, "v2/datasets", projectid=project_id(api, "Empty")) == []
    files = items(api, f"v2/datasets/{ds['Id']}/files")
    assert sorted(f["Path"] for f in files) == ["r1.fastq.gz", "sub/r2.fastq.gz"]
    f = by_name(files, "r1.fastq.gz")
    assert f["Href"].startswith(emu.url) and f["HrefContent"] == f"{emu.url}v2/files/{f['Id']}/content"
    assert api.get(f["HrefContent"]).status_code == 302
    assert f["IdAsLong"] == int(f["Id"])
    assert [x["Name"] for x in items(api, f"v2/datasets/{ds['Id']}/files", directory="sub")] == ["r2.fastq.gz"]
    (bs,) = items(api, "v2/biosamples", projectid=pid)
    assert bs["BioSampleName"] == "BS-1" and bs["DefaultProject"]["Id"] == pid and bs["LabStatus"] == "Sequenced"
    assert bs["Href"].startswith(emu.url)


# -- paging and sorting ----------------------------------------------------------------------------


def test_paging_edges(api):
    pid = project_id(api)
    url = f"v1pre3/projects/{pid}/samples"
    first = ok(api, url)["Response"]
    assert (first["DisplayedCount"], first["TotalCount"], first["Offset"], first["Limit"]) == (10, 21, 0, 10)
    assert (first["SortBy"], first["SortDir"]) == ("Id", "Asc")
    ids = [s["Id"] for s in items(api, url, Limit=1024)]
    assert ids == sorted(ids, key=int)
    pages = [items(api, url, Offset=o, Limit=7) for o in (0, 7, 14, 21)]
    assert [len(p) for p in pages] == [7, 7, 7, 0]  # exact multiple of Limit, then an empty page
    assert [s["Id"] for page in pages for s in page] == ids
    clamped = ok(api, url, Limit=5000)["Response"]
    assert clamped["Limit"] == 1024 and clamped["DisplayedCount"] == 21
    zero = ok(api, url, limit=0)["Response"]
    assert zero["Items"] == [] and zero["TotalCount"] == 21 and zero["DisplayedCount"] == 0
    assert ok(api, f"v1pre3/samples/123/files", Limit=9999)["Response"]["Limit"] == 1000
    assert ok(api, f"v1pre3/projects/{project_id(api, 'Empty')}/samples")["Response"]["TotalCount"] == 0
    assert ok(api, "v2/datasets", limit=5000)["Paging"]["Limit"] == 1024
    bad = api.get(url, params={"Limit": "many"})
    assert bad.status_code == 400 and "Limit" in bad.json()["ResponseStatus"]["Message"]


def test_short_pages(api, emu):
    emu.set_knobs(short_pages=True)
    url = f"v1pre3/projects/{project_id(api)}/samples"
    page = ok(api, url, Limit=10)["Response"]
    assert page["DisplayedCount"] == 6 and page["Limit"] == 10 and page["TotalCount"] == 21


def test_sorting(api):
    url = f"v1pre3/projects/{project_id(api)}/samples"
    names = [s["Name"] for s in items(api, url, SortBy="Name", Limit=100)]
    assert names == sorted(names)
    desc = [s["Id"] for s in items(api, url, sortby="id", sortdir="desc", Limit=100)]
    assert desc == sorted(desc, key=int, reverse=True)
    sizes = [f["Size"] for f in items(api, "v1pre3/samples/123/files", SortBy="Size", SortDir="Desc")]
    assert sizes == sorted(sizes, reverse=True)
    paths = [f["Path"] for f in items(api, "v1pre3/samples/123/files", SortBy="Path")]
    assert paths == sorted(paths)
    assert api.get(url, params={"SortBy": "Size"}).status_code == 400  # only files sort by Size


# -- auth and errors ------------------------------------------------------------------------------


def test_auth(emu):
    url = emu.url + "v1pre3/users/current"
    for kwargs in ({}, {"headers": {"x-access-token": "wrong"}}, {"params": {"access_token": "nope"}}):
        r = httpx.get(url, **kwargs)
        assert r.status_code == 401
        assert r.json() == {
            "ResponseStatus": {
                "ErrorCode": "BASESPACE.COMMON.UNAUTHORIZED",
                "Message": "Please sign in to access this resource.",
            },
            "Notifications": [],
        }
    assert httpx.get(url, headers={"x-access-token": emu.token}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {emu.token}"}).status_code == 200
    assert httpx.get(url, params={"access_token": emu.token}).status_code == 200


def test_forbidden_and_not_found(api):
    for path, type_name in (
        ("v1pre3/samples/999", "Sample"),
        # recorded: real BaseSpace names a *Run* resource when a file id is unknown
        ("v1pre3/files/999", "Run"),
        ("v1pre3/files/999/content", "Run"),
        ("v1pre3/projects/1/samples", "Project"),
        ("v2/datasets/ds.00", "Dataset"),
    ):
        r = api.get(path)
        assert r.status_code == 403, path
        body = r.json()
        assert body["ResponseStatus"]["ErrorCode"] == "BASESPACE.COMMON.INSUFFICIENT_RESOURCE_PERMISSIONS"
        assert body["ResponseStatus"]["Message"] == f"Sorry but this requires READ access to this {type_name} resource."
        assert body["Notifications"] == [{"Type": "error", "Item": body["ResponseStatus"]["Message"]}]
        assert r.headers["content-type"] == "application/json; charset=utf-8"  # as recorded for 403s
    r = api.get(f"v1pre3/runs/123")  # a sample id is not a run id
    assert r.status_code == 403
    r = api.get("v1pre3/no/such/path")
    assert r.status_code == 404
    assert r.json()["ResponseStatus"]["Message"].startswith("This isn't a recognized path.")
    assert r.json()["Notifications"] == []
    assert r.headers["x-request-id"] and r.headers["cache-control"] == "private"  # as recorded
    ok_answer = api.get("v1pre3/users/current")
    assert ok_answer.headers["content-type"] == "application/json"
    assert ok_answer.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert ok_answer.headers["pragma"] == "no-cache" and ok_answer.headers["expires"] == "0"


# -- content --------------------------------------------------------------------------------------


def test_redirect_and_meta(api, emu):
    f = file_of(api, "Align", "small.bin")
    r = api.get(f"v1pre3/files/{f['Id']}/content")
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(emu.url + "_content/") and "Signature=" in location
    meta = ok(api, f"v1pre3/files/{f['Id']}/content", redirect="meta")["Response"]
    assert meta["SupportsRange"] is True and meta["Expires"].endswith(".0000000Z")
    got = httpx.get(meta["HrefContent"])  # no token needed: the URL is signed
    assert got.status_code == 200 and got.content == SMALL
    assert got.headers["accept-ranges"] == "bytes" and got.headers["content-length"] == str(len(SMALL))
    assert got.headers["etag"] == f'"{f["ETag"]}"'
    assert httpx.get(location.replace("Signature=", "Signature=0")).status_code == 403


def test_etag_is_the_content_md5_on_the_api_and_the_content_host(api, emu):
    small, big = file_of(api, "Align", "small.bin"), file_of(api, "Align", "big.bam")
    big_md5 = hashlib.md5()
    for off in range(0, BIG_SIZE, 8 * 1024 * 1024):
        big_md5.update(synthetic_bytes(BIG_SEED, off, min(8 * 1024 * 1024, BIG_SIZE - off)))
    assert small["ETag"] == hashlib.md5(SMALL).hexdigest()
    assert big["ETag"] == big_md5.hexdigest()  # synthetic files too
    for f in (small, big):
        assert ok(api, f"v1pre3/files/{f['Id']}")["Response"]["ETag"] == f["ETag"]
        assert ok(api, f"v2/files/{f['Id']}")["ETag"] == f["ETag"]
        head = httpx.head(content_url(api, f["Id"]))
        assert head.headers["etag"] == f'"{f["ETag"]}"'
        assert head.headers["content-disposition"] == f'attachment;filename="{f["Name"]}"'
        assert "cache-control" not in head.headers  # the S3-like host sends none
    v2_meta = ok(api, f"v2/files/{small['Id']}/content", redirect="meta")  # v2: not wrapped
    assert httpx.get(v2_meta["HrefContent"]).content == SMALL


def test_routes_real_basespace_has_and_the_emulator_lacked(api, emu):
    me = ok(api, "v2/users/current")
    assert me["Id"] == "77" and me["Name"] == "Ada" and me["Email"] == "ada@x.org" and me["Href"].startswith(emu.url)
    run = items(api, "v1pre3/users/current/runs")[0]
    assert [s["Name"] for s in items(api, f"v1pre3/runs/{run['Id']}/samples")] == ["S05"]  # its Input.Run
    f = items(api, "v1pre3/samples/123/files")[0]
    assert ok(api, f"v1pre3/files/{f['Id']}/properties")["Response"]["TotalCount"] == 0
    # v2 biosamples: a sort field v2 does not know is ignored (recorded: sortby=Name -> Id)
    assert ok(api, "v2/biosamples", sortby="Name")["Paging"]["SortBy"] == "Id"
    assert ok(api, "v2/biosamples", sortby="BioSampleName", sortdir="Desc")["Paging"]["SortBy"] == "BioSampleName"


def test_ranges(api):
    url = content_url(api, file_of(api, "Align", "small.bin")["Id"])
    n = len(SMALL)

    def get(rng):
        return httpx.get(url, headers={"Range": rng})

    r = get("bytes=10-19")
    assert r.status_code == 206 and r.content == SMALL[10:20] and r.headers["content-range"] == f"bytes 10-19/{n}"
    r = get("bytes=1000-")
    assert r.status_code == 206 and r.content == SMALL[1000:] and r.headers["content-length"] == "24"
    r = get("bytes=-5")
    assert r.status_code == 206 and r.content == SMALL[-5:] and r.headers["content-range"] == f"bytes {n-5}-{n-1}/{n}"
    r = get("bytes=-5000")
    assert r.status_code == 206 and r.content == SMALL
    r = get("bytes=1020-99999")  # past EOF: clamped
    assert r.status_code == 206 and r.content == SMALL[1020:] and r.headers["content-range"] == f"bytes 1020-1023/{n}"
    r = get(f"bytes={n}-")
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{n}" and b"InvalidRange" in r.content
    r = get("bytes=0-1,5-6")  # multi-range is not supported: whole object
    assert r.status_code == 200 and r.content == SMALL
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == SMALL and "content-range" not in r.headers
    r = httpx.head(url)
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(n)
    r = httpx.head(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.headers["content-length"] == "10"


def test_synthetic_100mib_byte_exact(api, emu):
    f = file_of(api, "Align", "big.bam")
    assert f["Size"] == BIG_SIZE
    url = content_url(api, f["Id"])
    h = hashlib.sha256()
    with httpx.stream("GET", url, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(BIG_SIZE)
        for chunk in r.iter_bytes():
            h.update(chunk)
    assert h.hexdigest() == synthetic_sha256(BIG_SEED, BIG_SIZE)
    middle = httpx.get(url, headers={"Range": "bytes=70000000-70100000"})
    assert middle.content == synthetic_bytes(BIG_SEED, 70_000_000, 100_001)
    counters = emu.counters()
    assert counters["requests"]["GET content"] == 2 and counters["content_bytes"] == BIG_SIZE + 100_001


def run_inprocess(tmp_path, scenario, **knobs):
    """``scenario(client, file_id)`` against the emulator's app in-process on trio's MockClock
    (tests/inprocess.py), with an account of one synthetic file ``small.bin`` (1000 bytes, seed 3)
    and ``knobs`` set: what a test of expiry, stalls, latency or bandwidth waits costs no wall time
    and is measured exactly, in virtual seconds."""
    import trio
    import trio.testing

    from conftest import write_synthetic
    from inprocess import BASE_URL, EmulatorTransport, emulator_app

    write_synthetic(tmp_path / "acc" / "Projects" / "P" / "Samples" / "S" / "Files" / "small.bin", 1000, 3)
    emulator, app = emulator_app(tmp_path / "acc")
    emulator.knobs.merge(knobs)
    file_id = next(iter(emulator.account.files.values())).id

    async def main():
        headers = {"x-access-token": emulator.token}
        async with httpx.AsyncClient(transport=EmulatorTransport(app), base_url=BASE_URL, headers=headers) as client:
            return await scenario(client, file_id)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def content_url_of(client, file_id) -> str:
    meta = await client.get(f"v1pre3/files/{file_id}/content", params={"redirect": "meta"})
    return meta.json()["Response"]["HrefContent"]


def test_url_expiry(tmp_path):
    import trio

    async def scenario(client, file_id):
        url = await content_url_of(client, file_id)
        fresh = await client.get(url)
        await trio.sleep(2.1)  # virtual
        return fresh, await client.get(url)

    fresh, r = run_inprocess(tmp_path, scenario, url_lifetime=1)
    assert fresh.status_code == 200 and fresh.content == synthetic_bytes(3, 0, 1000)
    assert r.status_code == 403
    assert b"<Code>AccessDenied</Code>" in r.content and b"Request has expired" in r.content


# -- faults and knobs ---------------------------------------------------------------------------


def test_fail_next_status_faults(api, emu):
    emu.set_knobs(
        retry_after=3,
        fail_next=[
            {"kind": "500", "count": 1, "scope": "api"},
            {"kind": "503", "count": 1, "scope": "api"},
            {"kind": "429", "count": 2, "scope": "api"},
        ],
    )
    statuses = [api.get("v1pre3/users/current") for _ in range(5)]
    assert [r.status_code for r in statuses] == [500, 503, 429, 429, 200]
    assert statuses[2].headers["retry-after"] == "3"
    assert emu.counters()["faults"] == {"500": 1, "503": 1, "429": 2}
    assert emu.knobs()["fail_next"] == []


def test_fault_scope_content_only(api, emu):
    url = content_url(api, file_of(api, "Align", "small.bin")["Id"])
    emu.set_knobs(fail_next=[{"kind": "503", "count": 1, "scope": "content"}])
    assert api.get("v1pre3/users/current").status_code == 200  # API requests do not consume it
    r = httpx.get(url)
    assert r.status_code == 503 and b"SlowDown" in r.content
    assert httpx.get(url).status_code == 200


def test_reset_and_truncate(api, emu):
    url = content_url(api, file_of(api, "Align", "big.bam")["Id"])
    emu.set_knobs(fail_next=[{"kind": "reset", "count": 1, "scope": "content"}])
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, timeout=10)
    emu.set_knobs(fail_next=[{"kind": "truncate", "count": 1, "scope": "content"}])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, timeout=10)
    assert emu.counters()["faults"] == {"reset": 1, "truncate": 1}
    assert httpx.get(url, headers={"Range": "bytes=0-9"}).status_code == 206  # back to normal


def test_stall_and_latency(tmp_path):
    import trio

    async def scenario(client, file_id):
        url = await content_url_of(client, file_id)
        client.timeout = httpx.Timeout(10, read=0.5)
        await client.post("_emulator/knobs", json={"stall_seconds": 1.5, "fail_next": [{"kind": "stall", "count": 1, "scope": "content"}]})
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url)
        took = []
        for knobs in ({"stall_seconds": 0.6, "fail_next": [{"kind": "stall", "count": 1, "scope": "api"}]}, {"latency_ms": 300}):
            await client.post("_emulator/knobs", json=knobs)
            client.timeout = httpx.Timeout(10)
            t0 = trio.current_time()
            assert (await client.get("v1pre3/users/current")).status_code == 200
            took.append(trio.current_time() - t0)
        return took

    stalled, latency = run_inprocess(tmp_path, scenario)
    assert stalled == pytest.approx(0.6, abs=0.01)
    assert latency == pytest.approx(0.3, abs=0.01)


def test_random_rates_are_seeded(api, emu):
    def run() -> list[int]:
        emu.set_knobs(error_rate=0.3, throttle_rate=0.2, fault_seed=1, fault_scope="api")
        codes = [api.get("v1pre3/users/current").status_code for _ in range(40)]
        emu.set_knobs(error_rate=0, throttle_rate=0, fault_seed=0)
        return codes

    first = run()
    assert first == run()  # same seed, same faults
    assert {500, 503, 429, 200} <= set(first)
    r = emu.set_knobs(fault_scope="content", error_rate=1.0)
    assert r["error_rate"] == 1.0 and api.get("v1pre3/users/current").status_code == 200


def test_bandwidth_cap(tmp_path):
    import trio

    async def scenario(client, file_id):
        url = await content_url_of(client, file_id)
        t0 = trio.current_time()
        r = await client.get(url)
        return r, trio.current_time() - t0

    r, elapsed = run_inprocess(tmp_path, scenario, conn_bandwidth=0.001)  # 1000 bytes at 1 kB/s
    assert r.content == synthetic_bytes(3, 0, 1000)
    assert elapsed == pytest.approx(1.0, abs=0.05)


def test_knobs_validation(emu):
    for bad in ({"error_rate": 2}, {"nope": 1}, {"fail_next": [{"kind": "boom"}]}, {"fault_scope": "x"}):
        r = httpx.post(emu.url + "_emulator/knobs", json=bad)
        assert r.status_code == 400 and r.json()["error"]
    r = httpx.post(emu.url + "_emulator/knobs", content=b"{not json")
    assert r.status_code == 400


def test_counters_by_route(api, emu):
    pid = project_id(api)
    api.get(f"v1pre3/projects/{pid}/samples")
    api.get(f"v1pre3/projects/{pid}/samples")
    c = emu.counters()["requests"]
    assert c["GET v1pre3/projects/{id}/samples"] == 2 and c["GET v1pre3/users/current/projects"] == 1
    emu.reset_counters()
    assert emu.counters() == {"requests": {}, "faults": {}, "content_bytes": 0}


# -- device flow --------------------------------------------------------------------------------------


def test_device_flow(emu):
    base = emu.url + "v1pre3/oauthv2/"
    start = httpx.post(base + "deviceauthorization", data={"client_id": "c1", "response_type": "device_code", "scope": "READ GLOBAL"})
    assert start.status_code == 200
    codes = start.json()
    assert {"device_code", "user_code", "verification_uri", "verification_with_code_uri", "expires_in", "interval"} <= set(codes)
    form = {"client_id": "c1", "client_secret": "s", "code": codes["device_code"], "grant_type": "device"}
    pending = httpx.post(base + "token", data=form)
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    page = httpx.get(codes["verification_with_code_uri"])
    assert page.status_code == 200 and "approved" in page.text
    granted = httpx.post(base + "token", data=form)
    assert granted.status_code == 200
    token = granted.json()["access_token"]
    assert granted.json()["expires_in"] > 0
    me = httpx.get(emu.url + "v1pre3/users/current", headers={"x-access-token": token})
    assert me.status_code == 200
    current = httpx.get(base + "token/current", headers={"Authorization": f"Bearer {token}"}).json()["Response"]
    assert current["AccessToken"] == token[:4] + "…" and current["Application"]["Id"] == "c1"
    again = httpx.post(base + "token", data=form)  # a device code yields one token
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    unknown = httpx.post(base + "token", data={**form, "code": "nope"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"


# -- folder changes, restarts, bad folders ---------------------------------------------------------


def test_reload_and_restart_keep_ids(tmp_path):
    root = str(tmp_path / "acct")
    _write(os.path.join(root, "Projects", "P", "Samples", "A", "Files", "a.txt"), b"a")
    _write(os.path.join(root, "Projects", "P", "Samples", "C", "Files", "c.txt"), b"c")
    with EmulatorProcess(root, token="secret-token-1") as em:
        api = httpx.Client(base_url=em.url, headers={"x-access-token": "secret-token-1"})
        pid = items(api, "v1pre3/users/current/projects")[0]["Id"]
        before = {s["Name"]: s["Id"] for s in items(api, f"v1pre3/projects/{pid}/samples")}
        file_before = items(api, f"v1pre3/samples/{before['A']}/files")[0]["Id"]
        _write(os.path.join(root, "Projects", "P", "Samples", "B", "Files", "b.txt"), b"b")
        assert em.reload()["projects"] == 1
        after = {s["Name"]: s["Id"] for s in items(api, f"v1pre3/projects/{pid}/samples")}
        assert set(after) == {"A", "B", "C"} and all(after[k] == v for k, v in before.items())
        port = em.port
        em.restart()
        assert em.port == port
        api = httpx.Client(base_url=em.url, headers={"x-access-token": "secret-token-1"})
        again = {s["Name"]: s["Id"] for s in items(api, f"v1pre3/projects/{pid}/samples")}
        assert again == after
        assert items(api, f"v1pre3/samples/{before['A']}/files")[0]["Id"] == file_before
        # a broken .entity.json makes reload fail clearly and keeps serving the old model
        _write(os.path.join(root, "Projects", "P", ".entity.json"), b"{oops")
        r = httpx.post(em.url + "_emulator/reload")
        assert r.status_code == 400 and ".entity.json" in r.json()["error"]
        assert api.get("v1pre3/users/current").status_code == 200
    assert "secret-token-1" not in em.log_tail()


def _serve(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "basemount_py.emulator", *args], capture_output=True, text=True, timeout=20
    )


def _serve_in_process(*args) -> subprocess.CompletedProcess:
    """``python -m basemount_py.emulator ARGS``'s own function (``run``) in this process, for the
    refusals that end before it listens: the same code and message without a Python start."""
    import contextlib
    import io
    from unittest import mock

    from basemount_py.emulator.__main__ import run

    err = io.StringIO()
    with mock.patch.object(sys, "argv", ["python -m basemount_py.emulator", *args]), contextlib.redirect_stderr(err):
        code = run()
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def test_invalid_account_folder(tmp_path):
    missing = str(tmp_path / "missing")
    bad = tmp_path / "bad"
    _write(str(bad / "Projects" / "P" / ".entity.json"), b"[1, 2")
    r = _serve("--data", missing)  # a real process: the exit code and one stderr line as a shell sees them
    broken = _serve_in_process("--data", str(bad))
    unmarked = _serve_in_process("--data", str(tmp_path))  # no account markers
    bad_knob = _serve_in_process("--data", str(bad), "--error-rate", "3")
    assert r.returncode == 2 and missing in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert broken.returncode == 2 and ".entity.json" in broken.stderr and "Traceback" not in broken.stderr
    assert unmarked.returncode == 2 and "not an account folder" in unmarked.stderr
    assert bad_knob.returncode == 2 and "error_rate" in bad_knob.stderr and "Traceback" not in bad_knob.stderr


def test_default_token_from_account_json(tmp_path):
    root = str(tmp_path / "acct")
    _write(os.path.join(root, "account.json"), json.dumps({"AccessToken": "from-json"}))
    with EmulatorProcess(root, short_pages=True) as em:
        assert em.token == "from-json"
        assert httpx.get(em.url + "v1pre3/users/current", headers={"x-access-token": "from-json"}).status_code == 200
        assert httpx.get(em.url + "v1pre3/users/current", headers={"x-access-token": DEFAULT_TOKEN}).status_code == 401
        assert em.knobs()["short_pages"] is True  # runtime-only knobs applied after start


def test_odd_names_and_unsafe_entries(tmp_path):
    root = os.fsencode(str(tmp_path / "acct"))
    files = os.path.join(root, b"Projects", b"P", b"Samples", b"bad\xffname", b"Files")
    os.makedirs(files)
    _write(os.path.join(files, b"new\nline.txt"), b"n")
    _write(os.path.join(root, b"Runs", b"R", b"Files", b"inside.txt"), b"inside")
    os.symlink(os.path.join(root, b"Runs", b"R", b"Files", b"inside.txt"), os.path.join(files, b"link-in.txt"))
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    os.symlink(os.fsencode(str(outside)), os.path.join(files, b"link-out.txt"))
    os.mkfifo(os.path.join(files, b"fifo"))
    with EmulatorProcess(os.fsdecode(root)) as em:
        api = httpx.Client(base_url=em.url, headers={"x-access-token": em.token})
        pid = items(api, "v1pre3/users/current/projects")[0]["Id"]
        (sample,) = items(api, f"v1pre3/projects/{pid}/samples")
        assert sample["Name"] == "bad\ufffdname"
        listed = {f["Name"]: f for f in items(api, f"v1pre3/samples/{sample['Id']}/files")}
        assert set(listed) == {"new\nline.txt", "link-in.txt"}  # outside symlink and FIFO skipped
        assert httpx.get(content_url(api, listed["link-in.txt"]["Id"])).content == b"inside"
        assert httpx.get(content_url(api, listed["new\nline.txt"]["Id"])).content == b"n"


def test_synthetic_bytes_random_access():
    whole = synthetic_bytes(9, 0, 3 * 1024 * 1024 + 17)
    for offset, length in ((0, 1), (65535, 2), (1048570, 70000), (2 * 1048576 - 3, 1048576 + 20), (5, 0)):
        assert synthetic_bytes(9, offset, length) == whole[offset : offset + length]
    assert synthetic_bytes(9, 0, 4096) != synthetic_bytes(10, 0, 4096)
    assert hashlib.sha256(whole).hexdigest() == synthetic_sha256(9, len(whole))
