"""BaseSpace entities -> the mounted tree: naming, layout, listing caches, inode table.

Plain async Python (no pyfuse3 imports) so the whole tree can be exercised without a mount.
"""

from ..api.errors import NotADirectory, NotFound
from .filesystem import ROOT_INODE, Tree
from .layout import Layout
from .nodes import COMMANDS, DIR, REMOTE, SYMLINK, TEXT, UPLOAD, FolderKind, Node, NodeType, Owner

__all__ = [
    "Tree",
    "Layout",
    "Node",
    "NotFound",
    "NotADirectory",
    "ROOT_INODE",
    "DIR",
    "REMOTE",
    "TEXT",
    "SYMLINK",
    "COMMANDS",
    "UPLOAD",
    "NodeType",
    "FolderKind",
    "Owner",
]
