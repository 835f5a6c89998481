"""The emulator answers in the shapes real BaseSpace sends (issue 10).

Each route's answer is checked against a shape derived from recorded real traffic
(``tests/conformance/recorded.json``, made by ``tests/conformance/derive.py``; the sources are
named in the file): every missing field, extra field, wrong JSON type, wrong string format
(dates, Hrefs, ids) and wrong header value fails.  Routes no recording covers are checked
against the recorded shape of the same entity elsewhere, widened by the fields the SDK models
or the v2 swagger allow (``tests/conformance/models.json``); docs/emulator.md has the table.

v2 answers are also checked the way a client generated from the v2 swagger reads them
(``tests/conformance/swagger_v2.json``): required fields, declared types, formats, enums.

The emulator serves the generated demo account (every kind of entity, properties that name
samples and runs, datasets, biosamples), and every item of every list is checked.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conformance.shapes import problems

HERE = Path(__file__).resolve().parent / "conformance"
RECORDED = json.loads((HERE / "recorded.json").read_text())
MODELS = json.loads((HERE / "models.json").read_text())


def recorded(route: str) -> dict[str, Any]:
    return RECORDED["routes"][route]


def sub(shape: dict[str, Any], *path: str) -> dict[str, Any]:
    """The shape at ``path`` ("[]" steps into array items)."""
    for step in path:
        shape = shape["items"] if step == "[]" else shape["fields"][step]
    return copy.deepcopy(shape)


def v1_envelope(response: dict[str, Any]) -> dict[str, Any]:
    env = copy.deepcopy(recorded("GET v1pre3/projects/{id}")["body"])
    env["fields"]["Response"] = response
    return env


def v1_list(item: dict[str, Any] | None) -> dict[str, Any]:
    env = copy.deepcopy(recorded("GET v1pre3/users/current/projects")["body"])
    env["fields"]["Response"]["fields"]["Items"]["items"] = item
    return env


def v2_list(item: dict[str, Any]) -> dict[str, Any]:
    env = copy.deepcopy(recorded("GET v2/biosamples")["body"])
    env["fields"]["Items"]["items"] = item
    return env


def widened(shape: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """``shape`` plus the model's other fields, optional and of any type (not recorded)."""
    out = copy.deepcopy(shape)
    any_type = ["string", "integer", "number", "boolean", "null", "object", "array"]
    for name in allowed:
        out["fields"].setdefault(name, {"types": any_type, "optional": True})
    return out


def _entity_items() -> dict[str, dict[str, Any]]:
    """The recorded v1pre3 list-item shape of each entity a property can name."""
    return {
        "sample": sub(recorded("GET v1pre3/projects/{id}/samples")["body"], "Response", "Items", "[]"),
        "appresult": sub(recorded("GET v1pre3/projects/{id}/appresults")["body"], "Response", "Items", "[]"),
        "project": sub(recorded("GET v1pre3/users/current/projects")["body"], "Response", "Items", "[]"),
        "file": sub(recorded("GET v1pre3/appresults/{id}/files")["body"], "Response", "Items", "[]"),
        "run": sub(recorded("GET v1pre3/samples/{id}")["body"], "Response", "Properties", "Items", "[]", "Items", "[]"),
    }


def with_property_cases(shape: dict[str, Any]) -> dict[str, Any]:
    """Property objects (``Properties.Items[]`` and ``.../properties`` items) checked by Type:
    the items of a ``sample[]`` property against the recorded sample item, and so on, and the
    ``Content`` of a ``string`` property as free text."""
    entities = _entity_items()
    cases: dict[str, dict[str, Any]] = {
        "string": {"Content": {"types": ["string"], "optional": True}},
        "string[]": {"Items": {"types": ["array"], "items": {"types": ["string"]}, "optional": True}},
    }
    for kind, item in entities.items():
        cases[kind] = {"Content": dict(item, optional=True)}
        cases[kind + "[]"] = {"Items": {"types": ["array"], "items": item, "optional": True}}

    def visit(node: dict[str, Any], key: str, parent: str) -> None:
        if key == "Items" and parent == "Properties" and node.get("items"):
            node["items"]["case_field"] = "Type"
            node["items"]["cases"] = cases
        for name, child in node.get("fields", {}).items():
            visit(child, name, key)
        if node.get("items"):
            visit(node["items"], "[]", key)

    out = copy.deepcopy(shape)
    visit(out, "$", "")
    return out


