"""BaseMount's directory tree: which API listing fills which folder, and what each folder holds.

Each directory node has a ``kind``; ``Layout.children(node)`` returns its entries (hidden ones
included, flagged). The tree follows BaseMount (docs/tree.md, reference §3–4):

    Projects/<p>/{Samples,AppResults,AppSessions,Datasets,Properties}/...
    Projects/<p>/Samples/<s>/{Files/…, Files.metadata/…, Properties/, SampleProperties}
    Runs/<r>/{Files/…, Properties/}
    BioSamples/<b>/{Datasets/, Merged/, DefaultProject, Status}

Cost rules (why it is shaped like this):
* An entity folder's own entries are built from the parent listing's item: listing ``Samples``
  costs the paged samples call only, never a call per sample, and so does ``ls -l`` of it.
* What a listing item lacks is fetched *lazily*, when the entry that needs it is looked up or read
  (``Layout.resolve``): real sample list items carry no ``AppSession``, ``SampleNumber`` or project,
  so ``ParentAppSession`` and ``SampleProperties`` of a sample come from ``GET v1pre3/samples/{id}``
  (one call per sample opened, shared), and a property link to a sample or app result finds the
  referenced entity's project in the owner's project listing, else from its ``Projects[]``.
* An entity's files are listed once (all pages, concurrently) and the nested ``Files/…`` folders
  are built from that one listing; ``Properties`` costs one call when it is opened.
"""

from __future__ import annotations

import functools
import logging
import shlex
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

from ..api.client import FILES_PAGE_MAX, BaseSpaceClient, path_segment
from ..api.errors import ArchivedError, NotFound, ProtocolError
from ..entities import COLLECTION
from ..options import MountOptions
from ..read.concat import Part
from ..tasks import gather
from .cache import ListingCache
from .merged import DatasetFiles, is_fastq_dataset, manifest_text, merged_name, plan_merge
from .naming import sanitize, unique_names
from .nodes import (
    COMMANDS,
    DIR,
    REMOTE,
    SYMLINK,
    Dynamic,
    EntityRef,
    FilesRef,
    FolderKind,
    MergedRef,
    Node,
    Owner,
    ProjectScope,
    PropertiesRef,
    PropertyLink,
    PropertyRef,
    PropItemsRef,
    RemoteRef,
    SampleDetail,
    SessionLink,
    entity_time,
    json_bytes,
    relative_link,
    safe_size,
    text_node,
)

log = logging.getLogger(__name__)

ROOT_README = """\
This is a BaseSpace Sequence Hub account mounted by basemount_py.

  Projects/<project>/Samples/<sample>/Files/      FASTQs and other sample files
  Projects/<project>/AppResults/<result>/Files/   analysis outputs (BAM, VCF, ...)
  Projects/<project>/AppSessions/                 analyses, linking to their app results
  Projects/<project>/Datasets/                    v2 datasets
  Runs/<run>/Files/                               run folders (RunInfo.xml, InterOp/, Data/...)
  BioSamples/<biosample>/                         v2 biosamples
  BioSamples/<biosample>/Merged/                  one R1/R2 FASTQ.gz per biosample: all its lanes and runs

Hidden files in every entity folder: .id .type .name .json .href .curl .error
Refresh a folder and its sub-folders:  basemount-py refresh PATH   (or: echo refresh > PATH/.commands)
Write mode (docs/writes.md): mkdir Projects/NEW, mkdir Projects/P/AppResults/NEW, copy files into
its Files/, write Properties/Ns.name, rmdir an entity (trash; .Trash/ lists it), basemount-cmd.
"""

ARCHIVED_MESSAGE = """\
Error: {name} is archived in BaseSpace (IsArchived: true): its content cannot be read until it is restored.
Restore it from archival storage in the BaseSpace web UI (open its run or dataset, then File > Archive >
Restore; this takes about two days and is billed per TB), then refresh this folder:
  basemount-cmd --path <mount>/{folder} refresh
"""

ENTITY_HIDDEN = (".id", ".type", ".name", ".json", ".href", ".curl", ".error", ".status")
LIST_HIDDEN = (".json", ".href", ".curl", ".type", ".error")
COMMANDS_NAME = ".commands"
_ENTITY_FOLDER = {"sample": "Samples", "appresult": "AppResults"}  # property link kinds inside a project
ERROR_NAME = ".error"  # every folder has one: why its listing, a write or a command failed
# Names every folder keeps for its own files: a server entry of that name is listed as "NAME (2)".
FOLDER_OWN = frozenset({ERROR_NAME, COMMANDS_NAME})
MERGED_DIR = "Merged"  # BioSamples/<b>/Merged/: the biosample's FASTQs, one file per read
MANIFEST_NAME = ".manifest"


@dataclass(frozen=True)
class EntityList:
    """A folder that lists one API collection: an entity folder per item (``Layout._list_entities``)."""

    href: str  # the listing; "{project}" stands for the folder's project (its ProjectScope)
    child: FolderKind  # the kind of each entity folder
    collection: str  # API collection of the items (.type, xattrs, .href of each item)
    v2: bool = False
    project_param: str | None = None  # the query parameter that names the project, if any
    name_key: str = "Name"  # the item field that names its folder


