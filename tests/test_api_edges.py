"""Answers and credentials the API layer and the content fetcher must survive without a traceback,
a hang past their bound or a token shown: a content host's non-ASCII header, a content URL with a
bad port, a TotalCount of 1e400, JSON nested past the recursion limit, a hung re-read of the
credentials, a token with a newline from the login server. Each test failed on the code before its
fix (found by review)."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
import trio

from basemount_py.api.client import BaseSpaceClient
from basemount_py.api.errors import ApiError
from basemount_py.api.retry import RetryPolicy
from basemount_py.read import ContentSource

POLICY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, request_timeout=1.0, deadline=5.0)
DATA = bytes(range(256)) * 4


class _StubApi:
    """Just what ContentSource needs of the API client: the content URL of a file."""

    def __init__(self, href: str):
        self.api_server = "http://127.0.0.1:1/"
        self.href = href

    async def get_json(self, path, params=None):
        return {"Response": {"HrefContent": self.href, "Expires": "2999-01-01T00:00:00Z"}}


def _serve(extra_headers: bytes, requests: int = 10):
    """A loopback content host answering every ranged GET of DATA with 206 and ``extra_headers``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def run():
        for _ in range(requests):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                rng = [line for line in request.split(b"\r\n") if line.lower().startswith(b"range:")][0]
                a, b = (int(x) for x in rng.split(b"=")[1].split(b"-"))
                body = DATA[a : b + 1]
                conn.sendall(
                    b"HTTP/1.1 206 Partial Content\r\n"
                    + f"Content-Range: bytes {a}-{b}/{len(DATA)}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
                    + extra_headers
                    + b"\r\n"
                    + body
                )

    threading.Thread(target=run, daemon=True).start()
    return listener


async def test_a_content_host_header_with_non_ascii_bytes_still_gives_the_bytes():
    # S3 sends user metadata / Content-Disposition with UTF-8 file names as raw bytes; http.client
    # decodes them as latin-1 and httpx.Headers refuses non-ASCII str: UnicodeEncodeError escaped.
    listener = _serve(b'Content-Disposition: attachment; filename="caf\xc3\xa9.fastq"\r\n')
    port = listener.getsockname()[1]
    source = ContentSource(_StubApi(f"http://127.0.0.1:{port}/f?X-Amz-Signature=secret"), policy=POLICY)
    try:
        assert bytes(await source.fetch("1", 10, 100)) == DATA[10:100]
    finally:
        await source.aclose()
        listener.close()


async def test_a_content_url_with_a_bad_port_is_an_api_error():
    # A hostile/broken HrefContent: ValueError from urlsplit().port escaped unmapped (traceback).
    source = ContentSource(_StubApi("http://127.0.0.1:99999/f?sig=secret"), policy=POLICY)
    try:
        with pytest.raises(ApiError):
            await source.fetch("1", 0, 10)
    finally:
        await source.aclose()