def _shapes_for_unrecorded_routes() -> dict[str, dict[str, Any]]:
    """Shapes of routes no recording covers, composed from recorded shapes of the same entities."""
    samples = recorded("GET v1pre3/projects/{id}/samples")["body"]
    sample_get = recorded("GET v1pre3/samples/{id}")["body"]
    ar_files = recorded("GET v1pre3/appresults/{id}/files")["body"]
    sample_item = sub(samples, "Response", "Items", "[]")
    run_item = sub(sample_get, "Response", "Properties", "Items", "[]", "Items", "[]")
    property_item = with_property_cases({"types": ["object"], "fields": {"Properties": {"types": ["object"], "fields": {"Items": {"types": ["array"], "items": sub(sample_get, "Response", "Properties", "Items", "[]")}}}}})["fields"]["Properties"]["fields"]["Items"]["items"]
    v1_user = sub(samples, "Response", "Items", "[]", "UserOwnedBy")
    v1_session = sub(recorded("GET v1pre3/projects/{id}/appresults")["body"], "Response", "Items", "[]", "AppSession")
    datasets = recorded("GET v2/datasets")["body"]
    dataset_item = sub(datasets, "Items", "[]")
    v2_user = sub(recorded("GET v2/appsessions")["body"], "Items", "[]", "UserCreatedBy")
    meta = sub(recorded("GET v1pre3/files/{id}/content")["body"], "Response")
    run_get = widened(run_item, MODELS["v1pre3"]["Run"])
    for name in ("HrefFiles", "HrefSamples", "Properties"):
        run_get["fields"][name]["optional"] = False
    dataset_get = widened(dataset_item, MODELS["v2"]["V2Dataset"])
    dataset_get["fields"]["ValidationsPerformed"]["optional"] = False
    return {
        "GET v1pre3/users/current": v1_envelope(widened(v1_user, MODELS["v1pre3"]["User"])),
        "GET v1pre3/users/current/runs": v1_list(run_item),
        "GET v1pre3/users/current/appsessions": v1_list(v1_session),
        "GET v1pre3/runs/{id}": v1_envelope(run_get),
        "GET v1pre3/runs/{id}/files": ar_files,
        "GET v1pre3/runs/{id}/samples": v1_list(sample_item),
        "GET v1pre3/samples/{id}/files": ar_files,
        "GET v1pre3/samples/{id}/properties": v1_list(property_item),
        "GET v1pre3/appresults/{id}/properties": v1_list(property_item),
        "GET v1pre3/files/{id}/properties": v1_list(None),
        "GET v2/users/current": widened(v2_user, MODELS["v2"]["V2User"]),
        "GET v2/datasets/{id}": dataset_get,
        "GET v2/projects/{id}/datasets": datasets,
        "GET v2/biosamples/{id}": sub(recorded("GET v2/biosamples")["body"], "Items", "[]"),
        "GET v2/files/{id}": sub(recorded("GET v2/datasets/{id}/files")["body"], "Items", "[]"),
        "GET v2/files/{id}/content": meta,
    }


UNRECORDED = _shapes_for_unrecorded_routes()
API_HEADERS = recorded("GET v1pre3/projects/{id}")["headers"]