K = FolderKind
# Every folder kind that is "one API listing -> entity folders + the listing's hidden files".
ENTITY_LISTS: dict[FolderKind, EntityList] = {
    K.PROJECTS: EntityList("v1pre3/users/current/projects", K.PROJECT, "projects"),
    K.SAMPLES: EntityList("v1pre3/projects/{project}/samples", K.SAMPLE, "samples"),
    K.APPRESULTS: EntityList("v1pre3/projects/{project}/appresults", K.APPRESULT, "appresults"),
    K.APPSESSIONS: EntityList("v1pre3/users/current/appsessions", K.APPSESSION, "appsessions", project_param="output.projects"),
    K.DATASETS: EntityList("v2/datasets", K.DATASET, "datasets", v2=True, project_param="projectid"),
    K.RUNS: EntityList("v1pre3/users/current/runs", K.RUN, "runs"),
    K.BIOSAMPLES: EntityList("v2/biosamples", K.BIOSAMPLE, "biosamples", v2=True, name_key="BioSampleName"),
    K.TRASH: EntityList("v2/trash", K.TRASHITEM, "trash", v2=True),
}

Lister = Callable[[Node], Awaitable[list[Node]]]


def _p(path: tuple[str, ...], *more: str) -> tuple[str, ...]:
    return path + tuple(more)


def properties_href(collection: str, entity_id: object) -> str:
    """The API path of an entity's properties; its long arrays' item pages lie below it."""
    return f"v1pre3/{collection}/{path_segment(entity_id)}/properties"


