"""Response shapes ("schemas") derived from recorded real BaseSpace traffic, and the checker.

A shape is plain JSON data (stored in ``tests/conformance/*.json``, never the recordings
themselves, which hold people's names):

* ``{"types": ["string", "null"], "format": "bs-date"}`` — the JSON types seen at this place and,
  for strings, the most specific format every recorded value had (see ``FORMATS``);
* objects add ``"fields": {name: shape}``; a field seen in only some of the recorded objects has
  ``"optional": true``;
* arrays add ``"items": shape`` (``null`` when every recorded array was empty: items unchecked);
* an object whose fields depend on one of its values (a property's ``Items`` are samples when
  its ``Type`` is ``sample[]``, runs when ``run[]``) may add ``"case_field": "Type"`` and
  ``"cases": {value: {field: shape}}``: the case's field shapes replace the general ones.

``derive`` builds a shape from recorded values; ``problems`` checks a value against a shape and
reports every missing field, extra field, wrong JSON type and wrong string format by path.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

# Most specific first: a place gets the first format that every recorded string matches.
FORMATS: dict[str, re.Pattern[str]] = {
    "bs-date": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$"),
    "digits": re.compile(r"^\d+$"),
    "v1pre3-href": re.compile(r"^v1pre3/[^\s]+$"),
    "v2-url": re.compile(r"^https?://[^/\s]+/v2/[^\s]*$"),
    "url": re.compile(r"^https?://[^\s]+$"),
}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def derive(values: Iterable[Any]) -> dict[str, Any]:
    """The shape of every value in ``values`` (all recorded at the same place)."""
    values = list(values)
    types = {json_type(v) for v in values}
    if types == {"integer"} and all(v == 0 for v in values):
        types = {"number"}  # a .NET double 0.0 is serialized as 0: a recorded 0 says "number"
    shape: dict[str, Any] = {"types": sorted(types)}
    strings = [v for v in values if isinstance(v, str)]
    if strings:
        fmt = next((name for name, rx in FORMATS.items() if all(rx.match(s) for s in strings)), None)
        if fmt:
            shape["format"] = fmt
    objects = [v for v in values if isinstance(v, dict)]
    if objects:
        names: list[str] = []
        for o in objects:
            names += [k for k in o if k not in names]
        fields = {}
        for name in names:
            present = [o[name] for o in objects if name in o]
            fields[name] = derive(present)
            if len(present) < len(objects):
                fields[name]["optional"] = True
        shape["fields"] = fields
    arrays = [v for v in values if isinstance(v, list)]
    if arrays:
        elements = [e for a in arrays for e in a]
        shape["items"] = derive(elements) if elements else None
    return shape


def _type_ok(value: Any, types: list[str]) -> bool:
    t = json_type(value)
    return t in types or (t == "integer" and "number" in types)


def problems(value: Any, shape: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` differs from ``shape``, one line each (empty: it conforms)."""
    out: list[str] = []
    if not _type_ok(value, shape["types"]):
        return [f"{path}: {json_type(value)} where the real API sends {'/'.join(shape['types'])}"]
    fmt = shape.get("format")
    if fmt and isinstance(value, str) and not FORMATS[fmt].match(value):
        out.append(f"{path}: {value!r} is not in the real format {fmt}")
    if isinstance(value, dict) and "fields" in shape:
        fields = shape["fields"]
        if "cases" in shape:
            fields = {**fields, **shape["cases"].get(str(value.get(shape["case_field"])), {})}
        for name, sub in fields.items():
            if name in value:
                out += problems(value[name], sub, f"{path}.{name}")
            elif not sub.get("optional"):
                out.append(f"{path}.{name}: missing (the real API always sends it)")
        for name in value:
            if name not in fields:
                out.append(f"{path}.{name}: extra field (the real API never sends it)")
    if isinstance(value, list) and shape.get("items") is not None:
        for i, item in enumerate(value):
            out += problems(item, shape["items"], f"{path}[{i}]")
    return out
