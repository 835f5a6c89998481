"""Reading a JSON file written by someone else (an account folder, a manifest): bounded in size,
and every way it can be wrong is one ``JsonFileError`` with a message to show as it is."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JsonFileError", "read_json_file"]


class JsonFileError(ValueError):
    """The file cannot be read, is too large or is not JSON; the message names it and says why."""


def read_json_file(path: str, what: str, max_bytes: int) -> Any:
    """The parsed contents of ``path`` (``what`` names the file in messages: "manifest", ...)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise JsonFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise JsonFileError(f"{what} {path} is larger than {max_bytes} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        raise JsonFileError(f"{what} {path} is not valid JSON ({str(exc)[:80]})") from None
