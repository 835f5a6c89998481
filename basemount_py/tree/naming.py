"""How server names become directory entries: one pure, documented rule (see docs/tree.md).

BaseSpace names are free text. A FUSE entry name must be non-empty, not ``.``/``..``, contain no
``/`` or NUL, and fit in 255 bytes of UTF-8. We keep names verbatim whenever they are legal
(spaces, colons and parentheses are common and users expect them), and otherwise:

* ``/`` becomes ``∕`` (U+2215 DIVISION SLASH), so the name still reads the same;
* NUL and other control characters (including newline and tab) become ``_``;
* characters that cannot be encoded as UTF-8 (lone surrogates) become ``\ufffd``;
* an empty name becomes ``_``; ``.`` and ``..`` become ``_.`` and ``_..``;
* a name over 255 bytes is cut at a character boundary and ends in ``~`` plus 8 hex digits of
  the SHA-1 of the original name, so two long names that share a prefix stay distinct.

Duplicates among siblings get `` (2)``, `` (3)``… in ascending (numeric) Id order, like BaseMount.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

SLASH_SUBSTITUTE = "\u2215"
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def sanitize(name: object) -> str:
    text = "" if name is None else str(name)
    text = text.replace("/", SLASH_SUBSTITUTE)
    text = _CONTROL.sub("_", text)
    # Lone surrogates (from JSON "\ud800" escapes) cannot be written as UTF-8.
    text = _SURROGATE.sub("\ufffd", text)
    if text == "":
        return "_"
    if text in (".", ".."):
        return "_" + text
    return _fit(text, name)


def _fit(text: str, original: object, limit: int = MAX_NAME_BYTES) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    tag = "~" + hashlib.sha1(str(original).encode("utf-8", "replace")).hexdigest()[:8]
    head = encoded[: limit - len(tag)].decode("utf-8", "ignore")
    return head + tag


def _id_order(entity_id: object) -> tuple[int, int | str]:
    text = str(entity_id)
    return (0, int(text)) if text.isdigit() else (1, text)


def unique_names(items: Iterable[tuple[object, object]], reserved: Iterable[str] = ()) -> dict[object, str]:
    """Map each (id, raw name) to a unique sanitised entry name.

    The entity with the lowest Id keeps the plain name; later ones get `` (2)``, `` (3)``…
    ``reserved`` names (hidden files, fixed sub-folders) are never handed out.
    """
    taken = set(reserved)
    result: dict[object, str] = {}
    for entity_id, raw in sorted(items, key=lambda pair: _id_order(pair[0])):
        base = sanitize(raw)
        name, n = base, 1
        while name in taken:
            n += 1
            name = _fit(f"{base} ({n})", f"{raw} ({n})")
        taken.add(name)
        result[entity_id] = name
    return result