class Layout:
    def __init__(self, api: BaseSpaceClient, *, metadata_ttl: float = MountOptions.metadata_ttl, max_listings: int = MountOptions.max_listings):
        self.api = api
        self.api_server = api.api_server.rstrip("/")
        # Raw API listings, keyed by request: shared by every folder built from them.
        self.lists = ListingCache(ttl=metadata_ttl, maxsize=max_listings)
        self.errors: dict[tuple[str, ...], str] = {}
        self.write_errors: dict[tuple[str, ...], str] = {}
        # What a successful listing found wrong with the data itself (Merged/: files that cannot
        # be paired); replaced each time the folder is listed.
        self.problems: dict[tuple[str, ...], str] = {}
        # Entries that exist only in this mount until the server has them (write mode): folders
        # made with mkdir inside Files/ or Properties/, files being uploaded. Folder path -> name -> Node.
        self.local: dict[tuple[str, ...], dict[str, Node]] = {}
        # Write mode: the failed and retrying uploads of a folder, listed in its .error.
        self.upload_errors: Callable[[tuple[str, ...]], str] = lambda path: ""
        # Which method lists each folder kind: the entity lists share one recipe, the rest have their own.
        self._listers: dict[FolderKind, Lister] = {
            K.ROOT: self._root,
            K.PROJECT: self._project,
            K.SAMPLE: self._sample,
            K.APPRESULT: self._appresult,
            K.APPSESSION: self._appsession,
            K.RUN: self._run,
            K.BIOSAMPLE: self._biosample,
            K.BIOSAMPLE_DATASETS: self._biosample_datasets_links,
            K.BIOSAMPLE_MERGED: self._biosample_merged,
            K.DATASET: self._dataset,
            K.TRASHITEM: self._trashitem,
            K.FILES: self._files,
            K.FILESMETA: self._filesmeta,
            K.FILEMETA: self._filemeta,
            K.PROPERTIES: self._properties,
            K.PROPITEMS: self._propitems,
        }

    # -- raw API listings (cached) ----------------------------------------------------------

    async def _list(self, path: str, params: dict | None = None, *, v2: bool = False, files: bool = False, values: bool = False) -> list:
        key = (path, tuple(sorted((params or {}).items())), v2)
        page = FILES_PAGE_MAX if files else 1024

        async def load() -> list:
            return await self.api.list_all(path, params, v2=v2, page_size=page, values=values)

        return await self.lists.get(key, load)

    def cached_list(self, path: str) -> list | None:
        """The items ``_list(path)`` (no parameters, v1) holds now, fresh or not, without loading;
        a write may add to them in place (an uploaded file joins its app result's listing)."""
        return self.lists.peek((path, (), False))

    def drop_api(self, *paths: str, below: bool = False) -> None:
        """Forget the raw listings (and entity GETs) of these API paths, whatever their parameters;
        ``below``: also of every path under them (an entity's properties and their item pages)."""
        wanted = set(paths)
        prefixes = tuple(p + "/" for p in paths) if below else ()
        self.lists.invalidate(lambda key: key[0] in wanted or (bool(prefixes) and key[0].startswith(prefixes)))

    def expire_api(self) -> None:
        """``refresh``: reload every raw listing on next use, keeping the old ones as a fallback."""
        self.lists.expire(lambda key: True)

    @staticmethod
    def refresh_scope(path: tuple[str, ...]) -> tuple[str, ...]:
        """The folder a refresh of ``path`` must reload: ``BioSamples/<b>/Merged`` is built from
        its sibling ``Datasets/``, and its ``.manifest`` points there, so both are reloaded."""
        if len(path) == 3 and path[0] == "BioSamples" and path[2] == MERGED_DIR:
            return path[:2]
        return path

    async def entity_detail(self, collection: str, entity_id: str) -> dict:
        """``GET v1pre3/{collection}/{id}``: the entity's full shape (real list items are leaner:
        a sample's ``AppSession``, ``SampleNumber`` and ``Projects[]`` come only from here).
        Cached beside the listings, so the lazy entries of one folder share one call."""
        href = f"v1pre3/{collection}/{path_segment(entity_id)}"

        async def load() -> dict:
            body = await self.api.get_json(href)
            entity = body.get("Response")
            if not isinstance(entity, dict):
                raise ProtocolError(f"{href}: the answer holds no entity")
            return entity

        return await self.lists.get((href, (), "entity"), load)

    # -- lazy entries -------------------------------------------------------------------------
    # A node with a ``lazy`` is complete only once ``resolve`` has run: its symlink target or text
    # comes from a call that the folder's listing must not cost (see the module docstring).

    async def resolve(self, node: Node) -> Node:
        """Complete a lazy node in place (once per node); NotFound when the server has no such
        thing (a sample without an app session). Other nodes are returned untouched."""
        lazy = node.lazy
        if lazy is None or node.resolved:
            return node
        if isinstance(lazy, SessionLink):
            detail = await self.entity_detail("samples", lazy.sample_id)
            session = detail.get("AppSession")
            if not isinstance(session, dict) or session.get("Id") is None:
                raise NotFound(node.path)
            node.target = _session_target(session["Id"])
        elif isinstance(lazy, SampleDetail):
            detail = await self.entity_detail("samples", lazy.sample_id)
            node.content = _sample_properties({**lazy.item, **detail}).encode()
        else:
            project_id = await self._project_of(lazy.kind, lazy.entity_id, lazy.project_hint)
            target = ("Projects", sanitize(f".id.{project_id}"), _ENTITY_FOLDER[lazy.kind], sanitize(f".id.{lazy.entity_id}"))
            node.target = relative_link(node.path[:-1], target)
        node.resolved = True
        return node

    async def _project_of(self, kind: str, entity_id: str, hint: str | None) -> str:
        """The project a referenced sample or app result lives in. Most references point into the
        referring entity's own project (``hint``): its listing (one call for any number of links,
        usually cached already) tells. Otherwise the entity's own ``Projects[]`` (one GET)."""
        collection = COLLECTION[kind]
        if hint is not None:
            listed = await self._list(f"v1pre3/projects/{path_segment(hint)}/{collection}")
            if any(str(item.get("Id")) == entity_id for item in listed):
                return hint
        project_id = _first_project_id(await self.entity_detail(collection, entity_id))
        if project_id is None:
            raise NotFound(f"{kind} {entity_id}: in no project")
        return project_id

    # -- helpers that build common entries --------------------------------------------------

    def _curl(self, href: str) -> str:
        url = href if href.startswith("http") else f"{self.api_server}/{href}"
        # The URL comes from the server: shell-quoted, so `sh .curl` can never run anything else.
        return f'curl -s -H "x-access-token: $BASESPACE_ACCESS_TOKEN" {shlex.quote(url)}\n'

    def error_node(self, path: tuple[str, ...]) -> Node:
        # listing errors are cleared by the next good listing; write/command errors (write mode)
        # by the next successful write or command in the folder
        text = self.errors.get(path, "") + self.problems.get(path, "") + self.write_errors.get(path, "") + self.upload_errors(path)
        node = text_node(_p(path, ERROR_NAME), text)
        node.dynamic = Dynamic.ERROR
        return node

    def refuse_archived(self, node: Node) -> None:
        """An archived file is refused at open, before any call (its content URL would only be
        refused too, and retrying cannot help): EACCES, and its folder's ``.error`` says why."""
        if not isinstance(node.data, (RemoteRef, MergedRef)) or not node.data.archived:
            return
        folder = node.path[:-1]
        self.write_errors[folder] = ARCHIVED_MESSAGE.format(name=node.name, folder="/".join(folder))
        raise ArchivedError(f"{node.name}: archived in BaseSpace; restore it to read it (see {'/'.join(folder)}/.error)")

    def commands_node(self, path: tuple[str, ...], hidden: bool = True) -> Node:
        return Node(path=_p(path, COMMANDS_NAME), type=COMMANDS, hidden=hidden)

    def _list_hidden(self, path: tuple[str, ...], href: str, collection: str, items: list[dict]) -> list[Node]:
        envelope = {
            "Response": {
                "Items": items,
                "DisplayedCount": len(items),
                "TotalCount": len(items),
                "Offset": 0,
                "Limit": len(items),
                "SortDir": "Asc",
                "SortBy": "Id",
            },
            "ResponseStatus": {},
            "Notifications": [],
        }
        return [
            text_node(_p(path, ".json"), json_bytes(envelope)),
            text_node(_p(path, ".href"), href + "\n"),
            text_node(_p(path, ".curl"), self._curl(href)),
            text_node(_p(path, ".type"), collection + "\n"),
            self.error_node(path),
        ]

    def _entity_hidden(self, path: tuple[str, ...], entity: dict, collection: str, name_key: str = "Name") -> list[Node]:
        href = str(entity.get("Href") or f"v1pre3/{collection}/{entity.get('Id')}")
        mtime = entity_time(entity)
        envelope = {"Response": entity, "ResponseStatus": {}, "Notifications": []}
        nodes = [
            text_node(_p(path, ".id"), f"{entity.get('Id', '')}\n", mtime),
            text_node(_p(path, ".type"), collection + "\n", mtime),
            text_node(_p(path, ".name"), f"{entity.get(name_key, '')}\n", mtime),
            text_node(_p(path, ".json"), json_bytes(envelope), mtime),
            text_node(_p(path, ".href"), _relative_href(href) + "\n", mtime),
            text_node(_p(path, ".curl"), self._curl(href), mtime),
            self.error_node(path),
        ]
        if entity.get("Status") is not None:
            nodes.append(text_node(_p(path, ".status"), f"{entity.get('Status')}\n", mtime))
        return nodes

    def _entity_dirs(
        self, path: tuple[str, ...], items: list[dict], kind: FolderKind, collection: str, name_key: str = "Name", project_id: str | None = None
    ) -> list[Node]:
        """One folder per entity (duplicates suffixed), plus hidden ``.id.<id>`` links."""
        valid = [i for i in items if i.get("Id") is not None]
        links = {str(i["Id"]): sanitize(f".id.{i['Id']}") for i in valid}
        # An entity's folder never takes the name of another's .id.<id> link (it would replace it).
        reserved = set(LIST_HIDDEN) | FOLDER_OWN | set(links.values())
        names = unique_names(((str(i["Id"]), i.get(name_key)) for i in valid), reserved=reserved)
        out: list[Node] = []
        for item in valid:
            entity_id = str(item["Id"])
            name = names[entity_id]
            out.append(
                Node(
                    path=_p(path, name),
                    type=DIR,
                    kind=kind,
                    data=EntityRef(item, collection, project_id),
                    mtime=entity_time(item),
                    xattrs=_entity_xattrs(item, collection),
                )
            )
            out.append(Node(path=_p(path, links[entity_id]), type=SYMLINK, target=name, mtime=entity_time(item)))
        return out

    def _entity_children(self, node: Node, sub: list[Node], name_key: str = "Name") -> list[Node]:
        ref = _entity(node)
        return sub + self._entity_hidden(node.path, ref.item, ref.collection, name_key) + [self.commands_node(node.path)]

    # -- the tree ---------------------------------------------------------------------------

    async def children(self, node: Node) -> list[Node]:
        listed = await self._lister(node.kind)(node)
        names = {child.name for child in listed}
        for name, child in self.local.get(node.path, {}).items():
            if child.upload is not None and name in names:
                # a spooled file or property not sent yet shadows the server's entry of that name
                listed = [c for c in listed if c.name != name]
                names.discard(name)
            if name not in names:  # otherwise the server's entry wins once it exists
                listed.append(child)
                names.add(name)
        if ERROR_NAME not in names and node.type == DIR:
            # every folder has a .error (commands and writes report there), hidden unless listed
            error = self.error_node(node.path)
            error.hidden = True
            listed.append(error)
        return listed

    def _lister(self, kind: FolderKind | None) -> Lister:
        if kind is None:  # not a folder
            return _nothing
        spec = ENTITY_LISTS.get(kind)
        if spec is not None:
            return lambda node: self._list_entities(node, spec)
        return self._listers.get(kind, _nothing)

    async def _list_entities(self, node: Node, spec: EntityList) -> list[Node]:
        """The one recipe of a collection folder: list -> entity folders -> hidden files -> commands."""
        pid: str | None = None
        href, params, shown = spec.href, None, spec.href
        if "{project}" in href or spec.project_param:
            if not isinstance(node.data, ProjectScope):
                raise TypeError(f"/{'/'.join(node.path)}: a {node.kind} folder without its project")
            pid = node.data.project_id
            href = shown = href.format(project=path_segment(pid))
            if spec.project_param:
                params = {spec.project_param: pid}
                shown = f"{href}?{spec.project_param}={pid}"
        items = await self._list(href, params, v2=spec.v2)
        return (
            self._entity_dirs(node.path, items, spec.child, spec.collection, name_key=spec.name_key, project_id=pid)
            + self._list_hidden(node.path, shown, spec.collection, items)
            + [self.commands_node(node.path)]
        )

    async def _root(self, node: Node) -> list[Node]:
        path = node.path
        return [
            Node(path=_p(path, "Projects"), type=DIR, kind=K.PROJECTS, writable=True),
            Node(path=_p(path, "Runs"), type=DIR, kind=K.RUNS, writable=True),
            Node(path=_p(path, "BioSamples"), type=DIR, kind=K.BIOSAMPLES),
            Node(path=_p(path, ".Trash"), type=DIR, kind=K.TRASH),
            text_node(_p(path, "README"), ROOT_README),
            self.commands_node(path, hidden=False),
        ]

    async def _project(self, node: Node) -> list[Node]:
        pid = _entity(node).id
        path, mtime = node.path, node.mtime
        scope = ProjectScope(pid)
        # writable: mkdir (AppResults) and rmdir = move to trash
        sub = [
            Node(path=_p(path, "Samples"), type=DIR, kind=K.SAMPLES, data=scope, writable=True, mtime=mtime),
            Node(path=_p(path, "AppResults"), type=DIR, kind=K.APPRESULTS, data=scope, writable=True, mtime=mtime),
            Node(path=_p(path, "AppSessions"), type=DIR, kind=K.APPSESSIONS, data=scope, writable=True, mtime=mtime),
            Node(path=_p(path, "Datasets"), type=DIR, kind=K.DATASETS, data=scope, mtime=mtime),
            self._properties_dir(path, "projects", pid, mtime, project_id=pid),
        ]
        return self._entity_children(node, sub)

    def _properties_dir(self, path: tuple[str, ...], collection: str, entity_id: str, mtime: float, project_id: str | None = None) -> Node:
        # project_id: the project of the entity owning the properties, where its links most likely point
        return Node(
            path=_p(path, "Properties"),
            type=DIR,
            kind=K.PROPERTIES,
            data=PropertiesRef(Owner(collection, entity_id), project_id),
            writable=True,
            mtime=mtime,
        )

    def _files_dirs(self, path: tuple[str, ...], collection: str, entity_id: str, mtime: float, v2: bool = False, writable: bool = False) -> list[Node]:
        files = FilesRef(Owner(collection, entity_id, v2))
        # writable: an app result that is not Complete yet: files can be uploaded into it
        return [
            Node(path=_p(path, "Files"), type=DIR, kind=K.FILES, data=files, writable=writable, mtime=mtime),
            Node(path=_p(path, "Files.metadata"), type=DIR, kind=K.FILESMETA, data=files, writable=writable, mtime=mtime, hidden=True),
        ]

    async def _sample(self, node: Node) -> list[Node]:
        ref = _entity(node)
        sid, mtime, path = ref.id, node.mtime, node.path
        sub = self._files_dirs(path, "samples", sid, mtime)
        sub.append(self._properties_dir(path, "samples", sid, mtime, project_id=ref.project_id))
        # Real sample list items lack SampleNumber and AppSession: both come from GET samples/{id},
        # made when one of these two entries is looked up or the sample folder is listed.
        props = text_node(_p(path, "SampleProperties"), "", mtime)
        props.lazy, props.eager = SampleDetail(sid, ref.item), True
        sub.append(props)
        sub += self._parent_session_link(node)
        return self._entity_children(node, sub)

    def _parent_session_link(self, node: Node) -> list[Node]:
        ref, path = _entity(node), _p(node.path, "ParentAppSession")
        session = ref.item.get("AppSession")
        if isinstance(session, dict) and session.get("Id") is not None:  # app result list items have it
            return [Node(path=path, type=SYMLINK, target=_session_target(session["Id"]), mtime=node.mtime)]
        if ref.collection != "samples":
            return []
        return [Node(path=path, type=SYMLINK, mtime=node.mtime, lazy=SessionLink(ref.id), eager=True)]

    async def _appresult(self, node: Node) -> list[Node]:
        ref = _entity(node)
        aid, mtime, path = ref.id, node.mtime, node.path
        running = str(ref.item.get("Status", "Complete")).lower() != "complete"
        sub = self._files_dirs(path, "appresults", aid, mtime, writable=running)
        sub.append(self._properties_dir(path, "appresults", aid, mtime, project_id=ref.project_id))
        sub += self._parent_session_link(node)
        return self._entity_children(node, sub)

    async def _appsession(self, node: Node) -> list[Node]:
        ref = _entity(node)
        pid = ref.project_id
        if pid is None:
            raise TypeError(f"/{'/'.join(node.path)}: an app session folder without its project")
        sid, mtime, path = ref.id, node.mtime, node.path
        sub = [self._properties_dir(path, "appsessions", sid, mtime, project_id=pid)]
        results = await self._list(f"v1pre3/projects/{path_segment(pid)}/appresults")
        for item in results:
            session = item.get("AppSession")
            if isinstance(session, dict) and str(session.get("Id")) == sid and item.get("Id") is not None:
                name = sanitize(f"AppResults.{item['Id']}.{item.get('Name', '')}")
                target = "../../AppResults/" + sanitize(f".id.{item['Id']}")
                sub.append(Node(path=_p(path, name), type=SYMLINK, target=target, mtime=entity_time(item)))
        return self._entity_children(node, sub)

    async def _run(self, node: Node) -> list[Node]:
        rid, mtime, path = _entity(node).id, node.mtime, node.path
        sub = self._files_dirs(path, "runs", rid, mtime)
        sub.append(self._properties_dir(path, "runs", rid, mtime))
        return self._entity_children(node, sub)

    async def _biosample(self, node: Node) -> list[Node]:
        ref = _entity(node)
        entity, path, mtime = ref.item, node.path, node.mtime
        sub = [
            Node(path=_p(path, "Datasets"), type=DIR, kind=K.BIOSAMPLE_DATASETS, data=ref, mtime=mtime),
            Node(path=_p(path, MERGED_DIR), type=DIR, kind=K.BIOSAMPLE_MERGED, data=ref, mtime=mtime),
            text_node(_p(path, "Status"), f"{entity.get('Status', '')}\n", mtime),
        ]
        project = entity.get("DefaultProject")
        if isinstance(project, dict) and project.get("Id") is not None:
            target = "../../Projects/" + sanitize(f".id.{project['Id']}")
            sub.append(Node(path=_p(path, "DefaultProject"), type=SYMLINK, target=target, mtime=mtime))
        return self._entity_children(node, sub, name_key="BioSampleName")

    async def _biosample_datasets(self, biosample_id: str) -> tuple[list[dict], dict[object, str]]:
        """The biosample's datasets and their entry names under ``BioSamples/<b>/Datasets/``."""
        items = await self._list("v2/datasets", {"inputbiosamples": biosample_id}, v2=True)
        names = unique_names(((str(i["Id"]), i.get("Name")) for i in items if i.get("Id") is not None), reserved=FOLDER_OWN)
        return items, names

    async def _biosample_datasets_links(self, node: Node) -> list[Node]:
        items, names = await self._biosample_datasets(_entity(node).id)
        out = []
        for item in items:
            project = found if isinstance(found := item.get("Project"), dict) else {}
            if item.get("Id") is None or project.get("Id") is None:
                continue
            target = "../../../Projects/{}/Datasets/{}".format(sanitize(f".id.{project['Id']}"), sanitize(f".id.{item['Id']}"))
            out.append(Node(path=_p(node.path, names[str(item["Id"])]), type=SYMLINK, target=target, mtime=entity_time(item)))
        return out

    async def _biosample_merged(self, node: Node) -> list[Node]:
        """``Merged/``: one FASTQ.gz per read, concatenating the biosample's FASTQ datasets
        (tree/merged.py). Costs the listings ``Datasets/`` and each dataset's ``Files/`` make anyway."""
        entity, path = _entity(node).item, node.path
        items, names = await self._biosample_datasets(str(entity["Id"]))
        fastq = [i for i in items if i.get("Id") is not None and is_fastq_dataset(i)]
        trees = await gather([functools.partial(self.file_tree, Owner("datasets", str(i["Id"]), v2=True)) for i in fastq])
        datasets = [DatasetFiles(i, names[str(i["Id"])], list(walk_file_tree(t))) for i, t in zip(fastq, trees, strict=True)]
        plan = plan_merge(datasets)
        file_items = {str(item["Id"]): item for ds in datasets for _, item in ds.files}
        file_names = {read: sanitize(merged_name(str(entity.get("BioSampleName") or entity["Id"]), read)) for read in plan.reads}
        if plan.problem:
            self.problems[path] = f"no merged FASTQs: {plan.problem}\n"
        else:
            self.problems.pop(path, None)
        out = []
        for read, parts in plan.reads.items():
            archived = [p for p in parts if p.archived]
            if archived:
                reason = f"{file_names[read]}: part {archived[0].path} is archived; restore it in BaseSpace to read it\n"
                self.problems[path] = self.problems.get(path, "") + reason
            out.append(
                Node(
                    path=_p(path, file_names[read]),
                    type=REMOTE,
                    file_id=f"merged:{entity['Id']}:{read}",
                    size=sum(p.size for p in parts),
                    mtime=max(p.mtime for p in parts),
                    data=MergedRef(tuple(_read_part(p.name, file_items[p.file_id]) for p in parts), archived=bool(archived)),
                )
            )
        manifest = manifest_text(entity, file_names, plan)
        out += [text_node(_p(path, MANIFEST_NAME), manifest, node.mtime), self.error_node(path)]
        return out + [self.commands_node(path)]

    async def _dataset(self, node: Node) -> list[Node]:
        entity, path, mtime = _entity(node).item, node.path, node.mtime
        sub = self._files_dirs(path, "datasets", str(entity["Id"]), mtime, v2=True)
        dtype = found if isinstance(found := entity.get("DatasetType"), dict) else {}
        sub.append(text_node(_p(path, "DatasetTypeId"), f"{dtype.get('Id', '')}\n", mtime))
        return self._entity_children(node, sub)

    # -- trash ------------------------------------------------------------------------------------

    async def _trashitem(self, node: Node) -> list[Node]:
        entity = _entity(node).item
        kind = entity.get("TrashItemType") or "Deleted"
        includes = entity.get("Includes")
        text = f"{kind} ({includes})\n" if includes else f"{kind}\n"
        sub = [text_node(_p(node.path, "TrashItemType"), text, node.mtime)]
        return self._entity_children(node, sub)

    # -- files --------------------------------------------------------------------------------

    async def file_tree(self, owner: Owner) -> FileTree:
        """The owner's files, nested by folder."""
        prefix = "v2" if owner.v2 else "v1pre3"
        href = f"{prefix}/{owner.collection}/{path_segment(owner.entity_id)}/files"
        items = await self._list(href, v2=owner.v2, files=True)
        return build_file_tree(items)

    async def _subtree(self, node: Node) -> FileTree | None:
        files = _files_ref(node)
        tree: FileTree | None = await self.file_tree(files.owner)
        for part in files.sub:
            tree = tree.dirs.get(part) if tree is not None else None
        return tree

    async def _files(self, node: Node) -> list[Node]:
        return await self._files_listing(node, self._remote_file)

    async def _filesmeta(self, node: Node) -> list[Node]:
        """Files.metadata/<path>/: a folder per file holding its hidden metadata files."""
        return await self._files_listing(node, self._file_metadata_dir)

    async def _files_listing(self, node: Node, file_entry: Callable[[tuple[str, ...], dict], Node]) -> list[Node]:
        """``Files/`` and ``Files.metadata/`` (and the folders below them) list the same folders of
        the owner's file tree; each file is a ``file_entry``."""
        tree = await self._subtree(node)
        if tree is None:
            return []
        files = _files_ref(node)
        writable = node.writable and node.kind == K.FILES  # uploads go to Files/, never to its metadata
        out = [
            Node(path=_p(node.path, name), type=DIR, kind=node.kind, data=FilesRef(files.owner, files.sub + (name,)), writable=writable, mtime=sub.mtime)
            for name, sub in tree.dirs.items()
        ]
        return out + [file_entry(_p(node.path, name), item) for name, item in tree.files.items()]

    @staticmethod
    def _remote_file(path: tuple[str, ...], item: dict) -> Node:
        return Node(
            path=path,
            type=REMOTE,
            file_id=str(item["Id"]),
            size=safe_size(item.get("Size")),
            mtime=entity_time(item),
            xattrs=_entity_xattrs(item, "files"),
            immutable=True,
            data=RemoteRef(content_version(item), item.get("ETag"), archived=item.get("IsArchived") is True),
        )

    @staticmethod
    def _file_metadata_dir(path: tuple[str, ...], item: dict) -> Node:
        return Node(path=path, type=DIR, kind=K.FILEMETA, data=EntityRef(item, "files"), mtime=entity_time(item), xattrs=_entity_xattrs(item, "files"))

    async def _filemeta(self, node: Node) -> list[Node]:
        return self._entity_hidden(node.path, _entity(node).item, "files")

    # -- properties ---------------------------------------------------------------------------

    async def _properties(self, node: Node) -> list[Node]:
        if not isinstance(node.data, PropertiesRef):
            raise TypeError(f"/{'/'.join(node.path)}: a Properties folder without its owner")
        owner, hint = node.data.owner, node.data.project_id
        items = await self._list(properties_href(owner.collection, owner.entity_id))
        names = unique_names(((i, p.get("Name")) for i, p in enumerate(items)), reserved=FOLDER_OWN)
        return [self._property_node(_p(node.path, names[index]), prop, node.mtime, owner, hint) for index, prop in enumerate(items)]

    def _property_node(self, path: tuple[str, ...], prop: dict, mtime: float, owner: Owner, hint: str | None) -> Node:
        name, ptype = str(prop.get("Name", "")), str(prop.get("Type", "string"))
        if ptype.endswith("[]") or ptype in ("map", "maps"):
            items = prop.get("Items")
            if not isinstance(items, list):
                items = []
            total = prop.get("ItemsTotalCount")
            # The properties listing shows only the first items of a long array (BaseSpace's
            # propertyitemslimit): the folder then lists them all through .../items, paged.
            partial = isinstance(total, int) and not isinstance(total, bool) and total > len(items)
            data = PropItemsRef(owner, name, ptype, tuple(items), partial, hint)
            return Node(path=path, type=DIR, kind=K.PROPITEMS, data=data, writable=True, mtime=mtime)
        node = self._property_value(path, ptype, prop.get("Content"), mtime, hint)
        node.data = PropertyRef(owner, name)
        return node

    def _property_value(self, path: tuple[str, ...], ptype: str, value: Any, mtime: float, hint: str | None) -> Node:
        base = ptype.rstrip("[]")
        if base == "string" or isinstance(value, str):
            return text_node(path, "" if value is None else str(value), mtime)
        if isinstance(value, dict) and value.get("Id") is not None:
            eid = str(value["Id"])
            target = {"project": ("Projects",), "run": ("Runs",)}.get(base)
            if target is not None:  # top-level folders: no project needed
                return Node(path=path, type=SYMLINK, target=relative_link(path[:-1], target + (sanitize(f".id.{eid}"),)), mtime=mtime)
            if base in _ENTITY_FOLDER:  # the project is looked up when the link is (Layout.resolve)
                return Node(path=path, type=SYMLINK, mtime=mtime, lazy=PropertyLink(eid, base, hint))
        return text_node(path, json_bytes(value), mtime)

    async def property_items(self, node: Node) -> list:
        """Every item of an array property's folder: the ones the properties listing showed, or,
        when it showed only the first ones, all pages of ``.../properties/{name}/items``."""
        data = node.data
        if not isinstance(data, PropItemsRef):
            return []
        if data.partial:
            owner = data.owner
            return await self._list(f"{properties_href(owner.collection, owner.entity_id)}/{path_segment(data.name)}/items", values=True)
        return list(data.items)

    async def _propitems(self, node: Node) -> list[Node]:
        ptype = node.data.type if isinstance(node.data, PropItemsRef) else ""
        items = await self.property_items(node)
        out = []
        if ptype in ("map", "maps"):
            names = unique_names(((i, entry.get("Key") if isinstance(entry, dict) else None) for i, entry in enumerate(items)), reserved=FOLDER_OWN)
            for i, entry in enumerate(items):
                values = entry.get("Values") if isinstance(entry, dict) else entry
                text = "\n".join(str(v) for v in values) + "\n" if isinstance(values, list) else json_bytes(values)
                out.append(text_node(_p(node.path, names[i]), text, node.mtime))
            return out
        hint = node.data.project_id if isinstance(node.data, PropItemsRef) else None
        for i, value in enumerate(items):
            out.append(self._property_value(_p(node.path, str(i)), ptype, value, node.mtime, hint))
        return out