def shape_of(route: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(body shape, header values) real BaseSpace answers ``route`` with."""
    if route in RECORDED["routes"]:
        spec = recorded(route)
        return with_property_cases(spec["body"]), spec["headers"] or API_HEADERS
    if route == "GET v2/files/{id}/content":  # the v1pre3 route's answer, unwrapped
        return UNRECORDED[route], recorded("GET v1pre3/files/{id}/content")["headers"]
    return UNRECORDED[route], API_HEADERS


def body_problems(route: str, body: Any) -> list[str]:
    """Every difference between an answer's body and the real shape of ``route``."""
    return problems(body, shape_of(route)[0])


def check(route: str, response: httpx.Response) -> list[str]:
    """Every difference between an emulator answer and the real answer of ``route``."""
    out = []
    expected_status = int(route.split(" -> ")[1]) if " -> " in route else 200
    if response.status_code != expected_status:
        out.append(f"status {response.status_code}, real BaseSpace answers {expected_status}")
    for name, value in shape_of(route)[1].items():
        got = response.headers.get(name)
        if got is None:
            out.append(f"header {name}: missing")
        elif value is not None and got != value:
            out.append(f"header {name}: {got!r}, real BaseSpace sends {value!r}")
    return out + body_problems(route, response.json())


# -- the account's ids ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(demo_emulator):
    with httpx.Client(base_url=demo_emulator.url, headers={"x-access-token": demo_emulator.token}, timeout=60) as c:
        yield c


def _items(api: httpx.Client, path: str, **query: Any) -> list[dict[str, Any]]:
    r = api.get(path, params={"Limit": 1024, **query})
    r.raise_for_status()
    body = r.json()
    return body["Response"]["Items"] if "Response" in body else body["Items"]


@pytest.fixture(scope="module")
def ids(api) -> dict[str, str]:
    projects = _items(api, "v1pre3/users/current/projects")
    out: dict[str, str] = {"project": projects[0]["Id"]}
    for p in projects:
        for s in _items(api, f"v1pre3/projects/{p['Id']}/samples"):
            if _items(api, f"v1pre3/samples/{s['Id']}/files") and "sample" not in out:
                out["sample"] = s["Id"]
                out["sample_file"] = _items(api, f"v1pre3/samples/{s['Id']}/files")[0]["Id"]
        for r in _items(api, f"v1pre3/projects/{p['Id']}/appresults"):
            props = api.get(f"v1pre3/appresults/{r['Id']}/properties").json()["Response"]["Items"]
            if any(x["Type"] == "sample[]" for x in props) and "appresult" not in out:
                out["appresult"] = r["Id"]
                out["appresult_file"] = _items(api, f"v1pre3/appresults/{r['Id']}/files")[0]["Id"]
    out["run"] = _items(api, "v1pre3/users/current/runs")[0]["Id"]
    datasets = _items(api, "v2/datasets", limit=1024)
    out["dataset"] = datasets[0]["Id"]
    out["biosample"] = _items(api, "v2/biosamples", limit=1024)[0]["Id"]
    out["dataset_file"] = _items(api, f"v2/datasets/{out['dataset']}/files", limit=1024)[0]["Id"]
    sessions = _items(api, "v1pre3/users/current/appsessions")
    out["appsession"] = next(s["Id"] for s in sessions if s["Name"].startswith("DRAGEN"))
    assert {"sample", "appresult", "sample_file", "appresult_file"} <= set(out)
    return out


# route -> requests that exercise it (queries as the recorded clients sent them)
REQUESTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "GET v1pre3/users/current": [("v1pre3/users/current", {})],
    "GET v1pre3/users/current/projects": [("v1pre3/users/current/projects", {"Offset": 0, "Limit": 1024})],
    "GET v1pre3/users/current/runs": [("v1pre3/users/current/runs", {"Limit": 1024})],
    "GET v1pre3/users/current/appsessions": [("v1pre3/users/current/appsessions", {"Limit": 1024})],
    "GET v1pre3/projects/{id}": [("v1pre3/projects/{project}", {"Offset": 0, "Limit": 512})],
    "GET v1pre3/projects/{id}/samples": [("v1pre3/projects/{project}/samples", {"Offset": 0, "Limit": 512})],
    "GET v1pre3/projects/{id}/appresults": [("v1pre3/projects/{project}/appresults", {"Offset": 0, "Limit": 55})],
    "GET v1pre3/samples/{id}": [("v1pre3/samples/{sample}", {"Offset": 0, "Limit": 512})],
    "GET v1pre3/samples/{id}/files": [("v1pre3/samples/{sample}/files", {"Limit": 512})],
    "GET v1pre3/samples/{id}/properties": [("v1pre3/samples/{sample}/properties", {})],
    "GET v1pre3/appresults/{id}": [("v1pre3/appresults/{appresult}", {"Offset": 0, "Limit": 512})],
    "GET v1pre3/appresults/{id}/files": [("v1pre3/appresults/{appresult}/files", {"Offset": 0, "Limit": 512})],
    "GET v1pre3/appresults/{id}/properties": [("v1pre3/appresults/{appresult}/properties", {})],
    "GET v1pre3/appsessions/{id}": [("v1pre3/appsessions/{appsession}", {})],
    "GET v1pre3/runs/{id}": [("v1pre3/runs/{run}", {})],
    "GET v1pre3/runs/{id}/files": [("v1pre3/runs/{run}/files", {"Limit": 1000})],
    "GET v1pre3/runs/{id}/samples": [("v1pre3/runs/{run}/samples", {"Limit": 1024})],
    "GET v1pre3/files/{id}": [
        ("v1pre3/files/{sample_file}", {"Offset": 0, "Limit": 512}),
        ("v1pre3/files/{appresult_file}", {"Offset": 0, "Limit": 512}),
    ],
    "GET v1pre3/files/{id}/properties": [("v1pre3/files/{sample_file}/properties", {})],
    "GET v1pre3/files/{id}/content": [("v1pre3/files/{sample_file}/content", {"redirect": "meta"})],
    "GET v1pre3/files/{id} -> 403": [("v1pre3/files/1111111", {})],
    "GET (unknown path) -> 404": [("v2/v2/datasets", {"inputbiosamples": "1"})],
    "GET v2/users/current": [("v2/users/current", {})],
    "GET v2/appsessions": [
        ("v2/appsessions", {"output.projects": "{project}", "sortby": "Name", "offset": 0, "limit": 100}),
        ("v2/appsessions", {"limit": 1024}),
    ],
    "GET v2/biosamples": [("v2/biosamples", {"projectid": "{project}", "sortby": "Name", "offset": 0, "limit": 512})],
    "GET v2/biosamples/{id}": [("v2/biosamples/{biosample}", {})],
    "GET v2/datasets": [
        (
            "v2/datasets",
            {
                "include": "properties",
                "propertyfilters": "Input.Libraries,Input.Runs,BaseSpace.Metrics.FastQ",
                "datasettypes": "~common.fastq",
                "sortby": "Name",
                "offset": 0,
                "limit": 512,
                "sortdir": "Asc",
            },
        ),
        ("v2/datasets", {"limit": 1024}),
    ],
    "GET v2/datasets/{id}": [("v2/datasets/{dataset}", {})],
    "GET v2/datasets/{id}/files": [("v2/datasets/{dataset}/files", {"sortby": "Name", "offset": 0, "limit": 512})],
    "GET v2/projects/{id}/datasets": [("v2/projects/{project}/datasets", {"limit": 1024})],
    "GET v2/files/{id}": [("v2/files/{dataset_file}", {})],
    "GET v2/files/{id}/content": [("v2/files/{dataset_file}/content", {"redirect": "meta"})],
}


