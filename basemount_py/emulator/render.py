"""Render model entities as BaseSpace API JSON, in the shapes real BaseSpace sends.

The shapes follow recorded real traffic (``tests/conformance/recorded.json`` names its sources;
docs/emulator.md has the route table).  Real BaseSpace sends two forms of most entities: a
*list item* (in listings, and wherever the entity is embedded: a property item, a file's
``ParentSample``...) and a fuller *GET* form (``Properties`` inline, ``Projects[]``,
``References[]``...).  Each has one method here (``sample_item`` / ``sample``...).

``.entity.json`` overrides are merged over the generated fields, shallowly, and only for fields
the real shape has: an override can change what BaseSpace sends, never add a field it doesn't
send.  v1pre3 Hrefs are relative (``v1pre3/files/123``); v2 Hrefs are absolute, so renderers
take the request's base URL (``http://host:port/``).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from ..entities import COLLECTION, TYPE_NAME
from .account import Account, Entity, FileEntry, Ref, bs_date

__all__ = ["V1", "V2", "PROPERTY_ITEMS_SHOWN", "type_name"]

# How many items of an array property a properties listing shows (BaseSpace's `propertyitemslimit`;
# the real default is not documented: inferred, docs/emulator.md). The rest come from HrefItems.
PROPERTY_ITEMS_SHOWN = 20

# The emulator's one application (every app session ran it); the fields real sessions carry.
APPLICATION = {
    "Id": "1001",
    "Href": "v1pre3/applications/1001",
    "Name": "BaseSpace Emulator App",
    "CompanyName": "basemount_py",
    "VersionNumber": "1.0.0",
    "HomepageUri": "https://example.invalid/basemount-py-emulator",
    "ShortDescription": "Sessions of the BaseSpace API emulator",
    "DateCreated": "2020-01-01T00:00:00.0000000Z",
    "DatePublished": "2020-01-01T00:00:00.0000000Z",
    "PublishStatus": "Published",
    "IsBillingActivated": False,
    "Category": "Native",
    "Classifications": ["Other"],
    "AppFamilySlug": "basemount-py.emulator",
    "AppVersionSlug": "basemount-py.emulator.1.0.0",
    "Features": [],
    "LockStatus": "Unlocked",
}
GENOME = {
    "Id": "4",
    "DisplayName": "Homo sapiens - UCSC (hg19)",
    "SpeciesName": "Homo sapiens",
    "Source": "UCSC",
    "Build": "hg19",
    "Href": "v1pre3/genomes/4",
    "HrefAnnotations": "v1pre3/genomes/4/annotations",
}
LIBRARY_PREP = {
    "Id": "1014015",
    "Href": "v1pre3/libraryprepkits/1014015",
    "Name": "Unknown",
    "ValidIndexingStrategies": "None,SingleIndex,DualIndex",
    "ValidReadTypes": "SingleRead,PairedEnd",
    "NumIndexCycles": 0,
    "DateModified": "2020-01-01T00:00:00.0000000Z",
    "State": "Active",
    "DefaultRead1Cycles": 0,
    "DefaultRead2Cycles": 0,
}
READ_LENGTH = 151


def type_name(kind: str) -> str:
    return TYPE_NAME.get(kind, kind)


def _file_fields(f: FileEntry, prefix: str) -> dict[str, Any]:
    """A file as v1pre3 list items and v2 answers both show it (they differ in their Hrefs only)."""
    out: dict[str, Any] = {
        "Id": f.id,
        "Href": f"{prefix}files/{f.id}",
        "HrefContent": f"{prefix}files/{f.id}/content",
        "Name": f.name,
        "ContentType": f.content_type,
        "Size": f.size,
        "Path": f.path,
        "IsArchived": f.archived,
        "DateCreated": bs_date(f.mtime),
        "DateModified": bs_date(f.mtime),
        "ETag": f.etag,
    }
    if f.id.isdigit():
        out["IdAsLong"] = int(f.id)
    out.update(f.overrides)  # NAME.file.json (hostile-data tests)
    return out


def _merge(generated: dict[str, Any], e: Entity) -> dict[str, Any]:
    """Overrides of ``.entity.json`` replace generated fields; they never add one.  An object
    field (a run's ``SequencingStats``) is merged one level down, with the same rule."""
    for key, value in e.overrides.items():
        if key not in generated:
            continue
        current = generated[key]
        if isinstance(current, dict) and isinstance(value, dict):
            generated[key] = {**current, **{k: v for k, v in value.items() if k in current}}
        else:
            generated[key] = value
    generated["Id"] = e.id
    return generated


@functools.lru_cache(maxsize=1 << 16)
def _sub_id(owner_id: str, what: str) -> str:
    """A stable numeric id for an object the emulator has no folder for (library, biological sample)."""
    digest = hashlib.sha256(f"{what}\0{owner_id}".encode("utf-8", "surrogateescape")).digest()
    return str(1_000_000_000 + int.from_bytes(digest[:8], "big") % 9_000_000_000)


def _gravatar(email: str) -> str:
    h = hashlib.md5(email.strip().lower().encode("utf-8", "surrogateescape")).hexdigest()
    return f"https://secure.gravatar.com/avatar/{h}.jpg?s=20&d=mm&r=PG"


def _int_field(e: Entity, name: str, default: int) -> int:
    value = e.overrides.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _Common:
    def __init__(self, account: Account, base_url: str):
        self.a = account
        self.base = base_url
        # objects every item of a listing embeds (the owner, its projects, sessions), built once
        # per renderer (= per request); callers copy before changing one
        self._memo: dict[tuple, Any] = {}

    def _once(self, key: tuple, build):
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = build()
        return value

    def user_compact(self) -> dict[str, Any]:
        """The account's user as every owned entity embeds it (``UserOwnedBy``...)."""
        return self._once(("user",), self._user_compact)

    def _user_compact(self) -> dict[str, Any]:
        raise NotImplementedError

    def _user_fields(self, href: str) -> dict[str, Any]:
        u = self.a.user
        return {
            "Id": u.id,
            "Href": href,
            "Name": u.name,
            "DateCreated": bs_date(u.created),
            "GravatarUrl": _gravatar(self._email()),
        }

    def _email(self) -> str:
        return str(self.a.user.overrides.get("Email", "emulator@example.invalid"))

    def _status(self, e: Entity, default: str = "Complete") -> str:
        return str(e.overrides.get("Status", default))

    def _session_size(self, s: Entity) -> int:
        return self.a.session_total_size(s)


class V1(_Common):
    """v1pre3 renderers bound to one account model."""

    def href(self, e: Entity) -> str:
        return f"v1pre3/{COLLECTION[e.kind]}/{e.id}"

    # -- users, projects, applications -------------------------------------------------------

    def _user_compact(self) -> dict[str, Any]:
        return self._user_fields(f"v1pre3/users/{self.a.user.id}")

    def user(self) -> dict[str, Any]:
        u = self.a.user
        out = {
            "Id": u.id,
            "Href": f"v1pre3/users/{u.id}",
            "Name": u.name,
            "Email": self._email(),
            "DateLastActive": bs_date(u.modified),
            "GravatarUrl": _gravatar(self._email()),
            "HrefProjects": f"v1pre3/users/{u.id}/projects",
            "HrefRuns": f"v1pre3/users/{u.id}/runs",
            "DateCreated": bs_date(u.created),
        }
        return _merge(out, u)

    def project_item(self, p: Entity) -> dict[str, Any]:
        return self._once(("project", id(p)), lambda: self._project_item(p))

    def _project_item(self, p: Entity) -> dict[str, Any]:
        out = {
            "Id": p.id,
            "UserOwnedBy": self.user_compact(),
            "Href": self.href(p),
            "Name": p.name,
            "Description": "",
            "DateCreated": bs_date(p.created),
            "DateModified": bs_date(p.modified),
            "HasCollaborators": False,
            "TotalSize": self.a.project_total_size(p),
        }
        return _merge(out, p)

    def project(self, p: Entity) -> dict[str, Any]:
        out = {
            "HrefSamples": f"v1pre3/projects/{p.id}/samples",
            "HrefAppResults": f"v1pre3/projects/{p.id}/appresults",
            "HrefBaseSpaceUI": f"{self.base}project/{p.id}",
            "Properties": self.inline_properties(p),
            **self.project_item(p),
        }
        return _merge(out, p)

    # -- app sessions ----------------------------------------------------------------------

    def appsession_item(self, s: Entity) -> dict[str, Any]:
        """The session as embedded in samples and app results (real list items and GETs)."""
        return self._once(("appsession", id(s)), lambda: self._appsession_item(s))

    def _appsession_item(self, s: Entity) -> dict[str, Any]:
        out = {
            "Id": s.id,
            "Name": s.name,
            "Href": self.href(s),
            "Application": dict(APPLICATION),
            "UserCreatedBy": self.user_compact(),
            "Status": self._status(s),
            "QcStatus": "Undefined",
            "StatusSummary": "",
            "DateCreated": bs_date(s.created),
            "ModifiedOn": bs_date(s.modified),
            "DateCompleted": bs_date(s.modified),
            "TotalSize": self._session_size(s),
        }
        return _merge(out, s)

    def appsession(self, s: Entity) -> dict[str, Any]:
        item = dict(self.appsession_item(s))
        del item["QcStatus"]  # GET v1pre3/appsessions/{id} (the SDK's recording) has none
        references = []
        if s.project is not None:
            references.append(
                {
                    "Rel": "Using",
                    "Type": "Project",
                    "Href": self.href(s.project),
                    "HrefContent": self.href(s.project),
                    "Content": self.project_item(s.project),
                }
            )
        out = {
            "OriginatingUri": self.base.rstrip("/"),
            "References": references,
            "AuthorizationCode": hashlib.md5(f"auth\0{s.id}".encode()).hexdigest(),
            "HrefLogs": f"v1pre3/appsessions/{s.id}/logs",
            "RunningDuration": max(0, int(s.modified - s.created)),
            **item,
            "Properties": self.inline_properties(s),
        }
        out = _merge(out, s)
        out["Href"] = self.href(s)
        return out

    # -- samples ------------------------------------------------------------------------------

    def _library(self, s: Entity) -> dict[str, Any]:
        lib_id = _sub_id(s.id, "library")
        project = self.project_item(s.project) if s.project else None
        return {
            "OwnerUser": self.user_compact(),
            "Id": lib_id,
            "Href": f"v1pre3/libraries/{lib_id}",
            "BiologicalSample": {
                "Id": _sub_id(s.id, "biologicalsample"),
                "Href": f"v1pre3/biologicalsamples/{_sub_id(s.id, 'biologicalsample')}",
                "UserSampleId": s.name,
                "NucleicAcid": "DNA",
                "Project": project,
                "UserOwnedBy": self.user_compact(),
                "DateModified": bs_date(s.modified),
            },
            "DateModified": bs_date(s.modified),
            "LibraryPrep": dict(LIBRARY_PREP),
            "Project": project,
            "LibraryName": s.name,
            "State": "Active",
        }

    def _reads(self, s: Entity) -> dict[str, Any]:
        paired = bool(s.overrides.get("IsPairedEnd", any("_R2" in f.name for f in s.files)))
        raw = _int_field(s, "NumReadsRaw", s.total_size // 100)
        pf = _int_field(s, "NumReadsPF", s.total_size // 105)
        reads = 2 if paired else 1
        return {
            "Read1": READ_LENGTH,
            "Read2": READ_LENGTH if paired else 0,
            "NumReadsPF": pf,
            "NumReadsRaw": raw,
            "TotalReadsRaw": raw * reads,
            "TotalReadsPF": pf * reads,
            "TotalClustersRaw": raw,
            "TotalClustersPF": pf,
            "IsPairedEnd": paired,
        }

    def _sample_base(self, s: Entity) -> dict[str, Any]:
        return {
            "Id": s.id,
            "Href": self.href(s),
            "IsMerged": False,
            "UserOwnedBy": self.user_compact(),
            "Name": s.name,
            "ExperimentName": s.project.name if s.project else "",
            "SampleId": s.name,
            "Status": self._status(s),
            "StatusSummary": "",
            "DateCreated": bs_date(s.created),
            "TotalSize": s.total_size,
        }

    def sample_item(self, s: Entity) -> dict[str, Any]:
        """Real list items carry no SampleNumber, HrefFiles, AppSession or project."""
        out = {**self._sample_base(s), "Library": self._library(s), "Genome": dict(GENOME), **self._reads(s)}
        return _merge(out, s)

    def sample(self, s: Entity) -> dict[str, Any]:
        reads = self._reads(s)
        out: dict[str, Any] = {
            "HrefGenome": GENOME["Href"],
            "SampleNumber": s.number,
            "HrefFiles": f"v1pre3/samples/{s.id}/files",
            "IsPairedEnd": reads["IsPairedEnd"],
            "NumReadsRaw": reads["NumReadsRaw"],
            "NumReadsPF": reads["NumReadsPF"],
            "References": [],
            "Properties": self.inline_properties(s),
            **self._sample_base(s),
        }
        if s.appsession is not None:
            out["AppSession"] = self.appsession_item(s.appsession)
        out["Projects"] = [self.project_item(s.project)] if s.project else []
        out["Library"] = self._library(s)
        out["Genome"] = dict(GENOME)
        out.update({k: v for k, v in reads.items() if k not in out})
        return _merge(out, s)

    # -- app results --------------------------------------------------------------------------

    def _appresult_base(self, r: Entity) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Id": r.id,
            "Href": self.href(r),
            "UserOwnedBy": self.user_compact(),
            "Name": r.name,
            "Status": self._status(r),
            "StatusSummary": "",
            "DateCreated": bs_date(r.created),
            "TotalSize": r.total_size,
        }
        if r.appsession is not None:
            out["AppSession"] = self.appsession_item(r.appsession)
        return out

    def appresult_item(self, r: Entity) -> dict[str, Any]:
        """Real list items have their AppSession but no Description, HrefFiles or project."""
        return _merge(self._appresult_base(r), r)

    def appresult(self, r: Entity) -> dict[str, Any]:
        out = {
            "Description": "",
            "HrefFiles": f"v1pre3/appresults/{r.id}/files",
            "References": [],
            "Properties": self.inline_properties(r),
            **self._appresult_base(r),
            "Projects": [self.project_item(r.project)] if r.project else [],
        }
        return _merge(out, r)

    # -- runs -------------------------------------------------------------------------------

    def run_item(self, r: Entity) -> dict[str, Any]:
        size = r.total_size
        out = {
            "Id": r.id,
            "Href": self.href(r),
            "Name": r.name,
            "Number": 1,
            "ExperimentName": r.name,
            "Status": self._status(r),
            "ReagentBarcode": "NS0000000-REAGT",
            "FlowcellBarcode": "HEMULATRX",
            "DateCreated": bs_date(r.created),
            "DateModified": bs_date(r.modified),
            "UserOwnedBy": self.user_compact(),
            "UserUploadedBy": self.user_compact(),
            "TotalSize": size,
            "PlatformName": "NextSeq",
            "Workflow": "GenerateFASTQ",
            "Instrument": {"InstrumentId": 1, "Name": "NB500001", "SerialNumber": "NB500001"},
            "InstrumentName": "NB500001",
            "InstrumentType": "NextSeq",
            "NumCyclesRead1": READ_LENGTH,
            "NumCyclesRead2": READ_LENGTH,
            "NumCyclesIndex1": 8,
            "NumCyclesIndex2": 8,
            "HrefBaseSpaceUI": f"{self.base}run/{r.id}",
            "HasCollaborators": False,
            "IsArchived": False,
            "IsZipping": False,
            "IsZipped": False,
            "IsUnzipping": False,
            "SequencingStats": _sequencing_stats(f"v1pre3/runs/{r.id}/sequencingstats", size),
            "AnalysisSettings": {"ReverseComplementI5Index": False},
            "LaneAndQcStatus": "QcPassed",
            "LimsStatus": "Sequenced",
            "DateInstrumentStarted": bs_date(r.created),
            "DateInstrumentCompleted": bs_date(r.modified),
        }
        return _merge(out, r)

    def run(self, r: Entity) -> dict[str, Any]:
        out = self.run_item(r)
        out["HrefFiles"] = f"v1pre3/runs/{r.id}/files"
        out["HrefSamples"] = f"v1pre3/runs/{r.id}/samples"
        out["Properties"] = self.inline_properties(r)
        return _merge(out, r)

    # -- files --------------------------------------------------------------------------------

    def file_item(self, f: FileEntry) -> dict[str, Any]:
        return _file_fields(f, "v1pre3/")

    def file(self, f: FileEntry) -> dict[str, Any]:
        item = self.file_item(f)
        item.pop("IdAsLong", None)
        out: dict[str, Any] = {"UploadStatus": "complete", "Properties": self._empty_properties(f"v1pre3/files/{f.id}")}
        out.update(item)
        owner = f.owner
        if owner.kind == "sample":
            out["ParentSample"] = self.sample_item(owner)
        elif owner.kind == "appresult":
            out["ParentAppResult"] = self.appresult_item(owner)
        return out

    def file_properties(self, f: FileEntry) -> dict[str, Any]:
        return self._empty_properties(f"v1pre3/files/{f.id}")

    # -- generic --------------------------------------------------------------------------------

    def item(self, e: Entity) -> dict[str, Any]:
        """An entity as real BaseSpace embeds it (list item form)."""
        render = {
            "project": self.project_item,
            "sample": self.sample_item,
            "appresult": self.appresult_item,
            "run": self.run_item,
            "appsession": self.appsession_item,
            "dataset": lambda d: V2(self.a, self.base).dataset(d),
            "biosample": lambda b: V2(self.a, self.base).biosample(b),
            "user": lambda _u: self.user_compact(),
        }[e.kind]
        return render(e)

    def entity(self, e: Entity) -> dict[str, Any]:
        """An entity as ``GET v1pre3/{collection}/{id}`` returns it."""
        render = {
            "project": self.project,
            "sample": self.sample,
            "appresult": self.appresult,
            "run": self.run,
            "appsession": self.appsession,
        }.get(e.kind)
        return render(e) if render else self.item(e)

    def _empty_properties(self, owner_href: str) -> dict[str, Any]:
        return {"Items": [], "DisplayedCount": 0, "TotalCount": 0, "Href": f"{owner_href}/properties"}

    def inline_properties(self, e: Entity) -> dict[str, Any]:
        """``Properties`` as real GETs embed them: Items, DisplayedCount, TotalCount, Href."""
        props = self.properties(e)
        return {"Items": props, "DisplayedCount": len(props), "TotalCount": len(props), "Href": f"{self.href(e)}/properties"}

    def properties(self, e: Entity, items_limit: int = PROPERTY_ITEMS_SHOWN) -> list[dict[str, Any]]:
        """Property objects with Refs replaced by the referenced API objects (list item form).

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
            return self.file_item(target) if isinstance(target, FileEntry) else self.item(target)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _sequencing_stats(href: str, size: int) -> dict[str, Any]:
    """A run's SequencingStats with every field real ones carry (plausible NextSeq figures)."""
    reads_pf = max(1, size // 300)
    yield_gb = round(size / 1e9, 3)
    return {
        "Chemistry": "NextSeq High",
        "ErrorRate": 0,
        "ErrorRateR1": 0,
        "ErrorRateR2": 0,
        "Href": href,
        "IntensityCycle1": 3512.5,
        "IsIndexed": True,
        "MaxCycleCalled": 318,
        "MaxCycleExtracted": 318,
        "MaxCycleScored": 318,
        "MinCycleCalled": 1,
        "MinCycleExtracted": 1,
        "MinCycleScored": 1,
        "NonIndexedErrorRate": 0,
        "NonIndexedIntensityCycle1": 3512.5,
        "NonIndexedPercentAligned": 0,
        "NonIndexedPercentGtQ30": 91.2,
        "NonIndexedProjectedTotalYield": yield_gb,
        "NonIndexedYieldTotal": yield_gb,
        "NumCyclesIndex1": 8,
        "NumCyclesIndex2": 8,
        "NumCyclesRead1": READ_LENGTH,
        "NumCyclesRead2": READ_LENGTH,
        "NumLanes": 4,
        "NumReads": 4,
        "NumSurfaces": 2,
        "NumSwathsPerLane": 3,
        "NumTilesPerSwath": 12,
        "PercentAligned": 0,
        "PercentGtQ30": 91.2,
        "PercentGtQ30R1": 92.5,
        "PercentGtQ30R2": 89.9,
        "PercentGtQ30Last10Cycles": 0,
        "PercentPf": 87.5,
        "PercentResynthesis": 0.5,
        "PhasingR1": 0.1,
        "PhasingR2": 0.1,
        "PrePhasingR1": 0.05,
        "PrePhasingR2": 0.05,
        "ProjectedTotalYield": yield_gb,
        "ReadsPfTotal": reads_pf,
        "ReadsTotal": reads_pf + reads_pf // 8,
        "YieldTotal": yield_gb,
        "Clusters": reads_pf + reads_pf // 8,
        "ClustersPf": reads_pf,
        "ClusterDensity": 0,
        "Occupancy": 0,
    }


class V2(_Common):
    """v2 renderers: bare entities, absolute Hrefs."""

    def _user_compact(self) -> dict[str, Any]:
        u = self.a.user
        return {
            **self._user_fields(f"{self.base}v2/users/{u.id}"),
            "HrefProperties": f"{self.base}v2/users/current/properties",
            "ExternalDomainId": _sub_id(u.id, "domain"),
        }

    def user(self) -> dict[str, Any]:
        """``GET v2/users/current`` (fields of the swagger V2User the emulator can fill)."""
        u = self.a.user
        out = {
            "Email": self._email(),
            "DateLastActive": bs_date(u.modified),
            "HrefRuns": f"{self.base}v2/users/current/runs",
            "HrefProjects": f"{self.base}v2/users/current/projects",
            **self.user_compact(),
        }
        return _merge(out, u)

    @functools.cached_property
    def v1(self) -> V1:
        return V1(self.a, self.base)

    def project(self, p: Entity) -> dict[str, Any]:
        return self._once(("project", id(p)), lambda: self._project(p))

    def _project(self, p: Entity) -> dict[str, Any]:
        out = dict(self.v1.project_item(p))
        out["UserOwnedBy"] = self.user_compact()
        out["Href"] = f"{self.base}v2/projects/{p.id}"
        return out

    def appsession(self, s: Entity) -> dict[str, Any]:
        status = self._status(s)
        out = {
            "Id": s.id,
            "Name": s.name,
            "Href": f"{self.base}v2/appsessions/{s.id}",
            "Application": dict(APPLICATION),
            "UserCreatedBy": self.user_compact(),
            "ExecutionStatus": status,
            "QcStatus": "Undefined",
            "StatusSummary": str(s.overrides.get("StatusSummary", "")),
            "Purpose": "Analysis",
            "DateCreated": bs_date(s.created),
            "DateModified": bs_date(s.modified),
            "DateCompleted": bs_date(s.modified),
            "TotalSize": self._session_size(s),
            "DeliveryStatus": "None",
            "ContainsComments": False,
            "HrefComments": f"{self.base}v2/appsessions/{s.id}/comments",
        }
        return out

    def dataset_type(self, d: Entity) -> dict[str, Any]:
        dtype = d.overrides.get("DatasetType", {"Id": "common.files", "Name": "File"})
        if isinstance(dtype, str):
            dtype = {"Id": dtype, "Name": dtype}
        tid = str(dtype.get("Id", "common.files"))
        return {
            "Id": tid,
            "Href": f"{self.base}v2/datasettypes/{tid}",
            "Name": str(dtype.get("Name", tid)),
            "ConformsToIds": [] if tid == "common.files" else ["common.files"],
        }

    def _attributes(self, d: Entity, type_id: str) -> dict[str, Any]:
        if type_id != "common.fastq":
            return {}
        paired = any("_R2" in f.name for f in d.files)
        reads = sum(f.size for f in d.files) // 100
        return {
            "common_fastq": {
                "MaxLengthRead1": READ_LENGTH,
                "MaxLengthRead2": READ_LENGTH if paired else 0,
                "IsPairedEnd": paired,
                "TotalClustersPF": reads,
                "TotalClustersRaw": reads,
                "TotalReadsPF": reads * (2 if paired else 1),
                "TotalReadsRaw": reads * (2 if paired else 1),
            }
        }

    def dataset(self, d: Entity, with_properties: bool = False) -> dict[str, Any]:
        dtype = self.dataset_type(d)
        out: dict[str, Any] = {
            "Id": d.id,
            "Href": f"{self.base}v2/datasets/{d.id}",
            "HrefFiles": f"{self.base}v2/datasets/{d.id}/files",
            "Name": d.name,
            "DateCreated": bs_date(d.created),
            "DateModified": bs_date(d.modified),
        }
        if d.appsession is not None:
            out["AppSession"] = self.appsession(d.appsession)
        out.update(
            {
                "Project": self.project(d.project) if d.project else None,
                "TotalSize": d.total_size,
                "IsArchived": False,
                "UserOwnedBy": self.user_compact(),
                "DatasetType": dtype,
                "Attributes": self._attributes(d, dtype["Id"]),
            }
        )
        if with_properties:
            out["Properties"] = {"Items": [], "DisplayedCount": 0, "TotalCount": 0, "Href": f"{self.base}v2/datasets/{d.id}/properties"}
        out.update(
            {
                "QcStatus": "Undefined",
                "QcStatusSummary": "",
                "UploadStatus": "Complete",
                "UploadStatusSummary": "",
                "ValidationStatus": "NotApplicable",
                "HrefComments": f"{self.base}v2/datasets/{d.id}/comments",
                "ContainsComments": False,
            }
        )
        overrides = {k: v for k, v in d.overrides.items() if k != "DatasetType"}
        for key, value in overrides.items():
            if key in out:
                out[key] = value
        return out

    def dataset_detail(self, d: Entity) -> dict[str, Any]:
        """``GET v2/datasets/{id}``: the list item plus ``ValidationsPerformed`` (swagger V2Dataset)."""
        out = self.dataset(d)
        out["ValidationsPerformed"] = []
        return out

    def biosample(self, b: Entity) -> dict[str, Any]:
        v1 = self.v1
        out = {
            "Id": b.id,
            "Href": f"{self.base}v2/biosamples/{b.id}",
            "UserOwnedBy": self.user_compact(),
            "BioSampleName": b.name,
            # real biosamples carry their default project in the v1 form (relative Href)
            "DefaultProject": v1.project_item(b.default_project) if b.default_project else None,
            "DateModified": bs_date(b.modified),
            "DateCreated": bs_date(b.created),
            "Status": "New",
            "LabStatus": "Sequencing",
        }
        out = _merge(out, b)
        out["Href"] = f"{self.base}v2/biosamples/{b.id}"
        return out

    def file(self, f: FileEntry) -> dict[str, Any]:
        return _file_fields(f, f"{self.base}v2/")