def _entity(node: Node) -> EntityRef:
    """The entity of an entity folder (its kind's lister needs one: anything else is a bug)."""
    if not isinstance(node.data, EntityRef):
        raise TypeError(f"/{'/'.join(node.path)}: a {node.kind} folder without its entity")
    return node.data


def _files_ref(node: Node) -> FilesRef:
    if not isinstance(node.data, FilesRef):
        raise TypeError(f"/{'/'.join(node.path)}: a {node.kind} folder without its files' owner")
    return node.data


def _session_target(session_id: object) -> str:
    # The entity folder is Projects/<p>/<Collection>/<e>: the session lives in ../../AppSessions.
    return "../../AppSessions/" + sanitize(f".id.{session_id}")


def _first_project_id(entity: dict) -> str | None:
    """The project of a GET-one sample or app result: real ones carry ``Projects[]``."""
    projects = entity.get("Projects")
    for project in projects if isinstance(projects, list) else []:
        if isinstance(project, dict) and project.get("Id") is not None:
            return str(project["Id"])
    return None


def _sample_properties(entity: dict) -> str:
    keys = (
        "Name",
        "SampleId",
        "SampleNumber",
        "ExperimentName",
        "Status",
        "IsPairedEnd",
        "Read1",
        "Read2",
        "NumReadsRaw",
        "NumReadsPF",
        "TotalSize",
        "DateCreated",
    )
    return "".join(f"{k}: {entity[k]}\n" for k in keys if k in entity)


