"""Where the API server and access token come from: ``~/.basespace/NAME.cfg`` or the environment.

The config files are shared with Illumina's BaseMount, the old Python CLI and the Go ``bs`` CLI,
so the reader accepts every form those tools write:

* the header-less Go ``bs`` form::

      apiServer   = https://api.basespace.illumina.com
      accessToken = 0123456789abcdef...

* the INI form of the Python-era tools, with a ``[DEFAULT]`` section (BaseMount adds ``[BSFS]``;
  other sections and unknown keys are ignored, key names are case-insensitive).

A small hand-written parser is used instead of :mod:`configparser` because the Go form has no
section header and configparser would also apply ``%`` interpolation to tokens.

Precedence (first that applies wins):

1. an explicit config name (``--config NAME``) -> that file, which must exist;
2. ``BASESPACE_ACCESS_TOKEN`` (+ optional ``BASESPACE_API_SERVER``) from the environment;
3. ``~/.basespace/default.cfg``.

``--api-server`` overrides the server of whichever source was used.

Security rules: a config file readable by group or others is refused (the token is a password);
:func:`write_config` creates ``~/.basespace`` as 0700 and the file as 0600, atomically; plain
``http://`` servers are refused unless they are loopback (the emulator) or explicitly allowed.
The token never appears in an exception message, a ``repr`` or a log line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_API_SERVER",
    "REGIONS",
    "ENV_TOKEN",
    "ENV_SERVER",
    "ConfigError",
    "Credentials",
    "resolve_api_server",
    "format_regions",
    "config_path",
    "load_credentials",
    "write_config",
    "reload_token",
]

DEFAULT_API_SERVER = "https://api.basespace.illumina.com"

_EUC1 = "https://api.euc1.sh.basespace.illumina.com"
_APS2 = "https://api.aps2.sh.basespace.illumina.com"
_CAC1 = "https://api.cac1.sh.basespace.illumina.com"
_CNN1 = "https://api.cnn1.sh.basespace.illumina.com.cn"
_EUW2 = "https://api.euw2.sh.basespace.illumina.com"

# Region aliases accepted by --api-server (lookup is case-insensitive; keys are lowercase).
REGIONS: dict[str, str] = {
    "use1": DEFAULT_API_SERVER,
    "us": DEFAULT_API_SERVER,
    "euc1": _EUC1,
    "eu": _EUC1,
    "aps2": _APS2,
    "au": _APS2,
    "cac1": _CAC1,
    "ca": _CAC1,
    "cnn1": _CNN1,
    "cn": _CNN1,
    "euw2": _EUW2,
    "uk": _EUW2,
    "hoth": "https://api.cloud-hoth.illumina.com",
}

ENV_TOKEN = "BASESPACE_ACCESS_TOKEN"
ENV_SERVER = "BASESPACE_API_SERVER"
ENV_SOURCE = f"environment variable {ENV_TOKEN}"

# A token goes into an HTTP header: printable ASCII, no spaces. Anything else is a broken file
# (e.g. a passphrase-encrypted BaseMount token, which we cannot decrypt).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


class ConfigError(Exception):
    """Unusable configuration. The message is one line naming the file or variable and the fix."""


@dataclass(frozen=True)
class Credentials:
    """Where to connect and with which token. ``source`` says where the token came from.

    ``path`` is the config file the token was read from (None for the environment); it lets
    :func:`reload_token` re-read exactly the same file when the API answers 401.
    """

    api_server: str
    access_token: str = field(repr=False)
    source: str
    path: Path | None = None

    def __repr__(self) -> str:  # explicit, so no future field change can leak the token
        return f"Credentials(api_server={self.api_server!r}, access_token='***', source={self.source!r})"

    __str__ = __repr__


# -- API server -------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_regions() -> str:
    """A human-readable list of the aliases, for ``--api-server help``."""
    by_url: dict[str, list[str]] = {}
    for alias, url in REGIONS.items():
        by_url.setdefault(url, []).append(alias)
    lines = [f"  {', '.join(aliases):<12} {url}" for url, aliases in by_url.items()]
    return "API servers (--api-server ALIAS or URL; default use1):\n" + "\n".join(lines)


def resolve_api_server(value: str, *, allow_insecure: bool = False) -> str:
    """Turn an alias or URL into a normalised base URL (no trailing ``/``).

    Plain http is allowed only for loopback hosts (the local emulator) or with ``allow_insecure``,
    because the access token is sent with every request.
    """
    text = (value or "").strip()
    if not text:
        raise ConfigError("empty API server; pass an https:// URL or a region alias (see --api-server help)")
    alias = REGIONS.get(text.lower())
    if alias is not None:
        return alias
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
        scheme = parts.scheme.lower()
    except ValueError:
        host = scheme = None
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"invalid API server {text!r}: expected https://HOST or a region alias ({', '.join(sorted(REGIONS))})")
    if parts.username or parts.password:
        # Don't echo the URL: the part before '@' may be a password.
        raise ConfigError("invalid API server: user name or password in the URL; give just https://HOST")
    if parts.query or parts.fragment:
        raise ConfigError(f"invalid API server {text!r}: no query or fragment allowed in the URL")
    if scheme == "http" and not (allow_insecure or _is_loopback(host)):
        raise ConfigError(
            f"refusing plain-http API server {text!r}: the token would travel unencrypted; use https, or pass --allow-insecure-http if you really mean it"
        )
    return text.rstrip("/")


# -- files ------------------------------------------------------------------------------------


def config_path(name: str, home: Path | None = None) -> Path:
    """``~/.basespace/NAME.cfg``; NAME must be a plain name, never a path."""
    if not name or not name.strip() or "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise ConfigError(f"invalid config name {name!r}: use a plain name like 'default' or 'work' (no '/' or '..')")
    base = Path(home) if home is not None else Path.home()
    return base / ".basespace" / f"{name}.cfg"


def _parse(text: str) -> dict[str, str]:
    """Keys of the default section (or of the header-less file), lowercased; last one wins."""
    values: dict[str, str] = {}
    section = "default"  # lines before any header belong to the default section (Go bs form)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if section != "default":
            continue  # [BSFS] and friends belong to other tools
        # Split at the first '=' or ':' (configparser accepts both); a URL's ':' comes after '='.
        positions = [p for p in (line.find("="), line.find(":")) if p > 0]
        if not positions:
            continue
        cut = min(positions)
        key, value = line[:cut].strip().lower(), line[cut + 1 :].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].strip()
        values[key] = value
    return values


def _read_file(path: Path) -> dict[str, str]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"config {path} is readable by other users (mode {st.st_mode & 0o777:03o}); it holds your access token: run `chmod 600 {path}`")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return _parse(text)


def check_token(token: str, where: str) -> str:
    """The token, stripped; ConfigError (never showing it) when it is empty or not a token's characters."""
    token = token.strip()
    if not token:
        raise ConfigError(f"no accessToken in {where}; run `basemount-py auth` to log in")
    if not _TOKEN_RE.fullmatch(token):
        # Never echo the value: it may be a real token with a stray character.
        raise ConfigError(f"the access token in {where} has invalid characters (encrypted or corrupted?)")
    return token


