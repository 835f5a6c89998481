"""Load an *account folder* into an in-memory model of BaseSpace entities.

The folder is laid out like the mounted tree (see docs/emulator.md)::

    ACCOUNT/account.json
    ACCOUNT/Projects/<P>/{.entity.json, Samples/<S>/, AppResults/<A>/, Datasets/<D>/}
    ACCOUNT/Runs/<R>/            ACCOUNT/BioSamples/<B>/
    <entity folder>/.entity.json   <entity folder>/Files/**   (files; nested dirs = Path)

Design points:

* Everything is read once (``load_account``); requests never touch the folder except to stream
  a file whose absolute path was recorded at load time.  A file is only ever opened through its
  id -> ``FileEntry`` mapping, so ids cannot be used for path traversal; symlinks are followed
  only when they resolve inside the account folder, and special files (FIFOs, devices) are
  skipped because opening them could block the server.
* Ids are stable without any sidecar: a hash of (entity kind, path relative to ACCOUNT), a
  10-digit number (``ds.<32 hex>`` for datasets).  ``.entity.json`` ``Id`` overrides win; the
  remaining collisions are resolved deterministically (sorted order, re-hash with a counter).
  ``load_account(previous=...)`` keeps the ids of entities that already existed, so a reload
  never renumbers anything.
* Names on disk may be any bytes Linux allows; API names are the folder/file names decoded
  with replacement characters (JSON needs valid UTF-8), and ``.entity.json`` ``Name`` may
  override them (duplicate names are expressed that way).
* Entities hold *generated* fields and the ``.entity.json`` overrides separately; rendering
  into API JSON (which needs the base URL for v2) is done by ``render.py``.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
import os
import stat
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..blocking import RunBlocking, in_worker_thread

from ..jsonfile import JsonFileError, read_json_file
from .synthetic import iter_synthetic

__all__ = [
    "Account",
    "AccountError",
    "Entity",
    "FileEntry",
    "Ref",
    "load_account",
    "resolve_token",
    "bs_date",
    "DEFAULT_TOKEN",
    "warm",
    "warm_etags",
]

DEFAULT_TOKEN = "emulator-token"
MAX_JSON_BYTES = 1024 * 1024  # .entity.json / account.json / .synthetic.json size cap
MAX_SYNTHETIC_SIZE = 1 << 50
SYNTHETIC_SUFFIX = ".synthetic.json"
# ``NAME.file.json`` next to NAME (or NAME.synthetic.json): fields merged over the API file item
# (hostile-data tests: any Name/Path/Size; an explicit Id, duplicates allowed). Bytes still come
# from NAME, so a Size override makes the listing disagree with the content on purpose.
# ``IsArchived: true`` puts the file in archival storage (listed, its content refused).
FILE_SIDECAR_SUFFIX = ".file.json"
FILE_OVERRIDE_KEYS = ("Name", "Path", "Size", "Id", "IsArchived", "ETag")  # ETag: also a multipart upload's <md5>-<parts>

# (top folder inside a project, kind)
PROJECT_CHILDREN = (("Samples", "sample"), ("AppResults", "appresult"), ("Datasets", "dataset"))


class AccountError(Exception):
    """The account folder cannot be served; the message names the offending path."""


def bs_date(timestamp: float) -> str:
    """BaseSpace date format: whole seconds, 7 fractional digits, UTC."""
    return _bs_date_of_second(int(timestamp))


@functools.lru_cache(maxsize=1 << 16)  # listings render the same few dates thousands of times
def _bs_date_of_second(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def display_name(disk_name: str) -> str:
    """A name from disk (maybe undecodable bytes) as valid Unicode for JSON."""
    return disk_name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_json(path: str, what: str) -> Any:
    try:
        return read_json_file(path, what, MAX_JSON_BYTES)
    except JsonFileError as exc:
        raise AccountError(str(exc)) from None


def _read_object(path: str, what: str) -> dict[str, Any]:
    value = _read_json(path, what)
    if not isinstance(value, dict):
        raise AccountError(f"{path}: {what} must be a JSON object")
    return value


def resolve_token(data_dir: str, token: str | None = None) -> str:
    """The token the emulator accepts: ``token``, else account.json AccessToken, else default."""
    if token:
        return token
    path = os.path.join(data_dir, "account.json")
    if os.path.isfile(path):
        value = _read_object(path, "account.json").get("AccessToken")
        if isinstance(value, str) and value:
            return value
    return DEFAULT_TOKEN


@dataclass
class Ref:
    """A ``{"Ref": "<account-relative path>"}`` resolved to its entity (or file)."""

    target: "Entity | FileEntry"


@dataclass
class FileEntry:
    id: str
    key: str  # account-relative path of the API file (without .synthetic.json)
    name: str
    path: str  # relative to the entity's Files/, "/"-separated
    size: int
    mtime: float
    owner: "Entity"
    disk_path: str | None = None  # real path of a regular file
    seed: int | None = None  # synthetic content seed
    overrides: dict[str, Any] = field(default_factory=dict)  # from NAME.file.json (API item only)
    explicit_id: str | None = None

    @property
    def etag(self) -> str:
        """The MD5 of the content, as real BaseSpace and its S3 host send it (a multipart upload's
        ``<md5>-<parts>`` comes from its ``NAME.file.json``).  Computed once per file version and
        kept for the process (reloads included); handlers warm it off the event loop first
        (``warm_etags``), so this only reads the cache there."""
        explicit = self.overrides.get("ETag")
        if isinstance(explicit, str):
            return explicit
        version = self._version()
        value = _ETAGS.get(version)
        if value is None:
            value = _content_md5(self)
            with _ETAGS_LOCK:
                _ETAGS[version] = value
        return value

    @property
    def etag_known(self) -> bool:
        return isinstance(self.overrides.get("ETag"), str) or self._version() in _ETAGS

    def _version(self) -> tuple:
        return (self.disk_path or self.key, self.size, self.mtime, self.seed)

    @property
    def archived(self) -> bool:
        """In archival storage: ``IsArchived: true`` in NAME.file.json, or in the ``.entity.json``
        of its dataset or run (archiving moves a whole dataset or run)."""
        return self.overrides.get("IsArchived") is True or self.owner.overrides.get("IsArchived") is True

    @property
    def content_type(self) -> str:
        kind, encoding = mimetypes.guess_type(self.name, strict=False)
        if encoding == "gzip":
            return "application/x-gzip"
        if encoding == "bzip2":
            return "application/x-bzip2"
        return kind or "application/octet-stream"


# file version -> content MD5 (see FileEntry.etag); a few dozen bytes per file
_ETAGS: dict[tuple, str] = {}
_ETAGS_LOCK = threading.Lock()
_MD5_PIECE = 1 << 20


def _content_md5(f: FileEntry) -> str:
    h = hashlib.md5()
    if f.seed is not None:
        for piece in iter_synthetic(f.seed, 0, f.size, step=4 * _MD5_PIECE):
            h.update(piece)
        return h.hexdigest()
    try:
        with open(f.disk_path or "", "rb") as src:
            while piece := src.read(_MD5_PIECE):
                h.update(piece)
    except OSError:
        pass  # vanished since the load: the content route reports it; the tag is of what was read
    return h.hexdigest()


async def warm(files: list[FileEntry], run_blocking: RunBlocking = in_worker_thread) -> None:
    """Compute the ETags (content MD5s) these files still lack, off the event loop."""
    missing = [f for f in files if not f.etag_known]
    if missing:
        await run_blocking(warm_etags, missing)


def warm_etags(files: list[FileEntry]) -> None:
    """Compute the ETags not known yet (blocking: call it in a worker thread)."""
    for f in files:
        if not f.etag_known:
            f.etag  # noqa: B018 (computes and caches)


@dataclass
class Entity:
    kind: str  # user project sample appresult run dataset biosample appsession
    key: str  # account-relative folder path (synthetic key for app sessions)
    name: str
    id: str = ""
    folder: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    files: list[FileEntry] = field(default_factory=list)
    project: "Entity | None" = None
    appsession: "Entity | None" = None
    biosample: "Entity | None" = None
    default_project: "Entity | None" = None
    properties: list[Any] = field(default_factory=list)
    created: float = 0.0
    modified: float = 0.0
    number: int = 0  # SampleNumber
    explicit_id: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Account:
    root: str
    user: Entity
    projects: list[Entity]
    runs: list[Entity]
    samples: list[Entity]
    appresults: list[Entity]
    datasets: list[Entity]
    biosamples: list[Entity]
    appsessions: list[Entity]
    by_id: dict[tuple[str, str], Entity]
    files: dict[str, FileEntry]
    ids: dict[tuple[str, str], str]  # (kind, key) -> id, handed to the next reload
    # JSON of list items, rendered once (app.py _item_json); dropped with the model on reload
    rendered: dict[tuple, bytes] = field(default_factory=dict)
    # The account as an HTTP directory tree (http_listing.py), built on first use; dropped on reload
    http_tree_index: Any = None

    def get(self, kind: str, entity_id: str) -> Entity | None:
        return self.by_id.get((kind, entity_id))

    def project_total_size(self, project: Entity) -> int:
        return self._sizes[0].get(id(project), 0)

    def session_total_size(self, session: Entity) -> int:
        return self._sizes[1].get(id(session), 0)

    @functools.cached_property
    def _sizes(self) -> tuple[dict[int, int], dict[int, int]]:
        """Bytes per project and per app session, summed once (renderers ask per item)."""
        projects: dict[int, int] = {}
        sessions: dict[int, int] = {}
        for group in (self.samples, self.appresults, self.datasets):
            for e in group:
                if e.project is not None:
                    projects[id(e.project)] = projects.get(id(e.project), 0) + e.total_size
                if e.appsession is not None and e.kind != "dataset":
                    sessions[id(e.appsession)] = sessions.get(id(e.appsession), 0) + e.total_size
        return projects, sessions


# -- scanning ------------------------------------------------------------------------------


def _subdirs(path: str) -> list[str]:
    """Sorted names of the real sub-directories of ``path`` (symlinked dirs are not followed)."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AccountError(f"{path}: cannot list folder: {exc.strerror}") from None
    return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class _Loader:
    def __init__(self, root: str, previous: dict[tuple[str, str], str] | None):
        self.root = os.path.realpath(root)
        self.previous = previous or {}
        self.entities: list[Entity] = []
        self.files: list[FileEntry] = []

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def entity(self, kind: str, folder: str, **kw: Any) -> Entity:
        overrides: dict[str, Any] = {}
        meta = os.path.join(folder, ".entity.json")
        if os.path.isfile(meta):
            overrides = _read_object(meta, ".entity.json")
        name = overrides.get("Name")
        if name is not None and not isinstance(name, str):
            raise AccountError(f"{meta}: Name must be a string")
        explicit = overrides.get("Id")
        if explicit is not None:
            if isinstance(explicit, bool) or not isinstance(explicit, (str, int)) or str(explicit) == "":
                raise AccountError(f"{meta}: Id must be a non-empty string or integer")
            explicit = str(explicit)
        properties = overrides.pop("Properties", [])
        if not isinstance(properties, list):
            raise AccountError(f"{meta}: Properties must be a list of property objects")
        created = _mtime(folder)
        e = Entity(
            kind=kind,
            key=self.rel(folder),
            name=name if name is not None else display_name(os.path.basename(folder)),
            folder=folder,
            overrides=overrides,
            properties=properties,
            created=created,
            modified=created,
            explicit_id=explicit,
            **kw,
        )
        self.scan_files(e)
        if e.files:
            e.modified = max(e.modified, max(f.mtime for f in e.files))
        self.entities.append(e)
        return e

    def scan_files(self, e: Entity) -> None:
        files_dir = os.path.join(e.folder or "", "Files")
        if not os.path.isdir(files_dir) or os.path.islink(files_dir):
            return
        seen: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(files_dir, followlinks=False):
            dirnames.sort()
            present = set(filenames)
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                if _is_file_sidecar(fname, present):
                    continue
                entry = self.file_entry(e, files_dir, full, fname)
                if entry is None:
                    continue
                sidecar = _sidecar_for(fname, present)
                if sidecar is not None:
                    _apply_file_overrides(entry, _read_object(os.path.join(dirpath, sidecar), "file override"), os.path.join(dirpath, sidecar))
                if entry.path in seen:
                    raise AccountError(f"{full}: clashes with {seen[entry.path]} (same API file path)")
                seen[entry.path] = full
                e.files.append(entry)
                self.files.append(entry)
        # os.walk visits a directory's files before its sub-directories; order by Path instead
        e.files.sort(key=lambda f: f.path)

    def file_entry(self, e: Entity, files_dir: str, full: str, fname: str) -> FileEntry | None:
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(full)
                if not (real == self.root or real.startswith(self.root + os.sep)):
                    return None  # never serve anything outside the account folder
                st = os.stat(real)
            else:
                real = full
        except OSError:
            return None  # dangling symlink, vanished file
        if not stat.S_ISREG(st.st_mode):
            return None
        rel_path = os.path.relpath(full, files_dir).replace(os.sep, "/")
        if fname.endswith(SYNTHETIC_SUFFIX) and len(fname) > len(SYNTHETIC_SUFFIX):
            spec = _read_object(full, "synthetic file spec")
            size, seed = spec.get("size"), spec.get("seed", 0)
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SYNTHETIC_SIZE:
                raise AccountError(f"{full}: size must be an integer between 0 and {MAX_SYNTHETIC_SIZE}")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise AccountError(f"{full}: seed must be an integer")
            api_rel = rel_path[: -len(SYNTHETIC_SUFFIX)]
            return FileEntry(
                id="",
                key=f"{e.key}/Files/{api_rel}",
                name=display_name(fname[: -len(SYNTHETIC_SUFFIX)]),
                path=display_name(api_rel),
                size=size,
                mtime=st.st_mtime,
                owner=e,
                seed=seed,
            )
        return FileEntry(
            id="",
            key=f"{e.key}/Files/{rel_path}",
            name=display_name(fname),
            path=display_name(rel_path),
            size=st.st_size,
            mtime=st.st_mtime,
            owner=e,
            disk_path=real,
        )