def _relative_href(href: str) -> str:
    marker = href.find("/v1pre3/")
    if marker < 0:
        marker = href.find("/v2/")
    return href[marker + 1 :] if href.startswith("http") and marker >= 0 else href


def _read_part(name: str, item: dict) -> Part:
    """A merged file's part as read/concat.py opens it."""
    return Part(str(item["Id"]), safe_size(item.get("Size")), name, content_version(item), item.get("ETag"))


def content_version(item: dict) -> str:
    """What pins a file's bytes besides its id: its ETag, else its modification date (the
    persistent content cache is keyed by it, so content that changed is never served)."""
    etag = item.get("ETag")
    if isinstance(etag, str) and etag.strip():
        return "etag:" + etag.strip()
    return f"modified:{item.get('DateModified')}"


def _entity_xattrs(entity: dict, collection: str) -> dict[str, bytes]:
    href = str(entity.get("Href") or f"v1pre3/{collection}/{entity.get('Id')}")
    return {
        "user.basespace.id": str(entity.get("Id", "")).encode(),
        "user.basespace.type": collection.encode(),
        "user.basespace.href": _relative_href(href).encode(),
    }


def walk_file_tree(tree: FileTree, above: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """Every file of a :func:`build_file_tree` tree as (entry names from the top, item)."""
    for name, item in tree.files.items():
        yield above + (name,), item
    for name, sub in tree.dirs.items():
        yield from walk_file_tree(sub, above + (name,))


async def _nothing(node: Node) -> list[Node]:
    """The listing of a node without a folder kind (none of its own)."""
    return []


@dataclass
class FileTree:
    """An owner's files nested by their ``Path`` (:func:`build_file_tree`), by entry name."""

    dirs: dict[str, FileTree] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)  # entry name -> the file's listing item
    mtime: float = 0.0  # of the newest file below (a folder has no date of its own)


def build_file_tree(items: list[dict]) -> FileTree:
    """Nest a flat file listing by ``Path``; sanitise every component; suffix duplicates by Id."""
    root = FileTree()
    # Files are named once their folder is complete: a file may not take a sub-folder's name.
    pending: dict[int, tuple[FileTree, list[tuple[str, str, dict]]]] = {}
    for item in items:
        if item.get("Id") is None:
            continue
        raw_path = str(item.get("Path") or item.get("Name") or "")
        parts = [p for p in raw_path.split("/") if p not in ("",)]
        if not parts:
            parts = [str(item.get("Name") or item["Id"])]
        node = root
        for part in parts[:-1]:
            node = node.dirs.setdefault(sanitize(part), FileTree())
            node.mtime = max(node.mtime, entity_time(item))
        pending.setdefault(id(node), (node, []))[1].append((str(item["Id"]), parts[-1], item))
    for node, files in pending.values():
        names = unique_names(((fid, raw) for fid, raw, _ in files), reserved=set(node.dirs) | FOLDER_OWN)
        node.files = {names[fid]: item for fid, _, item in files}
    return root
