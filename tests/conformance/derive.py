"""Derive ``recorded.json`` (the shapes of real BaseSpace answers) from recorded real traffic.

Source of truth: the VCR cassettes of ``emedgene/fs_basespace`` (MIT licence),
``tests/fixtures/cassettes/**/*.yaml``: real requests to api.basespace.illumina.com and their
answers, 2021-2025.  Only the derived shapes are committed (field names, JSON types, string
formats, header values), never the recordings, which hold people's names.

    python3 tests/conformance/derive.py FS_BASESPACE_DIR FS_COMMIT SDK_DIR SDK_COMMIT \
        > tests/conformance/recorded.json

A second, older source fills one route the cassettes lack: ``test/appsession.json`` of
``basespace/basespace-python-sdk`` (Apache 2.0), a real ``GET v1pre3/appsessions/{id}`` answer
(2015; its dates have no ``Z``, so that route's dates get no format).

Needs PyYAML (only this tool; the tests read the JSON).  Steps:

1. group answers by route template (numeric ids and ``ds.<hex>`` ids become ``{id}``) and status;
2. derive one shape per route (``shapes.derive``): a field is optional when some recorded
   answer of that route lacks it;
3. unify across routes: objects reached through the same field name in the same API version
   (``Application``, ``UserOwnedBy``, ``AppSession``...) are the same kind of entity, so a field
   that one route's recordings lack is optional in every route, and a field seen in one route
   is allowed (optional) in the others.  This keeps a value-dependent field (an app without a
   ``HomepageUri``) from being "required" only because one route happened to record it.  The
   items of ``Properties.Items`` are one kind too (a string property has ``Content``, an array
   property ``Items``...);
4. keep the response headers whose value never varied (Content-Type, Cache-Control, Pragma,
   Expires); a varying one is only required to be present.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import sys
from collections import defaultdict
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import derive  # noqa: E402

API_HOST = "api.basespace.illumina.com"
HEADERS = ("Content-Type", "Cache-Control", "Pragma", "Expires")
GENERIC_KEYS = {"$", "Response", "Items", "[]", "Paging", "ResponseStatus"}
KNOWN_ROUTES = re.compile(r"^(v1pre3|v2)/(?!v2/)")


def route_of(method: str, path: str, status: int) -> str:
    template = re.sub(r"/(\d+|ds\.[0-9a-f]{32})(?=/|$)", "/{id}", path).lstrip("/")
    if not KNOWN_ROUTES.match(template):
        template = "(unknown path)"
    return f"{method} {template}" + ("" if status == 200 else f" -> {status}")


def walk(shape: dict, key: str, version: str, visit, parent: str = "") -> None:
    visit(shape, key, version)
    for name, sub in shape.get("fields", {}).items():
        walk(sub, name, version, visit, key)
    if shape.get("items"):
        # the items of Properties.Items are property objects, one kind wherever they appear
        item_key = "Property" if (key, parent) == ("Items", "Properties") else "[]" if key in GENERIC_KEYS else key
        walk(shape["items"], item_key, version, visit, key)


def unify(routes: dict[str, dict]) -> None:
    kinds: dict[tuple[str, str], list[dict]] = defaultdict(list)

    def collect(shape: dict, key: str, version: str) -> None:
        if "fields" in shape and key not in GENERIC_KEYS:
            kinds[(version, key)].append(shape)

    for name, route in routes.items():
        walk(route["body"], "$", name.split()[1].split("/")[0], collect)
    for shapes_of_kind in kinds.values():
        if len(shapes_of_kind) < 2:
            continue
        union: dict[str, dict] = {}
        always: set[str] | None = None
        for s in shapes_of_kind:
            required = {f for f, sub in s["fields"].items() if not sub.get("optional")}
            always = required if always is None else always & required
            for f, sub in s["fields"].items():
                union.setdefault(f, sub)
        for s in shapes_of_kind:
            for f, sub in union.items():
                if f not in s["fields"]:
                    s["fields"][f] = dict(copy.deepcopy(sub), optional=True)
                elif f not in (always or set()):
                    s["fields"][f]["optional"] = True


def main(repo: str, commit: str, sdk: str, sdk_commit: str) -> None:
    bodies: dict[str, list] = defaultdict(list)
    headers: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    files: dict[str, set] = defaultdict(set)
    pattern = os.path.join(repo, "tests", "fixtures", "cassettes", "**", "*.yaml")
    for path in sorted(glob.glob(pattern, recursive=True)):
        for it in yaml.safe_load(open(path))["interactions"]:
            u = urlsplit(it["request"]["uri"])
            if u.netloc != API_HOST:
                continue
            status = it["response"]["status"]["code"]
            name = route_of(it["request"]["method"], u.path, status)
            try:
                body = json.loads(it["response"]["body"]["string"])
            except (TypeError, ValueError):
                continue
            bodies[name].append(body)
            files[name].add(os.path.relpath(path, repo))
            for h in HEADERS:
                headers[name][h].add(tuple(it["response"]["headers"].get(h, [])))
    sdk_route = "GET v1pre3/appsessions/{id}"
    bodies[sdk_route].append(json.load(open(os.path.join(sdk, "test", "appsession.json"))))
    files[sdk_route].add("basespace-python-sdk: test/appsession.json")
    routes = {}
    for name in sorted(bodies):
        hdrs = {}
        for h, values in headers[name].items():
            if values == {()}:
                continue
            hdrs[h] = next(iter(values))[0] if len(values) == 1 else None  # None: present, value varies
        routes[name] = {
            "recordings": len(bodies[name]),
            "cassettes": sorted(files[name]),
            "headers": hdrs,
            "body": derive(bodies[name]),
        }
    unify(routes)
    out = {
        "source": {
            "repository": "https://github.com/emedgene/fs_basespace",
            "commit": commit,
            "files": "tests/fixtures/cassettes/**/*.yaml",
            "license": "MIT",
            "note": "shapes only (names, JSON types, formats, headers); the recordings are not copied",
        },
        "source_sdk": {
            "repository": "https://github.com/basespace/basespace-python-sdk",
            "commit": sdk_commit,
            "files": "test/appsession.json (route GET v1pre3/appsessions/{id}; headers not recorded)",
            "license": "Apache-2.0",
        },
        "derived_by": "tests/conformance/derive.py",
        "routes": routes,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: derive.py FS_BASESPACE_DIR FS_COMMIT SDK_DIR SDK_COMMIT")
    main(*sys.argv[1:])
