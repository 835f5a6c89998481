"""A read-only file that is the byte concatenation of other files (``BioSamples/<b>/Merged/``).

:class:`ConcatReader` is a thin layer over the per-file :class:`~.reader.FileReader`: an offset
of the merged file maps to one or more (part, offset in part) pieces (:func:`locate`), and each
piece is read through that part's own reader, so the block cache, in-flight sharing, prefetch and
retries are exactly those of a plain file. The parts are fixed when the handle is opened: a
handle opened before a refresh keeps reading the parts it opened with.

Crossing a boundary without a stall: while a sequential stream is within its prefetch window of
the end of a part, the next part's reader is told to continue the stream
(:meth:`FileReader.continue_stream`), so its first bytes (and its signed URL) are on the way
before the reader gets there.
"""

from __future__ import annotations

import bisect
import itertools
from typing import NamedTuple, Sequence

from .reader import FileReader, ReadManager
from .verify import VerifiedReader


def part_starts(sizes: Sequence[int]) -> list[int]:
    """Offset of each part in the concatenation, plus the total size at the end."""
    return [0, *itertools.accumulate(sizes)]


def locate(starts: Sequence[int], offset: int, size: int) -> list[tuple[int, int, int]]:
    """The pieces of ``[offset, offset + size)``: ``(part index, offset in part, length)``.

    ``starts`` comes from :func:`part_starts`. Empty parts are skipped; the range is clipped at the
    end of the concatenation."""
    if offset < 0 or size < 0:
        raise ValueError("offset and size must be >= 0")
    total = starts[-1]
    end = min(total, offset + size)
    pieces = []
    position = offset
    while position < end:
        index = bisect.bisect_right(starts, position) - 1  # last part starting at or before it
        take = min(end, starts[index + 1]) - position
        pieces.append((index, position - starts[index], take))
        position += take
    return pieces


def _file_reader(reader: FileReader | VerifiedReader) -> FileReader:
    """The FileReader of a part's handle (``--verify`` wraps it in a VerifiedReader)."""
    return reader.reader if isinstance(reader, VerifiedReader) else reader


class Part(NamedTuple):
    """One file of a concatenation, as :meth:`ReadManager.open` takes it."""

    file_id: str
    size: int
    name: str
    version: str | None
    etag: object


class ConcatReader:
    """One open handle of a concatenation of ``parts`` (under ``--verify`` each part whose ETag is
    a plain MD5 is checked when it has been read whole, as a plain file is)."""

    def __init__(self, manager: ReadManager, parts: Sequence[Part | tuple[str, int, str, str | None, object]]):
        self.manager = manager
        self.parts = tuple(Part(*part) for part in parts)
        self.starts = part_starts([int(part.size) for part in self.parts])
        self.size = self.starts[-1]
        self._readers: dict[int, FileReader | VerifiedReader] = {}
        self._closed = False

    def _reader(self, index: int) -> FileReader | VerifiedReader:
        reader = self._readers.get(index)
        if reader is None:
            part = self.parts[index]
            reader = self._readers[index] = self.manager.open(part.file_id, part.size, part.name, part.version, etag=part.etag)
        return reader

    async def read(self, offset: int, size: int) -> bytes:
        if self._closed:
            raise ValueError("read after close")
        pieces = locate(self.starts, offset, size)
        if pieces:
            await self._close_before(pieces[0][0])
        data = []
        for index, part_offset, length in pieces:
            reader = self._reader(index)
            data.append(await reader.read(part_offset, length))
            # The kernel sends one handle's reads concurrently and out of order: while this one
            # waited, a read further on may have closed this part's reader (_close_before).
            if self._readers.get(index) is reader and not self._closed:
                self._continue_into_next(reader, index, part_offset + length)
        return b"".join(data)

    def _continue_into_next(self, part_reader: FileReader | VerifiedReader, index: int, read_end: int) -> None:
        """Carry a sequential stream's prefetch over into the following non-empty part(s)."""
        reader = _file_reader(part_reader)
        window = reader.stream_window()
        ahead = window - (reader.size - read_end)
        following = index + 1
        while ahead > 0 and following < len(self.parts):
            size = self.parts[following].size
            if size > 0:
                _file_reader(self._reader(following)).continue_stream(ahead, window)
            ahead -= size
            following += 1

    async def _close_before(self, index: int) -> None:
        """Close the readers of parts before ``index``: a stream that moved on must not keep
        counting as a live stream (the cache's prefetch budget is shared among live streams);
        a read going back simply opens a fresh reader, the cached blocks are still there."""
        # Taken out of the table before the first await: a concurrent read closing them too
        # then finds them gone instead of popping one twice.
        earlier = [self._readers.pop(i) for i in list(self._readers) if i < index]
        for reader in earlier:
            await reader.close()

    async def close(self) -> None:
        self._closed = True
        for reader in self._readers.values():
            await reader.close()
