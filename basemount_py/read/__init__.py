"""The read path: file bytes from signed content URLs, with prefetch and a shared block cache.

Layers (each usable and tested on its own):

* :mod:`.content` — :class:`ContentSource`: ``fetch(file_id, start, end)`` returns exactly the bytes
  ``[start, end)`` of a file or raises an ``ApiError`` (``fetch_blocks`` gives the same bytes as
  block-sized buffers, ready for the cache). It resolves ``v1pre3/files/{id}/content?
  redirect=meta`` to a signed URL, caches it until shortly before it expires, and issues bounded
  ``Range`` GETs (never open-ended: those bill the whole object) with stall timeouts, retries with
  jittered backoff, and one transparent re-resolve when the content host answers 403 (expired URL).
* :mod:`.range_threads` — the ranged GETs themselves: ``http.client`` in worker threads, each
  body received into one buffer whose blocks are views of it (httpx stays for the API).
* :mod:`.disk_cache` — :class:`DiskCache`, the persistent content cache (``--cache-max``): blocks
  on local disk keyed by file id + ETag + size, checksummed (XXH3: :mod:`.checksum`)
  and checked on every read, LRU-bounded, shared by concurrent mounts; every failure falls back to
  the network.
* :mod:`.disk_stream` — reads whose blocks are all on the disk cache skip the memory cache, the
  prefetch and the network: 4 MiB verified chunks read ahead in worker threads, each FUSE reply a
  ``memoryview`` of a chunk (no copy in the daemon).
* :mod:`.prefetch` — pure access-pattern logic per handle (no I/O): a sequential detector that
  tolerates the kernel's out-of-order readahead, a window starting at 1 MiB + 128 KiB that doubles
  per sequential read up to ``prefetch_max``, parts sized to the window (≤ 4 MiB) so several ranged
  GETs run in parallel, and random-mode sizing (the read widened to the typical read size, 64 KiB to
  1 MiB, no prefetch).
* :mod:`.block_cache` — one LRU of 64 KiB blocks for the whole mount, bounded in bytes, where data in
  flight is reserved before it is fetched; prefetched-but-unread data therefore counts against the
  same bound, and memory stays bounded whatever the number of readers or the file sizes.
* :mod:`.reader` — :class:`ReadManager` (one per mount: cache, in-flight table, prefetch nursery) and
  :class:`FileReader` (one per open handle). Concurrent reads of one block share one fetch; failed
  fetches leave nothing behind, so the next read simply retries. A small file read at random, or
  an index, is fetched whole in parallel parts (``whole_file_max``).
* :mod:`.concat` — :class:`ConcatReader`: a file that is the concatenation of others (merged
  biosample FASTQs), mapping offsets to parts read through their own ``FileReader`` and carrying
  a sequential stream's prefetch over into the next part.

The shape follows mountpoint-s3's ``prefetch.rs`` (first request sized for the kernel's readahead,
geometric growth, seek tolerance, parallel parts) with dxfuse's bounded memory and gcsfuse's random
mode; every network wait is bounded by the retry policy's per-request and per-operation timeouts.

Typical wiring::

    source = ContentSource(api)
    async with ReadManager(source.fetch, fetch_blocks=source.fetch_blocks, cache_bytes=128 << 20) as manager:
        reader = manager.open(file_id, size)       # on open()
        data = await reader.read(offset, length)   # on read()
        await reader.close()                       # on release()
    await source.aclose()
"""

from .block_cache import BlockCache
from .concat import ConcatReader
from .content import ContentSource
from .disk_cache import ContentKey, DiskCache
from .prefetch import AccessPattern, Plan, PrefetchConfig
from .reader import FileReader, ReadManager

__all__ = [
    "AccessPattern",
    "BlockCache",
    "ConcatReader",
    "ContentKey",
    "ContentSource",
    "DiskCache",
    "FileReader",
    "Plan",
    "PrefetchConfig",
    "ReadManager",
]
