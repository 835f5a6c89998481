"""``basemount-py auth``: log in with the OAuth device flow and write ``~/.basespace/NAME.cfg``.

The flow is BaseSpace's (the same one BaseMount and ``bs auth`` use):

1. ``POST v1pre3/oauthv2/deviceauthorization`` (form ``client_id``, ``response_type=device_code``,
   ``scope``) -> ``device_code``, ``verification_with_code_uri``, ``interval``, ``expires_in``;
2. the user opens the URI in a browser and approves;
3. meanwhile ``POST v1pre3/oauthv2/token`` (``grant_type=device``, ``code=<device_code>``) is
   polled every ``interval`` seconds: HTTP 400 ``authorization_pending`` means "keep waiting",
   ``slow_down`` means "wait 5 s longer from now on", 200 carries ``access_token``.

We do not embed Illumina's client id/secret (they are not ours to redistribute): the user
registers an app in the BaseSpace developer portal and passes its id. The emulator accepts any id.

Every HTTP call has a timeout and the whole wait is bounded by the code's ``expires_in`` and by
``timeout``. The device code, client secret and access token are never printed or put into an
exception message.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import httpx
import trio

from .client import BaseSpaceClient
from .config import (
    DEFAULT_API_SERVER,
    ENV_SERVER,
    ConfigError,
    check_token,
    config_path,
    format_regions,
    resolve_api_server,
    write_config,
)
from .errors import NOT_JSON, ApiError
from .retry import RetryPolicy

__all__ = ["DEFAULT_SCOPES", "LoginError", "device_login", "add_arguments", "main"]

DEFAULT_SCOPES = "CREATE GLOBAL,BROWSE GLOBAL,CREATE PROJECTS,READ GLOBAL,MOVETOTRASH GLOBAL"
ENV_CLIENT_ID = "BASESPACE_CLIENT_ID"
ENV_CLIENT_SECRET = "BASESPACE_CLIENT_SECRET"

NO_CLIENT_ID = f"a client id is required: register an app in the BaseSpace developer portal and pass --client-id (or set {ENV_CLIENT_ID})"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
HTTP_TIMEOUT = 30.0
# A network blip during a 15-minute wait should not lose the login, but a server that is gone
# should not be polled until the code expires either.
MAX_CONSECUTIVE_FAILURES = 5
LAST_ANSWER_GRACE = 1.0  # seconds past the deadline a poll sent just before it may take to answer


class LoginError(Exception):
    """The login did not produce a token. The message is one line, safe to show."""


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(error code, description) of an OAuth error response; tolerant of non-JSON bodies."""
    try:
        body = response.json()
    except NOT_JSON:
        return "", response.reason_phrase or ""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error") or body.get("ErrorCode") or ""
    status = body.get("ResponseStatus")
    description = body.get("error_description") or (status.get("Message") if isinstance(status, dict) else "")
    return str(error), str(description or "")


def _number(value: object, default: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


async def _post(http: httpx.AsyncClient, url: str, data: dict[str, str], what: str) -> httpx.Response:
    try:
        return await http.post(url, data=data)
    except httpx.TimeoutException:
        raise LoginError(f"{what}: no answer from {url} within {HTTP_TIMEOUT:.0f} s") from None
    except httpx.HTTPError as exc:
        raise LoginError(f"{what}: cannot reach {url}: {type(exc).__name__}") from None


async def _start(http: httpx.AsyncClient, api: str, client_id: str, scopes: str) -> dict:
    url = f"{api}/v1pre3/oauthv2/deviceauthorization"
    form = {"client_id": client_id, "response_type": "device_code", "scope": scopes}
    response = await _post(http, url, form, "starting the login")
    if response.status_code != 200:
        error, description = _error_of(response)
        detail = ": ".join(x for x in (error, description) if x) or f"HTTP {response.status_code}"
        raise LoginError(f"the server refused to start a login ({detail})")
    try:
        body = response.json()
    except NOT_JSON:
        body = None
    if not isinstance(body, dict) or not body.get("device_code"):
        raise LoginError("the server's device authorization answer has no device_code")
    return body


def _verification_uri(body: dict) -> str:
    uri = body.get("verification_with_code_uri") or body.get("verification_uri_complete")
    if uri:
        return str(uri)
    base, code = body.get("verification_uri"), body.get("user_code")
    if base and code:
        return f"{base}{'&' if '?' in str(base) else '?'}code={code}"
    raise LoginError("the server's device authorization answer has no verification URI")


async def device_login(
    api_server: str,
    client_id: str,
    client_secret: str | None = None,
    *,
    scopes: str = DEFAULT_SCOPES,
    out: Callable[[str], None] = print,
    timeout: float = 900.0,  # noqa: ASYNC109  (also the wait when the server sends no expires_in)
    http: httpx.AsyncClient | None = None,
) -> str:
    """Run the device flow against ``api_server`` and return the access token.

    ``out`` receives the lines for the user (the URL to open). Raises LoginError on denial,
    expiry, timeout or an unusable server answer.
    """
    if not client_id or not client_id.strip():
        raise LoginError(NO_CLIENT_ID)
    api = api_server.rstrip("/")
    own = http is None
    if http is None:
        http = httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT), follow_redirects=False, headers={"User-Agent": "basemount_py"})
    try:
        deadline = trio.current_time() + timeout
        # The whole wait, requests included (each request's own timeout is per read, which a server
        # sending a byte now and then never reaches); the polls stop by ``deadline`` themselves.
        with trio.move_on_at(deadline + LAST_ANSWER_GRACE) as bound:
            started = await _start(http, api, client_id.strip(), scopes)
            uri = _verification_uri(started)
            expires_in = _number(started.get("expires_in"), timeout)
            deadline = min(deadline, trio.current_time() + expires_in)
            bound.deadline = deadline + LAST_ANSWER_GRACE
            interval = _number(started.get("interval"), DEFAULT_INTERVAL)
            out(f"Open this URL in a browser and approve: {uri}")
            if started.get("user_code"):
                out(f"(code {started['user_code']}; waiting for approval, Ctrl-C to cancel)")
            return await _poll(http, api, client_id.strip(), client_secret, str(started["device_code"]), interval, deadline)
        raise LoginError("the login was not approved in time, or the server answered too slowly; run the command again")
    finally:
        if own:
            await http.aclose()


