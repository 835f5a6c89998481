"""BaseMount's in-mount commands (``echo refresh > DIR/.commands``), run by the daemon."""

from __future__ import annotations

import errno
import logging

import pyfuse3

from .tree import Tree

log = logging.getLogger(__name__)

COMMANDS = ("refresh", "unmount")


class CommandRunner:
    def __init__(self, tree: Tree):
        self.tree = tree

    async def __call__(self, path: tuple[str, ...], text: str) -> None:
        command = text.split()[0].lower()
        if command == "refresh":
            self.refresh(path)
        elif command == "unmount":
            log.info("unmount requested through .commands")
            pyfuse3.terminate()
        else:
            self.tree.layout.errors[path] = f"Error: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n"
            raise pyfuse3.FUSEError(errno.EINVAL)

    def refresh(self, path: tuple[str, ...]) -> None:
        self.tree.refresh(path)
        # Drop the kernel's cached names below the folder too, so removed entities vanish now
        # rather than when their entry timeout runs out. The async variant never blocks here.
        n = len(path)
        for child_path, ino in list(self.tree.by_path.items()):
            if len(child_path) > n and child_path[:n] == path:
                parent = self.tree.by_path.get(child_path[:-1])
                if parent is not None:
                    try:
                        pyfuse3.invalidate_entry_async(parent, child_path[-1].encode("utf-8", "surrogateescape"))
                    except Exception as exc:  # the kernel may have dropped it already
                        log.debug("invalidate %s: %s", child_path, exc)