def _is_file_sidecar(fname: str, present: set[str]) -> bool:
    if not fname.endswith(FILE_SIDECAR_SUFFIX) or len(fname) == len(FILE_SIDECAR_SUFFIX):
        return False
    base = fname[: -len(FILE_SIDECAR_SUFFIX)]
    return base in present or base + SYNTHETIC_SUFFIX in present


def _sidecar_for(fname: str, present: set[str]) -> str | None:
    base = fname[: -len(SYNTHETIC_SUFFIX)] if fname.endswith(SYNTHETIC_SUFFIX) else fname
    sidecar = base + FILE_SIDECAR_SUFFIX
    return sidecar if sidecar in present else None


def _apply_file_overrides(entry: FileEntry, overrides: dict[str, Any], where: str) -> None:
    unknown = set(overrides) - set(FILE_OVERRIDE_KEYS)
    if unknown:
        raise AccountError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(FILE_OVERRIDE_KEYS)})")
    if "Id" in overrides:
        value = overrides.pop("Id")
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise AccountError(f"{where}: Id must be a non-empty string or integer")
        entry.explicit_id = str(value)
    if not isinstance(overrides.get("IsArchived", False), bool):
        raise AccountError(f"{where}: IsArchived must be true or false")
    entry.overrides = overrides