async def _poll(
    http: httpx.AsyncClient,
    api: str,
    client_id: str,
    client_secret: str | None,
    device_code: str,
    interval: float,
    deadline: float,
) -> str:
    url = f"{api}/v1pre3/oauthv2/token"
    form = {"client_id": client_id, "code": device_code, "grant_type": "device"}
    if client_secret:
        form["client_secret"] = client_secret
    failures = 0
    while True:
        # Honour the interval before every poll: the user cannot have approved before the first.
        if trio.current_time() + interval > deadline:
            raise LoginError("the login was not approved in time; run the command again")
        await trio.sleep(interval)
        try:
            response = await _post(http, url, form, "waiting for approval")
        except LoginError:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise
            continue
        if response.status_code == 200:
            try:
                body = response.json()
            except NOT_JSON:
                body = None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not token:
                raise LoginError("the token answer has no access_token")
            try:
                # Checked before any use: one with a newline or a stray byte would be refused in a
                # header by httpx, whose message quotes it (and so would show it on the terminal).
                return check_token(str(token), "the server's token answer")
            except ConfigError:
                raise LoginError("the server's token answer is not a usable access token") from None
        error, description = _error_of(response)
        if response.status_code == 429 or response.status_code >= 500:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise LoginError(f"waiting for approval: the server keeps failing (HTTP {response.status_code})")
            continue
        failures = 0
        code = error.lower()
        if code == "authorization_pending":
            continue
        if code == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if code in ("access_denied", "accessdenied"):
            raise LoginError("the login was denied in the browser")
        if code == "expired_token":
            raise LoginError("the login code expired before it was approved; run the command again")
        detail = ": ".join(x for x in (error, description) if x) or f"HTTP {response.status_code}"
        raise LoginError(f"login failed ({detail})")


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``basemount-py auth``."""
    parser.add_argument("--config", default="default", metavar="NAME", help="write ~/.basespace/NAME.cfg (default: %(default)s)")
    parser.add_argument(
        "--api-server", metavar="URL|ALIAS", help=f"API server or region alias, 'help' lists them (default: ${ENV_SERVER} or {DEFAULT_API_SERVER})"
    )
    parser.add_argument("--client-id", metavar="ID", help=f"OAuth client id of your BaseSpace app (default: ${ENV_CLIENT_ID})")
    parser.add_argument("--client-secret", metavar="SECRET", help=f"its client secret, if the app has one (default: ${ENV_CLIENT_SECRET})")
    parser.add_argument("--scopes", default=DEFAULT_SCOPES, help="comma-separated scopes (default: %(default)s)")
    parser.add_argument("--allow-insecure-http", action="store_true", help="allow a plain-http API server that is not on this machine")
    parser.add_argument("--force", action="store_true", help="replace an existing config")


async def _login_and_verify(api: str, client_id: str, secret: str | None, scopes: str) -> tuple[str, str]:
    # Flush each line: the URL must reach the user even when stdout is a pipe (`| tee log`).
    token = await device_login(api, client_id, secret, scopes=scopes, out=lambda line: print(line, flush=True))
    # Check the token before writing it, so a bad login never replaces a good config.
    policy = RetryPolicy(attempts=3, request_timeout=HTTP_TIMEOUT, deadline=60.0)
    async with BaseSpaceClient(api, token, policy=policy) as client:
        body = await client.get_json("v1pre3/users/current")
    user = found if isinstance(found := body.get("Response"), dict) else {}
    return token, str(user.get("Name") or user.get("Email") or user.get("Id") or "unknown user")


def main(args: argparse.Namespace) -> int:
    """Log in, verify the token, write the config. Returns the exit status (errors: one line, 1)."""
    try:
        server_arg = args.api_server or os.environ.get(ENV_SERVER, "").strip() or DEFAULT_API_SERVER
        if server_arg.strip().lower() == "help":
            print(format_regions())
            return 0
        api = resolve_api_server(server_arg, allow_insecure=args.allow_insecure_http)
        client_id = (args.client_id or os.environ.get(ENV_CLIENT_ID, "")).strip()
        if not client_id:
            raise LoginError(NO_CLIENT_ID)
        secret = args.client_secret or os.environ.get(ENV_CLIENT_SECRET) or None
        path = config_path(args.config)
        # Fail before the user spends time in the browser, not after.
        if path.exists() and not args.force:
            raise ConfigError(f"config '{args.config}' already exists at {path}; pass --force to replace it")
        token, user = trio.run(_login_and_verify, api, client_id, secret, args.scopes)
        written = write_config(args.config, api, token)
    except (ConfigError, LoginError, ApiError) as exc:
        print(f"basemount-py auth: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("basemount-py auth: interrupted", file=sys.stderr)
        return 130
    print(f"Logged in as {user}; wrote {written}")
    return 0
