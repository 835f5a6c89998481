"""The device-code login.

Two layers:

* protocol tests drive ``device_login`` against a scripted server (an ``httpx.MockTransport``
  that answers like BaseSpace documents it) under trio's autojump clock, so the polling rules
  (interval, slow_down, expiry, denial, failing server) are checked exactly and instantly;
* end-to-end tests run the real emulator process on 127.0.0.1: approve the printed URL, use the
  token, and let ``main`` write a 0600 config into a temporary HOME.
"""

from __future__ import annotations

import argparse
import stat
from urllib.parse import parse_qs

import httpx
import pytest
import trio

from basemount_py.api.auth import DEFAULT_SCOPES, LoginError, add_arguments, device_login, main

API = "https://api.test.invalid"
DEVICE_CODE = "devcode-0123456789abcdef"
SECRET = "client-secret-value"
TOKEN = "tok0123456789abcdef0123456789ab"


class ScriptedServer:
    """Answers deviceauthorization once, then the token endpoint from a list of (status, body)."""

    def __init__(self, token_answers, *, interval=5, expires_in=1800, start=None):
        self.token_answers = list(token_answers)
        self.start_answer = start or (
            200,
            {
                "device_code": DEVICE_CODE,
                "user_code": "WXYZ",
                "verification_uri": "https://basespace.test.invalid/oauth/device",
                "verification_with_code_uri": "https://basespace.test.invalid/oauth/device?code=WXYZ",
                "expires_in": expires_in,
                "interval": interval,
            },
        )
        self.start_forms: list[dict] = []
        self.polls: list[tuple[float, dict]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if request.url.path == "/v1pre3/oauthv2/deviceauthorization":
            self.start_forms.append(form)
            status, body = self.start_answer
            return httpx.Response(status, json=body)
        assert request.url.path == "/v1pre3/oauthv2/token"
        self.polls.append((trio.current_time(), form))
        answer = self.token_answers.pop(0) if len(self.token_answers) > 1 else self.token_answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


PENDING = (400, {"error": "authorization_pending", "error_description": "User has not yet approved"})
GRANTED = (200, {"access_token": TOKEN, "expires_in": 0})


async def login(server: ScriptedServer, **kwargs) -> tuple[str, list[str]]:
    lines: list[str] = []
    async with server.client() as http:
        token = await device_login(API + "/", "my-client", kwargs.pop("secret", None), out=lines.append, http=http, **kwargs)
    return token, lines


# -- protocol -----------------------------------------------------------------------------------


async def test_polls_at_the_interval_until_approved(autojump_clock):
    server = ScriptedServer([PENDING, PENDING, GRANTED], interval=3)
    t0 = trio.current_time()
    token, lines = await login(server, secret=SECRET)
    assert token == TOKEN
    assert server.start_forms == [{"client_id": "my-client", "response_type": "device_code", "scope": DEFAULT_SCOPES}]
    assert [round(t - t0) for t, _ in server.polls] == [3, 6, 9]
    assert server.polls[0][1] == {"client_id": "my-client", "client_secret": SECRET, "code": DEVICE_CODE, "grant_type": "device"}
    assert lines[0] == "Open this URL in a browser and approve: https://basespace.test.invalid/oauth/device?code=WXYZ"
    assert "WXYZ" in lines[1]
    shown = "\n".join(lines)
    assert DEVICE_CODE not in shown and SECRET not in shown and TOKEN not in shown


async def test_no_secret_is_sent_when_none_given(autojump_clock):
    server = ScriptedServer([GRANTED])
    await login(server)
    assert "client_secret" not in server.polls[0][1]


async def test_default_interval_is_five_seconds(autojump_clock):
    server = ScriptedServer([PENDING, GRANTED], interval=None)
    t0 = trio.current_time()
    await login(server)
    assert [round(t - t0) for t, _ in server.polls] == [5, 10]


async def test_slow_down_adds_five_seconds(autojump_clock):
    slow = (400, {"error": "slow_down"})
    server = ScriptedServer([slow, PENDING, slow, GRANTED], interval=2)
    t0 = trio.current_time()
    assert (await login(server))[0] == TOKEN
    # 2, then +7 (2+5), +7, then +12 (7+5)
    assert [round(t - t0) for t, _ in server.polls] == [2, 9, 16, 28]


@pytest.mark.parametrize("error", ["access_denied", "AccessDenied"])
async def test_denied(autojump_clock, error):
    server = ScriptedServer([PENDING, (400, {"error": error, "error_description": "The user denied"})])
    with pytest.raises(LoginError, match="denied in the browser"):
        await login(server)


async def test_expired_token(autojump_clock):
    server = ScriptedServer([(400, {"error": "expired_token"})])
    with pytest.raises(LoginError, match="expired"):
        await login(server)


async def test_other_oauth_error_is_named(autojump_clock):
    server = ScriptedServer([(400, {"error": "invalid_client", "error_description": "Unknown client"})])
    with pytest.raises(LoginError) as info:
        await login(server, secret=SECRET)
    assert str(info.value) == "login failed (invalid_client: Unknown client)"
    assert SECRET not in str(info.value) and DEVICE_CODE not in str(info.value)


async def test_gives_up_when_the_code_expires(autojump_clock):
    server = ScriptedServer([PENDING], interval=5, expires_in=60)
    t0 = trio.current_time()
    with pytest.raises(LoginError, match="not approved in time"):
        await login(server)
    assert trio.current_time() - t0 <= 60
    assert len(server.polls) == 12


async def test_gives_up_at_the_timeout(autojump_clock):
    server = ScriptedServer([PENDING], interval=5, expires_in=1800)
    t0 = trio.current_time()
    with pytest.raises(LoginError, match="not approved in time"):
        await login(server, timeout=21)
    assert trio.current_time() - t0 <= 21
    assert len(server.polls) == 4


async def test_transient_failures_are_tolerated_then_reported(autojump_clock):
    blip = (503, {"error": "unavailable"})
    server = ScriptedServer([blip, httpx.ConnectError("refused"), PENDING, GRANTED])
    assert (await login(server))[0] == TOKEN
    server = ScriptedServer([blip])
    with pytest.raises(LoginError, match="keeps failing"):
        await login(server)
    assert len(server.polls) == 5
    server = ScriptedServer([httpx.ConnectError("refused")])
    with pytest.raises(LoginError, match="cannot reach"):
        await login(server)


async def test_refused_start_names_the_error(autojump_clock):
    server = ScriptedServer([GRANTED], start=(400, {"error": "invalid_scope", "error_description": "Bad scope FOO"}))
    with pytest.raises(LoginError) as info:
        await login(server, scopes="FOO")
    assert "invalid_scope" in str(info.value) and "Bad scope FOO" in str(info.value)
    assert server.polls == []


async def test_start_answer_without_device_code(autojump_clock):
    server = ScriptedServer([GRANTED], start=(200, {"user_code": "X"}))
    with pytest.raises(LoginError, match="no device_code"):
        await login(server)


async def test_token_answer_without_token(autojump_clock):
    server = ScriptedServer([(200, {"token_type": "bearer"})])
    with pytest.raises(LoginError, match="no access_token"):
        await login(server)


async def test_no_client_id():
    for client_id in ("", "   "):
        with pytest.raises(LoginError) as info:
            await device_login(API, client_id)
        assert str(info.value) == (
            "a client id is required: register an app in the BaseSpace developer portal and pass "
            "--client-id (or set BASESPACE_CLIENT_ID)"
        )


async def test_unreachable_server_is_one_clear_line():
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(LoginError) as info:
        await device_login("http://127.0.0.1:1", "my-client")
    assert "cannot reach" in str(info.value) and "\n" not in str(info.value)


# -- command line (no server needed) ------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="basemount-py auth")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_defaults():
    args = parse([])
    assert args.config == "default" and args.scopes == DEFAULT_SCOPES
    assert args.api_server is None and args.client_id is None and args.client_secret is None
    assert not args.force and not args.allow_insecure_http


def test_main_without_client_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BASESPACE_CLIENT_ID", raising=False)
    assert main(parse(["--api-server", "http://127.0.0.1:1"])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a client id is required" in err


def test_main_rejects_insecure_server(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(parse(["--api-server", "http://api.example.com", "--client-id", "x"])) == 1
    err = capsys.readouterr().err
    assert "--allow-insecure-http" in err and err.count("\n") == 1


def test_main_api_server_help(capsys):
    assert main(parse(["--api-server", "help"])) == 0
    assert "euc1" in capsys.readouterr().out


def test_main_refuses_to_overwrite_without_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".basespace").mkdir()
    (tmp_path / ".basespace" / "default.cfg").write_text("accessToken = old\n")
    # The check happens before any network traffic: port 1 would fail differently.
    assert main(parse(["--api-server", "http://127.0.0.1:1", "--client-id", "x"])) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (tmp_path / ".basespace" / "default.cfg").read_text() == "accessToken = old\n"


def test_main_unreachable_server(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(parse(["--api-server", "http://127.0.0.1:1", "--client-id", "x"])) == 1
    err = capsys.readouterr().err
    assert err.startswith("basemount-py auth: error:") and err.count("\n") == 1
    assert not (tmp_path / ".basespace").exists()


# -- end to end against the real emulator over loopback ---------------------------------------

PREFIX = "Open this URL in a browser and approve: "


def make_account(tmp_path_factory):
    account = tmp_path_factory.mktemp("auth-account")
    (account / "Projects").mkdir()
    return account


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from basemount_py.emulator.control import EmulatorProcess

    with EmulatorProcess(make_account(tmp_path_factory)) as em:
        yield em


async def login_with_approver(api: str, approve, http: httpx.AsyncClient | None = None) -> str:
    """Run device_login; when it prints the URL, call ``approve(url)`` like a user would."""
    printed = trio.Event()
    urls: list[str] = []

    def out(line: str) -> None:
        if line.startswith(PREFIX):
            urls.append(line[len(PREFIX):])
            printed.set()

    result: list[str | LoginError] = []

    async def run() -> None:
        try:
            result.append(await device_login(api, "any-client-id", out=out, timeout=30, http=http))
        except LoginError as exc:  # re-raised below, outside the nursery's exception group
            result.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(10):
            await printed.wait()
        await approve(urls[0])
    if isinstance(result[0], LoginError):
        raise result[0]
    return result[0]


async def test_device_login_with_emulator(emulator):
    async def approve(url: str) -> None:
        assert url.startswith(emulator.url + "oauth/device?code=")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url)).status_code == 200

    token = await login_with_approver(emulator.url, approve)
    assert token and token != emulator.token  # a freshly issued token, not the account's own
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10) as http:
        me = await http.get("v1pre3/users/current", headers={"x-access-token": token})
        assert me.status_code == 200 and me.json()["Response"]["Id"]
        # The check above is meaningful: a token the emulator never issued is refused.
        other = await http.get("v1pre3/users/current", headers={"x-access-token": "f" * 32})
        assert other.status_code == 401


