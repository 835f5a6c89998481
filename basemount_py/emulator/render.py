"""Render model entities as BaseSpace API JSON (v1pre3 and v2 shapes).

Generated fields come first and the entity's ``.entity.json`` overrides are merged over them
(shallow), except ``Id``/``Href`` consistency: ``Href`` always follows the final ``Id``.
v1pre3 Hrefs are relative (``v1pre3/files/123``); v2 Hrefs are absolute, so v2 renderers take
the request's base URL (``http://host:port/``).
"""

from __future__ import annotations

from typing import Any

from .account import Account, Entity, FileEntry, Ref, bs_date

__all__ = ["V1", "V2"]

_V1_COLLECTION = {
    "project": "projects",
    "sample": "samples",
    "appresult": "appresults",
    "run": "runs",
    "appsession": "appsessions",
    "user": "users",
}
_TYPE_NAME = {
    "project": "Project",
    "sample": "Sample",
    "appresult": "AppResult",
    "run": "Run",
    "appsession": "AppSession",
    "dataset": "Dataset",
    "biosample": "BioSample",
    "file": "File",
    "user": "User",
}

# How many items of an array property a properties listing shows (BaseSpace's `propertyitemslimit`;
# the real default is not documented: inferred, docs/emulator.md). The rest come from HrefItems.
PROPERTY_ITEMS_SHOWN = 20


def type_name(kind: str) -> str:
    return _TYPE_NAME.get(kind, kind)


def _merge(generated: dict[str, Any], e: Entity) -> dict[str, Any]:
    generated.update(e.overrides)
    generated["Id"] = e.id
    return generated


