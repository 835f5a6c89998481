"""Property writes: a text file written under ``Properties/`` becomes a ``string`` property; a
symlink to an entity folder becomes a reference (``sample``, ``sample[]``, …). Reference §5.

Property values are small, so a property file is buffered in memory (capped at ``MAX_BYTES``)
and sent with one ``POST v1pre3/{type}/{id}/properties`` when the file is flushed. One trailing
newline is dropped (``echo value > Properties/Input.x`` stores ``value``, as the web UI shows it).
References are sent as Href strings (``v1pre3/samples/123``) [I: the SDK's form].
"""

from __future__ import annotations

import errno
from typing import Any

import trio

from ..entities import KIND_OF, WITH_PROPERTIES
from .api import WriteApi
from .upload import WriteFailure

MAX_BYTES = 1 << 20



class PropertyWrite:
    """An open ``Properties/NAME`` file: bytes in memory, committed as a string property."""

    def __init__(self, api: WriteApi, collection: str, entity_id: str, name: str, initial: bytes = b""):
        self.api, self.collection, self.entity_id, self.name = api, collection, entity_id, name
        self.data = bytearray(initial)
        self.dirty = False  # written (or truncated) since the last commit
        self.committed = False
        self.lock = trio.Lock()

    @property
    def size(self) -> int:
        return len(self.data)

    async def write(self, off: int, data: bytes) -> int:
        if off + len(data) > MAX_BYTES:
            raise WriteFailure(errno.EFBIG, f"property {self.name}: values are limited to {MAX_BYTES} bytes")
        if off > len(self.data):
            self.data.extend(b"\0" * (off - len(self.data)))
        self.data[off : off + len(data)] = data
        self.dirty = True
        return len(data)

    def truncate(self, size: int) -> None:
        if size > MAX_BYTES:
            raise WriteFailure(errno.EFBIG, f"property {self.name}: values are limited to {MAX_BYTES} bytes")
        del self.data[size:]
        self.data.extend(b"\0" * (size - len(self.data)))
        self.dirty = True

    def text(self) -> str:
        value = bytes(self.data).decode("utf-8", "replace")
        return value[:-1] if value.endswith("\n") else value

    async def commit(self, force: bool = False) -> bool:
        """Send the value if it changed since the last commit (or ``force``); True if sent."""
        async with self.lock:
            if not (self.dirty or (force and not self.committed)):
                return False
            prop = {"Type": "string", "Name": self.name, "Description": "", "Content": self.text()}
            try:
                await self.api.set_properties(self.collection, self.entity_id, [prop])
            except Exception as exc:
                raise property_failure(exc, self.name) from None
            self.dirty = False
            self.committed = True
            return True


def property_failure(exc: BaseException, name: str, action: str = "setting") -> WriteFailure:
    if isinstance(exc, WriteFailure):
        return exc
    status = getattr(exc, "status", 0)
    code = errno.EINVAL if status in (400, 409) else errno.EACCES if status in (401, 403) else errno.ENOENT if status == 404 else errno.EIO
    return WriteFailure(code, f"{action} property {name} failed: {exc}")


def entity_href(node_ctx: dict[str, Any]) -> tuple[str, str]:
    """(kind, "v1pre3/<collection>/<id>") of an entity folder node, for a reference property."""
    entity, collection = node_ctx.get("entity"), node_ctx.get("collection")
    kind = KIND_OF.get(str(collection))
    if not isinstance(entity, dict) or kind not in WITH_PROPERTIES or entity.get("Id") is None:
        raise WriteFailure(errno.EINVAL, "a property link must point to a project, sample, app result or run folder")
    return str(kind), f"v1pre3/{collection}/{entity['Id']}"


def item_href(item: Any) -> str | None:
    """An existing reference item (the API returns the referenced entity) as an Href string."""
    if isinstance(item, dict) and isinstance(item.get("Href"), str):
        href = item["Href"]
        marker = href.find("v1pre3/")
        return href[marker:] if marker >= 0 else href
    if isinstance(item, str):
        return item
    return None
