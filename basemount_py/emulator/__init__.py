"""A local BaseSpace API emulator serving an *account folder* from disk.

Modules: ``account`` (folder -> in-memory model, stable ids), ``render`` (model -> API JSON),
``synthetic`` (deterministic on-the-fly file content), ``knobs`` (latency, bandwidth, faults,
counters), ``content`` (signed S3-like content URLs, ranges, streaming), ``app`` (starlette
routes), ``server`` (uvicorn on a pre-bound socket), ``cli`` (``basemount-py serve``) and
``control`` (``EmulatorProcess`` for tests, benchmarks and the demo).  See docs/emulator.md.
"""

from .account import DEFAULT_TOKEN, AccountError, load_account
from .synthetic import synthetic_bytes, synthetic_sha256

__all__ = ["DEFAULT_TOKEN", "AccountError", "load_account", "synthetic_bytes", "synthetic_sha256"]
