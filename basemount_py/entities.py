"""BaseSpace's entity kinds and the API collections they live in: the one kind <-> collection table.

BaseSpace addresses an entity as ``{version}/{collection}/{id}`` (``v1pre3/samples/123``); the
mount, its writes and the emulator all need the kind <-> collection pairing, so it is written
here once. ``EntityKind`` is a ``StrEnum``: a kind compares equal to its text (``"sample"``), which
is also how ``.entity.json`` files, folder kinds and the emulator's model spell it.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EntityKind", "COLLECTION", "KIND_OF", "TYPE_NAME", "TRASHABLE", "WITH_PROPERTIES", "WITH_FILES"]


class EntityKind(StrEnum):
    USER = "user"
    PROJECT = "project"
    SAMPLE = "sample"
    APPRESULT = "appresult"
    APPSESSION = "appsession"
    RUN = "run"
    DATASET = "dataset"
    BIOSAMPLE = "biosample"
    FILE = "file"
    TRASHITEM = "trashitem"


# kind -> API collection (the path segment before the id)
COLLECTION: dict[str, str] = {  # keyed by EntityKind (a str)
    EntityKind.USER: "users",
    EntityKind.PROJECT: "projects",
    EntityKind.SAMPLE: "samples",
    EntityKind.APPRESULT: "appresults",
    EntityKind.APPSESSION: "appsessions",
    EntityKind.RUN: "runs",
    EntityKind.DATASET: "datasets",
    EntityKind.BIOSAMPLE: "biosamples",
    EntityKind.FILE: "files",
    EntityKind.TRASHITEM: "trash",
}
KIND_OF: dict[str, EntityKind] = {collection: EntityKind(kind) for kind, collection in COLLECTION.items()}

# How BaseSpace names a kind in messages and "Type" fields ("... access to this Sample resource").
TYPE_NAME: dict[str, str] = {
    EntityKind.USER: "User",
    EntityKind.PROJECT: "Project",
    EntityKind.SAMPLE: "Sample",
    EntityKind.APPRESULT: "AppResult",
    EntityKind.APPSESSION: "AppSession",
    EntityKind.RUN: "Run",
    EntityKind.DATASET: "Dataset",
    EntityKind.BIOSAMPLE: "BioSample",
    EntityKind.FILE: "File",
}

# What ``DELETE v1pre3/{collection}/{id}`` moves to the trash (app sessions: ``DELETE v2/appsessions/{id}``).
TRASHABLE = (EntityKind.PROJECT, EntityKind.SAMPLE, EntityKind.APPRESULT, EntityKind.RUN)
# Kinds whose properties can be written (``POST v1pre3/{collection}/{id}/properties``).
WITH_PROPERTIES = (EntityKind.PROJECT, EntityKind.SAMPLE, EntityKind.APPRESULT, EntityKind.RUN)
# Kinds with a v1pre3 ``.../files`` listing.
WITH_FILES = (EntityKind.SAMPLE, EntityKind.APPRESULT, EntityKind.RUN)