def test_every_recorded_route_is_exercised():
    assert set(RECORDED["routes"]) <= set(REQUESTS)
    assert set(REQUESTS) == set(RECORDED["routes"]) | set(UNRECORDED)


@pytest.mark.parametrize("route", sorted(REQUESTS))
def test_route_answers_in_the_real_shape(route, api, ids):
    for path, query in REQUESTS[route]:
        url = path.format(**ids)
        q = {k: str(v).format(**ids) for k, v in query.items()}
        response = api.get(url, params=q)
        found = check(route, response)
        assert found == [], f"{url}?{q}:\n  " + "\n  ".join(found)


def test_lists_checked_here_are_not_empty(api, ids):
    """A list with no items would check nothing: every listing above has items to check."""
    for route, requests in REQUESTS.items():
        for path, query in requests:
            body = api.get(path.format(**ids), params={k: str(v).format(**ids) for k, v in query.items()}).json()
            items = body.get("Items", (body.get("Response") or {}).get("Items"))
            if items is not None and route != "GET v1pre3/files/{id}/properties":
                assert items, f"{route}: {path} lists nothing, so nothing of it is checked"


# -- what a client generated from the v2 swagger demands ---------------------------------------

SWAGGER = json.loads((HERE / "swagger_v2.json").read_text())
SWAGGER_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?$")
SWAGGER_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def swagger_problems(value: Any, spec: dict[str, Any], path: str = "$") -> list[str]:
    """What makes a swagger-generated client reject ``value``: a missing required field, a value
    not of the declared type, format or enum.  Undeclared fields are ignored, as such clients do."""
    if value is None:
        return []
    if "ref" in spec:
        model = SWAGGER["definitions"][spec["ref"]]
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where {spec['ref']} is an object"]
        out = [f"{path}.{name}: required by {spec['ref']}, missing" for name in model["required"] if name not in value]
        for name, sub in model["properties"].items():
            if name in value:
                out += swagger_problems(value[name], sub, f"{path}.{name}")
        return out
    kind = spec.get("type")
    if kind and not SWAGGER_TYPES[kind](value):
        return [f"{path}: {value!r} is not of the declared type {kind}"]
    if spec.get("format") == "date-time" and not SWAGGER_DATE.match(value):
        return [f"{path}: {value!r} is not a date-time"]
    if "enum" in spec and value not in spec["enum"]:
        return [f"{path}: {value!r} is not one of {spec['enum']}"]
    if kind == "array" and spec.get("items"):
        return [p for i, item in enumerate(value) for p in swagger_problems(item, spec["items"], f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("route", sorted(SWAGGER["routes"]))
def test_v2_route_satisfies_a_client_generated_from_the_swagger(route, api, ids):
    model = {"ref": SWAGGER["routes"][route]}
    for path, query in REQUESTS[route]:
        body = api.get(path.format(**ids), params={k: str(v).format(**ids) for k, v in query.items()}).json()
        found = swagger_problems(body, model)
        assert found == [], f"{path}:\n  " + "\n  ".join(found)


def test_swagger_check_catches_what_breaks_a_generated_client(api, ids):
    body = api.get("v2/datasets", params={"limit": 1024}).json()
    del body["Items"][0]["DatasetType"]["ConformsToIds"]
    body["Paging"]["SortBy"] = "Id"
    body["Items"][-1]["TotalSize"] = "5"
    last = len(body["Items"]) - 1
    assert swagger_problems(body, {"ref": SWAGGER["routes"]["GET v2/datasets"]}) == [
        "$.Items[0].DatasetType.ConformsToIds: required by V2DatasetTypeCompact, missing",
        f"$.Items[{last}].TotalSize: '5' is not of the declared type integer",
        "$.Paging.SortBy: 'Id' is not one of "
        + str(SWAGGER["definitions"]["V2DatasetsSortFieldsV2Paging"]["properties"]["SortBy"]["enum"]),
    ]


# -- the checker itself: it must catch an added or a dropped field ------------------------------


def test_checker_reports_an_added_and_a_dropped_field(api, ids):
    response = api.get(f"v1pre3/samples/{ids['sample']}")
    assert check("GET v1pre3/samples/{id}", response) == []
    body = response.json()

    added = copy.deepcopy(body)
    added["Response"]["DateModified"] = added["Response"]["DateCreated"]
    assert problems(added, recorded("GET v1pre3/samples/{id}")["body"]) == [
        "$.Response.DateModified: extra field (the real API never sends it)"
    ]

    dropped = copy.deepcopy(body)
    del dropped["Response"]["Library"]["BiologicalSample"]["NucleicAcid"]
    assert problems(dropped, recorded("GET v1pre3/samples/{id}")["body"]) == [
        "$.Response.Library.BiologicalSample.NucleicAcid: missing (the real API always sends it)"
    ]

    retyped = copy.deepcopy(body)
    retyped["Response"]["TotalSize"] = str(retyped["Response"]["TotalSize"])
    retyped["Response"]["DateCreated"] = "2024-01-15 21:05:44"
    assert problems(retyped, recorded("GET v1pre3/samples/{id}")["body"]) == [
        "$.Response.DateCreated: '2024-01-15 21:05:44' is not in the real format bs-date",
        "$.Response.TotalSize: string where the real API sends integer",
    ]


def test_checker_reports_a_field_dropped_from_a_list_item_and_a_wrong_header(api, ids):
    response = api.get(f"v1pre3/projects/{ids['project']}/samples")
    body = response.json()
    del body["Response"]["Items"][-1]["Genome"]
    last = len(body["Response"]["Items"]) - 1
    assert body_problems("GET v1pre3/projects/{id}/samples", body) == [
        f"$.Response.Items[{last}].Genome: missing (the real API always sends it)"
    ]
    fake = httpx.Response(200, headers={"Content-Type": "application/json; charset=utf-8"}, json=response.json())
    found = check("GET v1pre3/projects/{id}/samples", fake)
    assert "header Content-Type: 'application/json; charset=utf-8', real BaseSpace sends 'application/json'" in found
    assert "header Cache-Control: missing" in found


def test_recorded_shapes_name_their_sources_and_hold_no_recorded_values():
    source = RECORDED["source"]
    assert source["repository"].endswith("emedgene/fs_basespace") and len(source["commit"]) == 40
    text = (HERE / "recorded.json").read_text()
    # shapes only: no recorded value (people's names, ids, hosts) is stored
    assert "illumina.com" not in text and not re.search(r'"\d{6,}"', text)
    assert urlsplit(source["repository"]).netloc == "github.com"