def _from_file(path: Path, name: str, allow_insecure: bool) -> Credentials:
    try:
        values = _read_file(path)
    except FileNotFoundError:
        hint = "basemount-py auth" if name == "default" else f"basemount-py auth --config {name}"
        raise ConfigError(f"no config '{name}' at {path}; run `{hint}`") from None
    token = check_token(values.get("accesstoken", ""), str(path))
    server = values.get("apiserver") or DEFAULT_API_SERVER
    try:
        server = resolve_api_server(server, allow_insecure=allow_insecure)
    except ConfigError as exc:
        raise ConfigError(f"{path}: apiServer: {exc}") from None
    return Credentials(server, token, str(path), path)


def load_credentials(
    config_name: str | None = None,
    api_server: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
    allow_insecure: bool = False,
) -> Credentials:
    """Find the credentials by the precedence in the module docstring. Raises ConfigError."""
    if config_name is not None:
        creds = _from_file(config_path(config_name, home), config_name, allow_insecure)
    elif environ.get(ENV_TOKEN, "").strip():
        token = check_token(environ[ENV_TOKEN], ENV_SOURCE)
        server = environ.get(ENV_SERVER, "").strip() or DEFAULT_API_SERVER
        try:
            server = resolve_api_server(server, allow_insecure=allow_insecure)
        except ConfigError as exc:
            raise ConfigError(f"{ENV_SERVER}: {exc}") from None
        creds = Credentials(server, token, ENV_SOURCE, None)
    else:
        creds = _from_file(config_path("default", home), "default", allow_insecure)
    if api_server is not None:
        server = resolve_api_server(api_server, allow_insecure=allow_insecure)
        creds = Credentials(server, creds.access_token, creds.source, creds.path)
    return creds


def reload_token(credentials: Credentials, home: Path | None = None) -> str | None:
    """Re-read the token from the file it came from (token rotation after a 401).

    Returns None when the source cannot change under us (the environment of a running process).
    ``home`` is accepted for symmetry with the other functions; the file path recorded in the
    credentials is what gets re-read, so a rotated token is found even if HOME changed.
    """
    del home
    if credentials.path is None:
        return None
    values = _read_file(credentials.path)
    return check_token(values.get("accesstoken", ""), str(credentials.path))


def write_config(name: str, api_server: str, access_token: str, *, home: Path | None = None) -> Path:
    """Write ``~/.basespace/NAME.cfg`` (Go ``bs`` form) with mode 0600, atomically; return its path.

    The file is created 0600 from the start (never chmod-ed afterwards, so the token is never
    briefly world-readable) under a temporary name and renamed over the old file, so a crash
    leaves either the old config or the new one, never half of one.
    """
    path = config_path(name, home)
    token = check_token(access_token, "the new credentials")
    server = api_server.strip().rstrip("/")
    directory = path.parent
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        tmp = directory / f".{name}.cfg.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"apiServer   = {server}\naccessToken = {token}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfigError(f"cannot write config {path}: {exc.strerror or exc}") from None
    return path
