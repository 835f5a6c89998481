"""Derive ``swagger_v2.json``: what a client generated from the v2 swagger demands of an answer.

Source: ``swagger-private-v2.json`` of ``emedgene/basespace-python-sdk-v2`` (the v2 API
description its client is generated from).  For each v2 GET route the emulator serves, the
model its 200 answer deserializes into, and every model reachable from those: required fields,
and each property's type (``$ref`` model, array items, format, enum).  A generated client fails
when a required field is missing or a value is not of the declared type; it ignores fields the
model does not declare (real answers carry some, e.g. a dataset's ``Attributes``).

    python3 tests/conformance/derive_swagger.py swagger-private-v2.json COMMIT > tests/conformance/swagger_v2.json
"""

from __future__ import annotations

import json
import sys

ROUTES = (
    "/users/current",
    "/appsessions",
    "/biosamples",
    "/biosamples/{id}",
    "/datasets",
    "/datasets/{id}",
    "/datasets/{id}/files",
    "/projects/{id}/datasets",
)


def _ref(spec: dict) -> str | None:
    return spec["$ref"].rsplit("/", 1)[-1] if "$ref" in spec else None


def _prop(spec: dict) -> dict:
    out = {k: spec[k] for k in ("type", "format", "enum") if k in spec}
    if _ref(spec):
        out["ref"] = _ref(spec)
    if spec.get("type") == "array":
        out["items"] = _prop(spec.get("items", {}))
    return out


def main(path: str, commit: str) -> None:
    swagger = json.load(open(path))
    routes, wanted = {}, []
    for route in ROUTES:
        model = _ref(swagger["paths"][route]["get"]["responses"]["200"]["schema"])
        routes[f"GET v2{route}"] = model
        wanted.append(model)
    definitions: dict[str, dict] = {}
    while wanted:
        name = wanted.pop()
        if name in definitions or name not in swagger["definitions"]:
            continue
        d = swagger["definitions"][name]
        props = {k: _prop(v) for k, v in d.get("properties", {}).items()}
        definitions[name] = {"required": d.get("required", []), "properties": props}
        for p in props.values():
            for ref in (p.get("ref"), p.get("items", {}).get("ref")):
                if ref:
                    wanted.append(ref)
    out = {
        "source": {
            "repository": "https://github.com/emedgene/basespace-python-sdk-v2",
            "commit": commit,
            "files": "swagger-private-v2.json",
        },
        "derived_by": "tests/conformance/derive_swagger.py",
        "routes": routes,
        "definitions": dict(sorted(definitions.items())),
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: derive_swagger.py SWAGGER_JSON COMMIT")
    main(*sys.argv[1:])