class V1:
    """v1pre3 renderers bound to one account model."""

    def __init__(self, account: Account, base_url: str):
        self.a = account
        self.base = base_url

    def href(self, e: Entity) -> str:
        return f"v1pre3/{_V1_COLLECTION[e.kind]}/{e.id}"

    def user(self) -> dict[str, Any]:
        u = self.a.user
        out = {
            "Id": u.id,
            "Href": f"v1pre3/users/{u.id}",
            "Name": u.name,
            "Email": "emulator@example.invalid",
            "GravatarUrl": "",
            "DateCreated": bs_date(u.created),
            "DateLastActive": bs_date(u.modified),
            "HrefRuns": f"v1pre3/users/{u.id}/runs",
            "HrefProjects": f"v1pre3/users/{u.id}/projects",
        }
        return _merge(out, u)

    def user_compact(self) -> dict[str, Any]:
        u = self.a.user
        return {"Id": u.id, "Href": f"v1pre3/users/{u.id}", "Name": u.name, "GravatarUrl": ""}

    def project(self, p: Entity) -> dict[str, Any]:
        out = {
            "Id": p.id,
            "Href": self.href(p),
            "Name": p.name,
            "Description": "",
            "UserOwnedBy": self.user_compact(),
            "DateCreated": bs_date(p.created),
            "DateModified": bs_date(p.modified),
            "HasCollaborators": False,
            "TotalSize": self.a.project_total_size(p),
            "HrefSamples": f"v1pre3/projects/{p.id}/samples",
            "HrefAppResults": f"v1pre3/projects/{p.id}/appresults",
        }
        return _merge(out, p)

    def project_compact(self, p: Entity | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {"Id": p.id, "Href": self.href(p), "Name": p.name}

    def appsession_compact(self, s: Entity) -> dict[str, Any]:
        return {
            "Id": s.id,
            "Href": self.href(s),
            "Name": s.name,
            "Status": s.overrides.get("Status", "Complete"),
            "StatusSummary": s.overrides.get("StatusSummary", ""),
            "DateCreated": bs_date(s.created),
        }

    def _in_projects(self, e: Entity) -> dict[str, Any]:
        """The GET-one fields that say where a sample or app result lives (real: ``Projects[]``)."""
        return {
            "References": [],
            "Projects": [self.project(e.project)] if e.project is not None else [],
        }

    def sample(self, s: Entity, detail: bool = False) -> dict[str, Any]:
        """A sample as listed (``detail=False``) or as ``GET samples/{id}`` answers. Real list items
        carry no SampleNumber, HrefFiles, AppSession or project (recordings, docs/emulator.md)."""
        paired = any("_R2" in f.name for f in s.files)
        total = s.total_size
        out: dict[str, Any] = {
            "Id": s.id,
            "Href": self.href(s),
            "UserOwnedBy": self.user_compact(),
            "Name": s.name,
            "SampleId": s.name,
            "ExperimentName": s.project.name if s.project else "",
            "Status": "Complete",
            "StatusSummary": "",
            "IsPairedEnd": paired,
            "Read1": 151,
            "Read2": 151 if paired else 0,
            "NumReadsRaw": total // 100,
            "NumReadsPF": total // 105,
            "TotalSize": total,
            "DateCreated": bs_date(s.created),
        }
        if detail:
            out.update(SampleNumber=s.number, HrefFiles=f"v1pre3/samples/{s.id}/files", **self._in_projects(s))
            if s.appsession is not None:
                out["AppSession"] = self.appsession_compact(s.appsession)
        return _merge(out, s)

    def appresult(self, r: Entity, detail: bool = False) -> dict[str, Any]:
        """An app result as listed (``detail=False``: real list items have their AppSession but no
        Description, HrefFiles, DateModified or project) or as ``GET appresults/{id}`` answers."""
        out: dict[str, Any] = {
            "Id": r.id,
            "Href": self.href(r),
            "UserOwnedBy": self.user_compact(),
            "Name": r.name,
            "Status": "Complete",
            "StatusSummary": "",
            "TotalSize": r.total_size,
            "DateCreated": bs_date(r.created),
        }
        if r.appsession is not None:
            out["AppSession"] = self.appsession_compact(r.appsession)
        if detail:
            out.update(Description="", HrefFiles=f"v1pre3/appresults/{r.id}/files", **self._in_projects(r))
        return _merge(out, r)

    def appsession(self, s: Entity) -> dict[str, Any]:
        out = {
            "Id": s.id,
            "Href": self.href(s),
            "Name": s.name,
            "Status": "Complete",
            "StatusSummary": "",
            "DateCreated": bs_date(s.created),
            "DateModified": bs_date(s.modified),
            "Application": {"Id": "1001", "Href": "v1pre3/applications/1001", "Name": "BaseSpace Emulator App"},
            "UserCreatedBy": self.user_compact(),
            "HrefLogs": f"v1pre3/appsessions/{s.id}/logs",
            "References": [{"Rel": "Project", "Href": self.href(s.project), "Content": self.project_compact(s.project)}]
            if s.project
            else [],
        }
        out = _merge(out, s)
        out["Href"] = self.href(s)
        return out

    def run(self, r: Entity) -> dict[str, Any]:
        out = {
            "Id": r.id,
            "Href": self.href(r),
            "Name": r.name,
            "ExperimentName": r.name,
            "Status": "Complete",
            "Number": 1,
            "InstrumentName": "NB500001",
            "InstrumentType": "NextSeq",
            "PlatformName": "NextSeq",
            "Workflow": "GenerateFASTQ",
            "TotalSize": r.total_size,
            "DateCreated": bs_date(r.created),
            "DateModified": bs_date(r.modified),
            "HrefFiles": f"v1pre3/runs/{r.id}/files",
            "UserOwnedBy": self.user_compact(),
            "SequencingStats": {
                "Chemistry": "NextSeq High",
                "NumCyclesRead1": 151,
                "NumCyclesRead2": 151,
                "NumCyclesIndex1": 8,
                "NumCyclesIndex2": 8,
                "NumLanes": 4,
                "NumReads": 2,
                "NumSurfaces": 2,
                "NumSwathsPerLane": 3,
                "NumTilesPerSwath": 12,
                "YieldTotal": round(r.total_size / 1e9, 3),
                "PercentGtQ30": 91.2,
                "PercentPf": 0.87,
            },
        }
        return _merge(out, r)

    def file(self, f: FileEntry) -> dict[str, Any]:
        out = {
            "Id": f.id,
            "Href": f"v1pre3/files/{f.id}",
            "HrefContent": f"v1pre3/files/{f.id}/content",
            "Name": f.name,
            "ContentType": f.content_type,
            "Size": f.size,
            "Path": f.path,
            "IsArchived": f.archived,
            "UploadStatus": "complete",
            "DateCreated": bs_date(f.mtime),
            "DateModified": bs_date(f.mtime),
            "ETag": f.etag,
        }
        out.update(f.overrides)  # NAME.file.json (hostile-data tests)
        return out

    def entity(self, e: Entity, detail: bool = False) -> dict[str, Any]:
        """``e`` in its list-item shape, or (``detail``) as ``GET v1pre3/{type}/{id}`` answers."""
        render = {
            "project": self.project,
            "sample": lambda s: self.sample(s, detail),
            "appresult": lambda r: self.appresult(r, detail),
            "run": self.run,
            "appsession": self.appsession,
            "dataset": lambda d: V2(self.a, self.base).dataset(d),
            "biosample": lambda b: V2(self.a, self.base).biosample(b),
            "user": lambda _u: self.user(),
        }[e.kind]
        return render(e)

    def properties(self, e: Entity, items_limit: int = PROPERTY_ITEMS_SHOWN) -> list[dict[str, Any]]:
        """Property objects with Refs replaced by the referenced API objects.

        Like BaseSpace, an array property shows at most ``items_limit`` of its items
        (``propertyitemslimit``); ``ItemsTotalCount`` tells how many there are and ``HrefItems``
        pages through all of them."""
        out = []
        for prop in e.properties:
            if not isinstance(prop, dict):
                continue
            p = {k: self._value(v) for k, v in prop.items()}
            name = str(prop.get("Name", ""))
            p.setdefault("Description", "")
            p["Href"] = f"{self.href(e)}/properties/{name}"
            if isinstance(p.get("Items"), list):
                total = len(p["Items"])
                p["Items"] = p["Items"][: max(0, items_limit)]
                p.setdefault("HrefItems", f"{self.href(e)}/properties/{name}/items")
                p["ItemsDisplayedCount"] = len(p["Items"])
                p["ItemsTotalCount"] = total
            out.append(p)
        return out

    def property_items(self, e: Entity, name: str) -> list[Any] | None:
        """Every item of array property ``name`` (rendered), or None if there is no such array."""
        for prop in e.properties:
            if isinstance(prop, dict) and str(prop.get("Name", "")) == name and isinstance(prop.get("Items"), list):
                return [self._value(v) for v in prop["Items"]]
        return None

    def _value(self, value: Any) -> Any:
        if isinstance(value, Ref):
            target = value.target
            return self.file(target) if isinstance(target, FileEntry) else self.entity(target)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


class V2:
    """v2 renderers: bare entities, absolute Hrefs."""

    def __init__(self, account: Account, base_url: str):
        self.a = account
        self.base = base_url

    def project_compact(self, p: Entity | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {"Id": p.id, "Href": f"{self.base}v2/projects/{p.id}", "Name": p.name}

    def dataset(self, d: Entity) -> dict[str, Any]:
        b = d.biosample
        out: dict[str, Any] = {
            "Id": d.id,
            "Href": f"{self.base}v2/datasets/{d.id}",
            "HrefFiles": f"{self.base}v2/datasets/{d.id}/files",
            "Name": d.name,
            "DatasetType": {"Id": "common.files", "Name": "File"},
            "Project": self.project_compact(d.project),
            "BioSample": {"Id": b.id, "Href": f"{self.base}v2/biosamples/{b.id}", "BioSampleName": b.name}
            if b
            else None,
            "UploadStatus": "Complete",
            "TotalSize": d.total_size,
            "FileCount": len(d.files),
            "DateCreated": bs_date(d.created),
            "DateModified": bs_date(d.modified),
            "QcStatus": "Undetermined",
            "IsArchived": False,
        }
        out = _merge(out, d)
        if isinstance(out.get("DatasetType"), str):
            out["DatasetType"] = {"Id": out["DatasetType"], "Name": out["DatasetType"]}
        out["Href"] = f"{self.base}v2/datasets/{d.id}"
        return out

    def biosample(self, b: Entity) -> dict[str, Any]:
        out = {
            "Id": b.id,
            "Href": f"{self.base}v2/biosamples/{b.id}",
            "BioSampleName": b.name,
            "DefaultProject": self.project_compact(b.default_project),
            "Status": "New",
            "LabStatus": "Sequencing",
            "DateCreated": bs_date(b.created),
            "DateModified": bs_date(b.modified),
        }
        out = _merge(out, b)
        out["Href"] = f"{self.base}v2/biosamples/{b.id}"
        return out

    def file(self, f: FileEntry) -> dict[str, Any]:
        out = {
            "Id": f.id,
            "Href": f"{self.base}v2/files/{f.id}",
            "HrefContent": f"{self.base}v1pre3/files/{f.id}/content",
            "Name": f.name,
            "Path": f.path,
            "Size": f.size,
            "ContentType": f.content_type,
            "DateCreated": bs_date(f.mtime),
            "DateModified": bs_date(f.mtime),
            "ETag": f.etag,
            "IsArchived": f.archived,
            "UploadStatus": "Complete",
        }
        if f.id.isdigit():
            out["IdAsLong"] = int(f.id)
        out.update(f.overrides)  # NAME.file.json (hostile-data tests)
        return out
