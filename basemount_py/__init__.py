"""basemount_py: a FUSE filesystem for BaseSpace Sequence Hub, plus a local BaseSpace API emulator.

Layers (imports point one way): ``fuse_ops`` -> ``core`` -> ``tree``, ``read``, ``write`` -> ``api``.
The ``emulator`` package imports nothing from the client side.
"""

__version__ = "0.1.0"
