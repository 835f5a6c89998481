"""BaseMount's in-mount commands (``echo refresh > DIR/.commands``, ``basemount-cmd``), run by the daemon.

A command applies to the folder whose ``.commands`` was written. Which commands make sense
depends on the folder (``valid``); reading ``DIR/.commands`` lists them, which is how
``basemount-cmd`` with no command shows them. A failing command fails the write (so ``echo``
and ``basemount-cmd`` see an error) and leaves its one-line reason in ``DIR/.error``.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from .api.errors import errno_for
from .tree import Node, Tree
from .tree.nodes import TRASHABLE_FOLDERS, EntityRef, FolderKind
from .write.upload import WriteFailure

if TYPE_CHECKING:
    from .core import Kernel

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "refresh": "reload this folder and its sub-folders from BaseSpace",
    "move-to-trash": "move this project/sample/app result/app session/run to the trash",
    "restore-from-trash": "restore this .Trash item",
    "mark-as-complete": "mark this app session (of this app result/sample) Complete: read-only",
    "rename-appsession": "rename-appsession NEW NAME: rename this app result's app session",
    "unmount": "unmount basemount_py (top folder only)",
    "flush": "upload the files waiting in the spool now, without the write-back delay (top folder only)",
    "retry": "retry PATH: upload a file that failed for good again (PATH from the top; top folder only)",
}
COMMANDS = tuple(DESCRIPTIONS)


def valid(node: Node | None) -> list[str]:
    """The commands that make sense in a folder (BaseMount: ``basemount-cmd`` with no command)."""
    kind = node.kind if node is not None else None
    out = ["refresh"]
    if kind in TRASHABLE_FOLDERS:
        out.append("move-to-trash")
    if kind == FolderKind.TRASHITEM:
        out.append("restore-from-trash")
    if kind in (FolderKind.APPRESULT, FolderKind.APPSESSION, FolderKind.SAMPLE):
        entity = node.data.item if node is not None and isinstance(node.data, EntityRef) else {}
        # Whose Status says "not yet Complete": the app session's; for a sample as real lists give
        # it (no AppSession), the sample's own (BaseMount: "samples not yet Complete").
        session: dict[str, Any] | None
        if kind == FolderKind.APPSESSION or (kind == FolderKind.SAMPLE and "AppSession" not in entity):
            session = entity
        else:
            session = entity.get("AppSession") if isinstance(entity.get("AppSession"), dict) else None
        if session and str(session.get("Status", "")).lower() != "complete":
            out.append("mark-as-complete")
        if session and kind != FolderKind.SAMPLE:
            out.append("rename-appsession")
    if kind == FolderKind.ROOT:
        out += ["unmount", "flush", "retry"]
    return out


class CommandRunner:
    def __init__(self, tree: Tree, writes: Any, kernel: "Kernel"):
        self.tree = tree
        self.writes = writes  # write.WriteManager (None: the write commands are refused)
        self.kernel = kernel  # drops the kernel's cached names, ends the session

    def folder(self, path: tuple[str, ...]) -> Node | None:
        return self.tree.known(path)

    def help(self, path: tuple[str, ...]) -> str:
        lines = ["Write a command to this file, e.g.: echo refresh > .commands", "Commands valid here:"]
        lines += [f"{name:20} {DESCRIPTIONS[name]}" for name in valid(self.folder(path))]
        return "\n".join(lines) + "\n"

    def _error(self, path: tuple[str, ...], message: str, code: int = errno.EINVAL) -> WriteFailure:
        self.tree.layout.write_errors[path] = f"Error: {message}\n"
        return WriteFailure(code, message)

    async def __call__(self, path: tuple[str, ...], text: str) -> None:
        command, _, argument = text.strip().partition(" ")
        command = command.lower()
        if command not in DESCRIPTIONS:
            raise self._error(path, f"unknown command {command!r}; valid: {', '.join(COMMANDS)}")
        node = self.folder(path)
        if command not in valid(node):
            here = ", ".join(valid(node))
            raise self._error(path, f"{command} is not valid in this folder (valid here: {here})")
        if command == "refresh":
            self.refresh(path)
        elif command == "unmount":
            log.info("unmount requested through .commands")
            self.kernel.terminate()
        elif command in ("flush", "retry") and self.writes is not None:
            if command == "flush":
                self.writes.flush_all()
            else:
                target = tuple(p for p in argument.strip().split("/") if p and p != ".")
                if not target:
                    raise self._error(path, "retry needs the file: retry PATH (from the top of the mount)")
                try:
                    self.writes.retry(target)
                except WriteFailure as exc:
                    raise self._error(path, exc.message, errno_for(exc)) from None
        else:
            if self.writes is None or node is None:
                raise self._error(path, f"{command}: write mode is not available", errno.EROFS)
            if command == "move-to-trash":
                await self.writes.move_to_trash(node)
                self._forget_entry(path)
            elif command == "restore-from-trash":
                await self.writes.restore(node)
                self._forget_entry(path)
            elif command == "mark-as-complete":
                await self.writes.mark_complete(node)
                self.refresh(path[:2])  # the project: its entities (and their .status) change
            elif command == "rename-appsession":
                if not argument.strip():
                    raise self._error(path, "rename-appsession needs the new name: rename-appsession NEW NAME")
                await self.writes.rename_appsession(node, argument.strip())
                self.refresh(path[:2])
        self.tree.layout.write_errors.pop(path, None)
        log.info("command %s done in /%s", command, "/".join(path))

    def _forget_entry(self, path: tuple[str, ...]) -> None:
        """The folder is gone (trashed or restored elsewhere): the kernel must drop its name now."""
        parent = self.tree.inode_of(path[:-1])
        if parent is not None and path:
            self.kernel.invalidate_entry(parent, path[-1])

    def refresh(self, path: tuple[str, ...]) -> None:
        path = self.tree.layout.refresh_scope(path)
        self.tree.refresh(path)
        # Drop the kernel's cached names below the folder too, so removed entities vanish now
        # rather than when their entry timeout runs out.
        for parent, name in self.tree.names_below(path):
            self.kernel.invalidate_entry(parent, name)
        if path:  # and its own name: the kernel looks the folder up again, and gets its new node
            self._forget_entry(path)
