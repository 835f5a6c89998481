"""Property writes: a text file written under ``Properties/`` becomes a ``string`` property; a
symlink to an entity folder becomes a reference (``sample``, ``sample[]``, …). Reference §5.

A property file goes through the upload spool like any file (capped at ``MAX_BYTES``) and is
sent with one ``POST v1pre3/{type}/{id}/properties`` after its last close. One trailing
newline is dropped (``echo value > Properties/Input.x`` stores ``value``, as the web UI shows it).
References are sent as Href strings (``v1pre3/samples/123``) [I: the SDK's form].
"""

from __future__ import annotations

import errno
from typing import Any

from ..entities import KIND_OF, WITH_PROPERTIES
from ..tree.nodes import EntityRef, NodeData
from .upload import WriteFailure

MAX_BYTES = 1 << 20


def entity_href(data: NodeData | None) -> tuple[str, str]:
    """(kind, "v1pre3/<collection>/<id>") of an entity folder node (its ``Node.data``), for a reference property."""
    kind = KIND_OF.get(data.collection) if isinstance(data, EntityRef) else None
    if not isinstance(data, EntityRef) or kind not in WITH_PROPERTIES or data.item.get("Id") is None:
        raise WriteFailure(errno.EINVAL, "a property link must point to a project, sample, app result or run folder")
    return str(kind), f"v1pre3/{data.collection}/{data.id}"


def item_href(item: Any) -> str | None:
    """An existing reference item (the API returns the referenced entity) as an Href string."""
    if isinstance(item, dict) and isinstance(item.get("Href"), str):
        href = item["Href"]
        marker = href.find("v1pre3/")
        return href[marker:] if marker >= 0 else href
    if isinstance(item, str):
        return item
    return None