def _hash_id(kind: str, key: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{kind}\0{key}\0{attempt}".encode("utf-8", "surrogateescape")).digest()
    if kind == "dataset":
        return "ds." + digest[:16].hex()
    return str(1_000_000_000 + int.from_bytes(digest[:8], "big") % 9_000_000_000)


def _assign_ids(entities: list[Entity], files: list[FileEntry], previous: dict[tuple[str, str], str]) -> dict:
    """Explicit ids first, then ids the previous load handed out, then fresh hashes."""
    used: set[str] = set()  # generated ids are unique across all kinds
    taken: dict[tuple[str, str], Entity] = {}
    for e in entities:
        if e.explicit_id is not None:
            other = taken.get((e.kind, e.explicit_id))
            if other is not None:
                raise AccountError(f"{e.folder}: Id {e.explicit_id} is already used by {other.folder} (same {e.kind} Id twice)")
            e.id = e.explicit_id
            taken[(e.kind, e.id)] = e
            used.add(e.id)
    for f in files:
        if f.explicit_id is not None:  # NAME.file.json Id: may repeat on purpose (hostile data)
            f.id = f.explicit_id
            used.add(f.id)
    pending: list[Entity | FileEntry] = [e for e in entities if e.explicit_id is None]
    pending += [f for f in files if f.explicit_id is None]

    def kind_of(item: Entity | FileEntry) -> str:
        return "file" if isinstance(item, FileEntry) else item.kind

    fresh = []
    for item in pending:
        old = previous.get((kind_of(item), item.key))
        if old is not None and old not in used:
            item.id = old
            used.add(old)
        else:
            fresh.append(item)
    for item in sorted(fresh, key=lambda i: (kind_of(i), i.key)):
        attempt = 0
        while (candidate := _hash_id(kind_of(item), item.key, attempt)) in used:
            attempt += 1
        item.id = candidate
        used.add(candidate)
    ids = {(e.kind, e.key): e.id for e in entities}
    ids.update({("file", f.key): f.id for f in files})
    return ids


def _resolve_refs(value: Any, lookup: dict[str, Entity | FileEntry], where: str) -> Any:
    """Replace {"Ref": path} objects inside property values with ``Ref`` markers."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            path = value["Ref"]
            target = lookup.get(str(path).strip("/")) if isinstance(path, str) else None
            if target is None:
                raise AccountError(f"{where}: Ref {path!r} does not name an entity or file of the account")
            return Ref(target)
        return {k: _resolve_refs(v, lookup, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, lookup, where) for v in value]
    return value


def load_account(root: str, previous: dict[tuple[str, str], str] | None = None) -> Account:
    """Read the whole account folder; raises AccountError with a message naming the bad path."""
    if not os.path.exists(root):
        raise AccountError(f"{root}: account folder does not exist")
    if not os.path.isdir(root):
        raise AccountError(f"{root}: account folder is not a directory")
    markers = ("account.json", "Projects", "Runs", "BioSamples")
    if not any(os.path.exists(os.path.join(root, m)) for m in markers):
        raise AccountError(f"{root}: not an account folder (expected at least one of {', '.join(markers)})")
    loader = _Loader(root, previous)
    root = loader.root

    account_json: dict[str, Any] = {}
    if os.path.isfile(os.path.join(root, "account.json")):
        account_json = _read_object(os.path.join(root, "account.json"), "account.json")
    user_fields = account_json.get("User", {})
    if not isinstance(user_fields, dict):
        raise AccountError(f"{os.path.join(root, 'account.json')}: User must be a JSON object")
    user = Entity(kind="user", key="", name=str(user_fields.get("Name", "Emulator User")), overrides=dict(user_fields))
    user.created = user.modified = _mtime(root)
    if "Id" in user_fields:
        user.explicit_id = str(user_fields["Id"])

    projects: list[Entity] = []
    samples: list[Entity] = []
    appresults: list[Entity] = []
    datasets: list[Entity] = []
    for pname in _subdirs(os.path.join(root, "Projects")):
        pdir = os.path.join(root, "Projects", pname)
        project = loader.entity("project", pdir)
        projects.append(project)
        for sub, kind in PROJECT_CHILDREN:
            for number, cname in enumerate(_subdirs(os.path.join(pdir, sub)), start=1):
                child = loader.entity(kind, os.path.join(pdir, sub, cname), project=project, number=number)
                {"sample": samples, "appresult": appresults, "dataset": datasets}[kind].append(child)
    runs = [loader.entity("run", os.path.join(root, "Runs", r)) for r in _subdirs(os.path.join(root, "Runs"))]
    biosamples = [loader.entity("biosample", os.path.join(root, "BioSamples", b)) for b in _subdirs(os.path.join(root, "BioSamples"))]

    project_by_folder = {os.path.basename(p.folder or ""): p for p in projects}
    biosample_by_folder = {os.path.basename(b.folder or ""): b for b in biosamples}
    for b in biosamples:
        dp = b.overrides.pop("DefaultProject", None)
        if isinstance(dp, str):
            b.default_project = project_by_folder.get(dp)
            if b.default_project is None:
                raise AccountError(f"{b.folder}/.entity.json: DefaultProject {dp!r} is not a project folder")
        elif dp is not None:
            b.overrides["DefaultProject"] = dp  # an explicit object is served as given
    for d in datasets:
        bname = d.overrides.pop("BioSample", None)
        if bname is not None and not isinstance(bname, str):
            raise AccountError(f"{d.folder}/.entity.json: BioSample must be a biosample folder name")
        if bname is None:
            bname = os.path.basename(d.folder or "")
        if bname not in biosample_by_folder:
            # a dataset always belongs to a biosample; create it implicitly (as BaseSpace does)
            b = Entity(kind="biosample", key=f"BioSamples/{bname}", name=display_name(bname))
            b.created = b.modified = d.created
            b.default_project = d.project
            biosamples.append(b)
            loader.entities.append(b)
            biosample_by_folder[bname] = b
        d.biosample = biosample_by_folder[bname]
        if d.biosample.default_project is None:
            d.biosample.default_project = d.project

    appsessions = _build_appsessions(samples + appresults, loader)
    _dataset_sessions(datasets, samples)
    appsessions = _build_appsessions(datasets, loader, appsessions)

    ids = _assign_ids([user] + loader.entities, loader.files, loader.previous)
    by_id = {(e.kind, e.id): e for e in [user] + loader.entities}
    files: dict[str, FileEntry] = {}
    for f in loader.files:
        files.setdefault(f.id, f)  # a repeated explicit file Id serves the first file's bytes

    lookup: dict[str, Entity | FileEntry] = {e.key: e for e in loader.entities if e.folder}
    lookup.update({f.key: f for f in loader.files})
    for e in loader.entities:
        if e.properties:
            e.properties = _resolve_refs(e.properties, lookup, f"{e.folder or e.key}/.entity.json")

    return Account(
        root=root,
        user=user,
        projects=projects,
        runs=runs,
        samples=samples,
        appresults=appresults,
        datasets=datasets,
        biosamples=biosamples,
        appsessions=appsessions,
        by_id=by_id,
        files=files,
        ids=ids,
    )


def _dataset_sessions(datasets: list[Entity], samples: list[Entity]) -> None:
    """Real datasets always come from an app session.  A dataset without ``AppSession`` in its
    ``.entity.json`` shares the session of the same-named sample of its project (the v1 view of
    the same data), so the demo's datasets add no sessions; ``_build_appsessions`` gives the
    others a session of their own."""
    by_name: dict[tuple[str, str], Entity] = {}
    for s in samples:
        if s.appsession is not None and s.project is not None:
            by_name.setdefault((s.project.key, s.name), s)
    for d in datasets:
        if "AppSession" in d.overrides or d.project is None:
            continue
        sample = by_name.get((d.project.key, d.name))
        if sample is not None and sample.appsession is not None:
            d.appsession = sample.appsession


def _build_appsessions(entities: list[Entity], loader: _Loader, existing: list[Entity] | None = None) -> list[Entity]:
    """Entities of one project naming the same AppSession Name share one session; an AppResult
    or a Dataset without one gets its own session named after it; a Sample without one gets none."""
    sessions: dict[tuple[str, str], Entity] = {}
    for s in existing or []:
        assert s.project is not None
        sessions[(s.project.key, s.name)] = s
    for e in entities:
        if e.appsession is not None:
            continue
        spec = e.overrides.pop("AppSession", None)
        where = f"{e.folder}/.entity.json"
        if spec is None:
            if e.kind == "sample":
                continue
            spec = {}
        if not isinstance(spec, dict):
            raise AccountError(f"{where}: AppSession must be a JSON object")
        name = spec.get("Name", e.name)
        if not isinstance(name, str):
            raise AccountError(f"{where}: AppSession Name must be a string")
        assert e.project is not None
        skey = (e.project.key, name)
        session = sessions.get(skey)
        if session is None:
            session = Entity(
                kind="appsession",
                key=f"{e.project.key}/AppSessions/{name}",
                name=name,
                project=e.project,
                created=e.created,
                modified=e.modified,
            )
            sessions[skey] = session
            loader.entities.append(session)
        session.created = min(session.created, e.created)
        session.modified = max(session.modified, e.modified)
        session.overrides.update({k: v for k, v in spec.items() if k != "Properties"})
        if isinstance(spec.get("Properties"), list):
            session.properties = spec["Properties"]
        if "Id" in spec:
            session.explicit_id = str(spec["Id"])
        e.appsession = session
    return list(sessions.values())