async def test_unknown_device_code_is_a_clear_error(tmp_path_factory):
    """The server forgets the code (here: the emulator restarts) -> a one-line error, no hang."""
    from basemount_py.emulator.control import EmulatorProcess

    restarted = trio.Event()

    class PollsWaitForTheRestart(httpx.AsyncHTTPTransport):
        """Token polls wait until the emulator is back: a poll during the restart would meet a
        closed port, and how many of those the client tolerates says nothing about this test
        (a restart on a loaded machine outlasted them: "cannot reach" instead of invalid_grant)."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/oauthv2/token"):
                await restarted.wait()
            return await super().handle_async_request(request)

    with EmulatorProcess(make_account(tmp_path_factory)) as em:

        async def restart_instead_of_approving(url: str) -> None:
            await trio.to_thread.run_sync(em.restart)
            restarted.set()

        async with httpx.AsyncClient(transport=PollsWaitForTheRestart(), timeout=10) as http:
            with trio.fail_after(120):  # a bound on the restart (start-up is bounded at 60 s), not a timing
                with pytest.raises(LoginError) as info:
                    await login_with_approver(em.url, restart_instead_of_approving, http)
    assert str(info.value).startswith("login failed (invalid_grant")
    assert "\n" not in str(info.value)


def test_main_writes_a_private_config(emulator, tmp_path):
    import os
    import select
    import subprocess
    import sys
    import time

    from basemount_py.api.config import load_credentials

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASESPACE_")}
    env["HOME"] = str(home)
    code = (
        "import argparse, sys\n"
        "from basemount_py.api.auth import add_arguments, main\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "sys.exit(main(p.parse_args(sys.argv[1:])))\n"
    )
    argv = [sys.executable, "-c", code, "--api-server", emulator.url, "--client-id", "cli-test", "--config", "emu"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        url = None
        while url is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "auth printed no URL"
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            line = proc.stdout.readline() if ready else ""
            assert line or not ready, f"auth exited early: {proc.stderr.read()}"
            if line.startswith(PREFIX):
                url = line[len(PREFIX):].strip()
        assert httpx.get(url, timeout=10).status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    path = home / ".basespace" / "emu.cfg"
    assert out.strip().splitlines()[-1].startswith("Logged in as ")
    assert out.strip().endswith(f"; wrote {path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    creds = load_credentials("emu", environ={}, home=home)
    assert creds.api_server == emulator.url.rstrip("/")
    assert creds.access_token not in out + err  # the token is written, never printed
    me = httpx.get(emulator.url + "v1pre3/users/current", headers={"x-access-token": creds.access_token}, timeout=10)
    assert me.status_code == 200
    assert out.strip().splitlines()[-1].startswith(f"Logged in as {me.json()['Response']['Name']};")
