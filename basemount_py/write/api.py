"""The BaseSpace write calls BaseMount makes (reference §5), on top of ``BaseSpaceClient``.

Every call goes through ``BaseSpaceClient.request``: the token header, the per-attempt timeout,
and bounded retries of transient failures (5xx, 429, resets) all apply. Bodies are bytes, so a
retried part re-sends exactly the same bytes with the same ``Content-MD5``.
"""

from __future__ import annotations

from typing import Any

from ..api.client import BaseSpaceClient, path_segment
from ..api.errors import ProtocolError


def _response(body: Any, what: str) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("Response"), dict):
        return body["Response"]
    if isinstance(body, dict) and body.get("Id") is not None:  # v2: bare entity
        return body
    raise ProtocolError(f"{what}: unexpected answer")


class WriteApi:
    def __init__(self, client: BaseSpaceClient):
        self.client = client

    async def _json(self, method: str, path: str, params: dict | None = None, **kw: Any) -> dict[str, Any]:
        response = await self.client.request(method, path, params, **kw)
        try:
            body = response.json()
        except ValueError:
            raise ProtocolError(f"{method} {path}: answer is not JSON") from None
        return _response(body, f"{method} {path}")

    # -- entities -------------------------------------------------------------------------------

    async def create_project(self, name: str) -> dict[str, Any]:
        """``POST v1pre3/projects``: BaseSpace returns the existing project of that name."""
        return await self._json("POST", "v1pre3/projects", json={"Name": name})

    async def create_appresult(self, project_id: str, name: str, description: str = "") -> dict[str, Any]:
        """A new app result and (no ``appsessionid``) a new app session, status Running."""
        return await self._json("POST", f"v1pre3/projects/{path_segment(project_id)}/appresults", json={"Name": name, "Description": description})

    # -- files ----------------------------------------------------------------------------------

    def _file_params(self, name: str, directory: str, multipart: bool = False) -> dict[str, str]:
        params = {"name": name, "directory": directory}
        if multipart:
            params["multipart"] = "true"
        return params

    async def upload_small(self, appresult_id: str, name: str, directory: str, data: bytes, ctype: str, md5: str) -> dict[str, Any]:
        return await self._json(
            "POST",
            f"v1pre3/appresults/{path_segment(appresult_id)}/files",
            self._file_params(name, directory),
            content=data,
            headers={"Content-Type": ctype, "Content-MD5": md5},
        )

    async def start_multipart(self, appresult_id: str, name: str, directory: str, ctype: str) -> str:
        body = await self._json(
            "POST",
            f"v1pre3/appresults/{path_segment(appresult_id)}/files",
            self._file_params(name, directory, multipart=True),
            headers={"Content-Type": ctype},
        )
        return str(body["Id"])

    async def put_part(self, file_id: str, number: int, data: bytes, md5: str) -> None:
        await self.client.request(
            "PUT",
            f"v1pre3/files/{path_segment(file_id)}/parts/{number}",
            content=data,
            headers={"Content-MD5": md5, "Content-Type": "application/octet-stream"},
        )

    async def complete(self, file_id: str) -> dict[str, Any]:
        return await self._json("POST", f"v1pre3/files/{path_segment(file_id)}", {"uploadstatus": "complete"})

    async def abort(self, file_id: str) -> None:
        await self.client.request("POST", f"v1pre3/files/{path_segment(file_id)}", {"uploadstatus": "aborted"})

    # -- trash, properties, app sessions -------------------------------------------------------------

    async def move_to_trash(self, collection: str, entity_id: str) -> dict[str, Any]:
        # App sessions are trashed through v2 (the SDK's DELETE v2/appsessions/{id}); the rest v1pre3.
        version = "v2" if collection == "appsessions" else "v1pre3"
        return await self._json("DELETE", f"{version}/{collection}/{path_segment(entity_id)}")

    async def restore_from_trash(self, trash_id: str) -> dict[str, Any]:
        return await self._json("POST", f"v2/trash/{path_segment(trash_id)}/restorefromtrash")

    async def delete_property(self, collection: str, entity_id: str, name: str) -> None:
        await self.client.request("DELETE", f"v2/{collection}/{path_segment(entity_id)}/properties/{path_segment(name)}")

    async def set_properties(self, collection: str, entity_id: str, properties: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._json("POST", f"v1pre3/{collection}/{path_segment(entity_id)}/properties", json={"Properties": properties})

    async def update_appsession(self, session_id: str, **fields: Any) -> dict[str, Any]:
        """``{"status": "complete"}`` (mark-as-complete) or ``{"Name": ...}`` (rename)."""
        return await self._json("POST", f"v1pre3/appsessions/{path_segment(session_id)}", json=fields)