async def cancelled_once(event: threading.Event, call) -> None:
    """Run ``call()`` and cancel it as soon as ``event`` (set by another thread) is set."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel() -> None:
                await trio.to_thread.run_sync(event.wait, abandon_on_cancel=True)
                scope.cancel()

            nursery.start_soon(cancel)
            await call()
            nursery.cancel_scope.cancel()  # it returned before the event: stop waiting for it


def _json_transport(status: int, text: str) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, text=text, headers={"content-type": "application/json"}))


async def test_a_listing_whose_total_count_is_infinity_is_a_protocol_error():
    # Python's json accepts Infinity / 1e400 as float('inf'); int(inf) is an OverflowError,
    # which _page_items does not catch.
    client = BaseSpaceClient("http://127.0.0.1:1", "tok", policy=POLICY, transport=_json_transport(200, '{"Response": {"Items": [], "TotalCount": 1e400}}'))
    try:
        with pytest.raises(ApiError):
            await client.list_all("v1pre3/users/current/projects")
    finally:
        await client.aclose()


async def test_a_hung_credentials_re_read_does_not_hold_a_cancelled_request():
    # A 401 re-reads the config in a thread; with a hung home directory (NFS) the request ignored
    # its cancellation (op timeout, shutdown) until the read returned. No time is measured: the
    # request must be back while the re-read is still hanging.
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def reloader():
        entered.set()
        release.wait(60)
        finished.set()
        return None

    client = BaseSpaceClient("http://127.0.0.1:1", "tok", policy=POLICY, token_reloader=reloader, transport=_json_transport(401, "{}"))
    try:
        await cancelled_once(entered, lambda: client.get_json("v1pre3/users/current"))
        back_while_hanging = not finished.is_set()
    finally:
        release.set()
        await client.aclose()
    assert back_while_hanging, "the cancelled request waited for the hung re-read to end"


async def test_a_token_with_a_newline_from_the_login_server_never_reaches_an_error_message():
    # `basemount-py auth` uses the token the server answered, unchecked, in a header; h11 refuses
    # it with "Illegal header value b'<token>'", which went into the NetworkError's message.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    token = "SECRETTOKEN123\n"
    client = BaseSpaceClient(f"http://127.0.0.1:{listener.getsockname()[1]}", token, policy=POLICY)
    try:
        with pytest.raises(Exception) as info:
            await client.get_json("v1pre3/users/current")
    finally:
        await client.aclose()
        listener.close()
    assert "SECRETTOKEN123" not in str(info.value), str(info.value)


async def test_a_deeply_nested_json_answer_is_a_protocol_error():
    # json.loads raises RecursionError (not ValueError) on deep nesting: it escaped _json unmapped.
    client = BaseSpaceClient("http://127.0.0.1:1", "tok", policy=POLICY, transport=_json_transport(200, "[" * 100_000 + "]" * 100_000))
    try:
        with pytest.raises(ApiError):
            await client.get_json("v1pre3/users/current")
    finally:
        await client.aclose()


class _TwoHosts:
    """The content URLs of files on different hosts."""

    def __init__(self, hrefs: dict[str, str]):
        self.api_server = "http://127.0.0.1:1/"
        self.hrefs = hrefs

    async def get_json(self, path, params=None):
        file_id = path.split("/")[2]
        return {"Response": {"HrefContent": self.hrefs[file_id], "Expires": "2999-01-01T00:00:00Z"}}


def _trickle(trickling: threading.Event):
    """A content host that answers 206, sets ``trickling``, then sends a byte every 50 ms (each
    recv well within the stall timeout) until its client goes, for a minute at most."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def run():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/1000\r\nContent-Length: 1000\r\n\r\n")
            trickling.set()
            try:
                for _ in range(1200):
                    conn.sendall(b"x")
                    threading.Event().wait(0.05)
            except OSError:
                return

    threading.Thread(target=run, daemon=True).start()
    return listener


async def test_a_fetch_given_up_on_does_not_keep_its_connection_slot():
    # The worker thread of a GET given up on (its deadline, the op timeout) read on while the host
    # kept trickling, holding its connection slot: with every slot taken so, each other read of
    # the mount waited for one and failed, though its host answered at once. No time is measured:
    # the fetch is cancelled once the host trickles, and the next one must get the only slot.
    trickling = threading.Event()
    slow, good = _trickle(trickling), _serve(b"")
    hrefs = {"slow": f"http://127.0.0.1:{slow.getsockname()[1]}/s?sig=x", "good": f"http://127.0.0.1:{good.getsockname()[1]}/g?sig=x"}
    source = ContentSource(_TwoHosts(hrefs), policy=RetryPolicy(attempts=1, request_timeout=30.0, deadline=30.0), max_connections=1, stall_timeout=10.0)
    try:
        await cancelled_once(trickling, lambda: source.fetch("slow", 0, 1000))
        with trio.fail_after(30):  # a bound for the failing case, not a measurement
            assert bytes(await source.fetch("good", 0, 100)) == DATA[:100]
    finally:
        await source.aclose()
        slow.close()
        good.close()


async def test_the_login_wait_is_bounded_by_its_timeout_even_against_a_trickling_server(autojump_clock):
    # auth.py promises that the whole wait is bounded by its timeout (and the code's expires_in),
    # but each POST was bounded only by httpx's per-read timeout (30 s): a login server sending a
    # byte now and then held `basemount-py auth` for as long as it liked. In virtual time: the
    # clock jumps to the next deadline whenever everything waits, so the time the login took is
    # the bound it met, the timeout (plus its last answer's grace) or httpx's 30 s.
    from basemount_py.api.auth import LAST_ANSWER_GRACE, LoginError, device_login

    trickling = threading.Event()
    slow = _trickle(trickling)
    started = trio.current_time()
    try:
        with pytest.raises(LoginError):
            await device_login(f"http://127.0.0.1:{slow.getsockname()[1]}", "client", timeout=1.0, out=lambda line: None)
    finally:
        slow.close()
    assert trio.current_time() - started <= 1.0 + LAST_ANSWER_GRACE
