"""The filesystem as plain async Python: inode table, lookup, readdir, refresh.

``core.Filesystem`` builds the filesystem operations on this. Inodes are assigned on first
lookup and dropped again when the kernel forgets them (lookup count reaches zero), so memory follows
what the kernel holds, not the size of the account; listings live in bounded TTL caches.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable

from ..api.errors import NotADirectory, NotFound
from ..options import MountOptions
from .cache import ListingCache
from .layout import COMMANDS_NAME, ERROR_NAME, Layout
from .nodes import DIR, Dynamic, FolderKind, Node

log = logging.getLogger(__name__)

ROOT_INODE = 1


class Tree:
    def __init__(self, layout: Layout, *, metadata_ttl: float = MountOptions.metadata_ttl, max_listings: int = MountOptions.max_listings):
        self.layout = layout
        self.metadata_ttl = metadata_ttl
        self.listings = ListingCache(ttl=metadata_ttl, maxsize=max_listings)
        self._next_ino = itertools.count(ROOT_INODE + 1)
        root = Node(path=(), type=DIR, kind=FolderKind.ROOT)
        self.nodes: dict[int, Node] = {ROOT_INODE: root}
        self.by_path: dict[tuple[str, ...], int] = {(): ROOT_INODE}
        self.lookup_counts: dict[int, int] = {ROOT_INODE: 1}
        self.refreshed_at: float | None = None  # listing-cache clock time of the last refresh

    # -- listings -------------------------------------------------------------------------

    async def children(self, node: Node) -> dict[str, Node]:
        if node.type != DIR:
            raise NotADirectory(node.path)

        async def load() -> dict[str, Node]:
            stale_before = self.layout.lists.stale_served
            try:
                listed = await self.layout.children(node)
            except Exception as exc:  # whatever it was (a bug too) is told in .error, then raised on
                self.layout.errors[node.path] = f"Error: listing this folder failed: {type(exc).__name__}: {exc}\n"
                raise
            if self.layout.lists.stale_served != stale_before:
                # Built from an API listing that could not be reloaded (the server is down):
                # say so in .error, while `ls` keeps showing what was there. (A folder loaded at
                # the same moment may be told so too; that happens only during an outage.)
                reason = self.layout.lists.last_stale_reason
                self.layout.errors[node.path] = f"Error: reloading this folder failed, showing the earlier listing: {reason}\n"
            else:
                self.layout.errors.pop(node.path, None)
            return {child.name: child for child in listed}

        return await self.listings.get(node.path, load)

    async def child(self, parent: Node, name: str) -> Node:
        if name == ERROR_NAME and parent.type == DIR and self.listings.peek(parent.path) is None and parent.path in self.layout.errors:
            # The folder's listing failed and nothing is cached: .error says why, at once,
            # without another round of retries against a server that just failed.
            return self.layout.error_node(parent.path)
        try:
            entries = await self.children(parent)
        except Exception:  # any failure children() recorded: its .error tells it, the rest raise on
            if name == ERROR_NAME and parent.type == DIR:
                return self.layout.error_node(parent.path)  # children() recorded the failure
            raise
        child = entries.get(name)
        if child is None and name.startswith(".id.") and self._listed_before_refresh(parent.path):
            # A link from a refreshed folder (BioSamples/<b>/Datasets/<d>, Merged/.manifest paths)
            # to an entity this older listing does not know yet: list the folder again, once.
            self.listings.expire(lambda key: key == parent.path)
            child = (await self.children(parent)).get(name)
        if child is None and name == COMMANDS_NAME:
            # `.commands` is reachable from every folder (BaseMount), listed only at the root.
            child = self.layout.commands_node(parent.path)
        if child is None:
            raise NotFound(name)
        if child.dynamic == Dynamic.ERROR:
            child = self.layout.error_node(parent.path)
        elif child.render is not None:  # generated on every access (.uploads)
            child.content = child.render().encode()
        return child

    def _listed_before_refresh(self, path: tuple[str, ...]) -> bool:
        loaded = self.listings.loaded_at(path)
        return loaded is not None and self.refreshed_at is not None and loaded < self.refreshed_at

    # -- inode table ----------------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INODE]

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise NotFound(ino) from None

    def inode_of(self, path: tuple[str, ...]) -> int | None:
        """The inode the kernel knows ``path`` by (None: the kernel holds no such name)."""
        return self.by_path.get(path)

    def known(self, path: tuple[str, ...]) -> Node | None:
        """The node at ``path`` if it has an inode, without listing anything."""
        ino = self.by_path.get(path)
        return self.nodes.get(ino) if ino is not None else None

    def names_below(self, path: tuple[str, ...]) -> list[tuple[int, str]]:
        """(parent inode, name) of every entry with an inode under ``path``: what the kernel may
        have cached there."""
        n = len(path)
        out = []
        for child_path in list(self.by_path):
            if len(child_path) > n and child_path[:n] == path:
                parent = self.by_path.get(child_path[:-1])
                if parent is not None:
                    out.append((parent, child_path[-1]))
        return out

    def replace(self, node: Node) -> None:
        """``node`` now stands at its path: the inode the kernel holds for it (if any) shows it."""
        ino = self.by_path.get(node.path)
        if ino is not None:
            self.nodes[ino] = node

    def move(self, old_path: tuple[str, ...], node: Node) -> None:
        """An entry was renamed to ``node.path``: the kernel keeps the inode, which now names it."""
        ino = self.by_path.pop(old_path, None)
        if ino is not None:
            self.by_path[node.path] = ino
            self.nodes[ino] = node

    def current_entry(self, node: Node) -> Node:
        """The node the folder's cached listing holds now for an entry of an older snapshot of it
        (opendir's): the folder was listed again since (a refresh), and the newer node must not be
        replaced by the older one. The snapshot's node when the listing has no such entry."""
        listing = self.listings.peek(node.path[:-1])
        fresh = listing.get(node.name) if isinstance(listing, dict) else None
        return fresh if fresh is not None else node

    def remember(self, node: Node) -> int:
        """Inode for ``node``, reusing the one its path already has (data is refreshed)."""
        ino = self.by_path.get(node.path)
        if ino is None:
            ino = next(self._next_ino)
            self.by_path[node.path] = ino
            self.lookup_counts[ino] = 0
        self.nodes[ino] = node
        return ino

    def count_lookup(self, ino: int) -> None:
        self.lookup_counts[ino] = self.lookup_counts.get(ino, 0) + 1

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        for ino, nlookup in items:
            if ino == ROOT_INODE:
                continue
            left = self.lookup_counts.get(ino, 0) - nlookup
            if left > 0:
                self.lookup_counts[ino] = left
                continue
            node = self.nodes.pop(ino, None)
            self.lookup_counts.pop(ino, None)
            if node is not None and self.by_path.get(node.path) == ino:
                del self.by_path[node.path]

    async def lookup(self, parent_ino: int, name: str) -> tuple[int, Node]:
        parent = self.node(parent_ino)
        if name == ".":
            return parent_ino, parent
        if name == "..":
            path = parent.path[:-1]
            ino = self.by_path.get(path, ROOT_INODE)
            return ino, self.nodes.get(ino, self.nodes[ROOT_INODE])
        child = await self.layout.resolve(await self.child(parent, name))
        ino = self.remember(child)
        return ino, child

    async def readdir(self, ino: int) -> list[tuple[str, Node]]:
        node = self.node(ino)
        entries = await self.children(node)
        listed = []
        for name, child in entries.items():
            if child.hidden:
                continue
            if child.eager:
                # lazy entries that share one call (a sample's GET) are completed for `ls -l`; one the
                # server says is absent (a sample without an app session) is left out
                try:
                    await self.layout.resolve(child)
                except NotFound:
                    continue
                except Exception as exc:  # one entry never fails the listing: listed unresolved; its lookup reports the error
                    log.warning("%s: %s", "/".join(child.path), exc)
            listed.append((name, child))
        return listed

    async def ready(self, ino: int) -> Node:
        """The node, current and complete (a lazy one resolved): for getattr, readlink and open."""
        return await self.layout.resolve(self.current(ino))

    def current(self, ino: int) -> Node:
        """The node, with dynamic content (``.error``) brought up to date."""
        node = self.node(ino)
        if node.dynamic == Dynamic.ERROR:
            fresh = self.layout.error_node(node.path[:-1])
            node.content = fresh.content
        elif node.render is not None:
            node.content = node.render().encode()
        return node

    # -- refresh ----------------------------------------------------------------------------

    def drop_listings(self, *paths: tuple[str, ...], below: bool = False) -> None:
        """Forget the folder listings of ``paths`` (``below``: and of every folder under them) after
        a write changed them: unlike ``refresh``, nothing old is kept to fall back on."""

        def gone(key: Any) -> bool:
            return any(key[: len(p)] == p if below else key == p for p in paths)

        self.listings.invalidate(gone)

    def refresh(self, path: tuple[str, ...]) -> int:
        """Expire cached listings of ``path`` and everything below it (and the API data they
        were built from), so the next access asks the server again. They are kept, not dropped:
        while the server cannot answer, the old listing is served (ListingCache's stale fallback)."""
        path = self.layout.refresh_scope(path)
        n = len(path)
        # The folder's own node (an app result's .status, .json, .name; whether its Files/ takes
        # writes) comes from its parent's listing: that one is reloaded too.
        parent = path[:-1] if path else None
        expired = self.listings.expire(lambda key: key[:n] == path or key == parent)
        self.refreshed_at = self.listings.now()
        self.layout.expire_api()
        log.info("refreshed %s: %d cached listings to reload", "/" + "/".join(path), expired)
        return expired
