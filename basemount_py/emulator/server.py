"""Run the emulator app with uvicorn on a socket we bind ourselves.

Binding first (``--port 0`` = a free port) lets us print the real URL and write the ready file
only once the socket accepts connections, with no race.  ``SO_REUSEADDR`` lets
``EmulatorProcess.restart()`` bind the same port again right after a stop.

The protocol class extends uvicorn's httptools protocol by one thing only: it records each
connection's transport by client address (``responses.TRANSPORTS``) so the "reset" fault can
send a real TCP RST.  uvicorn handles SIGINT/SIGTERM (graceful shutdown, bounded to 2 s so a
stalled stream cannot hold the exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..malloc import tune_malloc
from .app import Emulator, build_app
from .responses import TRANSPORTS

__all__ = ["bind_socket", "serve", "write_ready_file"]


class _TrackingProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.client:
            TRANSPORTS[(str(self.client[0]), int(self.client[1]))] = transport

    def connection_lost(self, exc) -> None:
        if self.client:
            TRANSPORTS.pop((str(self.client[0]), int(self.client[1])), None)
        super().connection_lost(exc)


class _QuietFaults(logging.Filter):
    """Injected resets/truncations end responses early on purpose: not an error worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "returned without completing response" in msg:
            return False
        if record.exc_info and type(record.exc_info[1]).__name__ == "AbortConnection":
            return False
        return True


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def write_ready_file(path: str, content: str) -> None:
    """Atomically (write + rename) so a poller never reads a half-written URL."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ready-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def serve(
    emulator: Emulator,
    sock: socket.socket,
    *,
    ready_file: str | None = None,
    banner: str = "",
    tls: tuple[str, str] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); HTTPS when ``tls`` = (certificate, key) PEM files."""
    tune_malloc()  # its body pieces come from the heap, not from fresh mmap()s (malloc.py)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"{'https' if tls else 'http'}://{shown_host}:{port}"
    config = uvicorn.Config(
        build_app(emulator),
        http=_TrackingProtocol,
        loop="uvloop",
        lifespan="off",
        access_log=False,  # an access log would show access_token query parameters
        log_level="warning",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    for name in ("uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(_QuietFaults())

    async def main() -> None:
        async def announce() -> None:
            while not server.started:  # noqa: ASYNC110  (uvicorn offers a flag, not an event)
                await asyncio.sleep(0.01)
            print(f"{banner} at {base_url}" if banner else base_url, flush=True)
            if ready_file:
                write_ready_file(ready_file, base_url + "/")

        task = asyncio.ensure_future(announce())
        await server.serve(sockets=[sock])
        task.cancel()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        asyncio.run(main())
    sys.stdout.flush()
