"""Credentials: file formats, precedence, server rules, file security, and token secrecy."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from basemount_py.api.config import (
    DEFAULT_API_SERVER,
    REGIONS,
    ConfigError,
    Credentials,
    config_path,
    format_regions,
    load_credentials,
    reload_token,
    resolve_api_server,
    write_config,
)

TOKEN = "0123456789abcdef0123456789abcdef"
ENV_TOKEN_VALUE = "feedfacefeedfacefeedfacefeedface"


def put_config(home: Path, name: str, text: str, mode: int = 0o600) -> Path:
    directory = home / ".basespace"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{name}.cfg"
    path.write_text(text)
    os.chmod(path, mode)
    return path


# -- file formats -------------------------------------------------------------------------------


def test_go_bs_headerless_form(tmp_path):
    put_config(tmp_path, "default", f"apiServer   = https://api.euc1.sh.basespace.illumina.com\naccessToken = {TOKEN}\n")
    creds = load_credentials(environ={}, home=tmp_path)
    assert creds.api_server == "https://api.euc1.sh.basespace.illumina.com"
    assert creds.access_token == TOKEN
    assert creds.path == tmp_path / ".basespace" / "default.cfg"
    assert creds.source == str(creds.path)


def test_ini_form_with_bsfs_section_comments_and_case(tmp_path):
    text = (
        "# written by an old tool\n"
        "[DEFAULT]\n"
        "APISERVER = https://api.basespace.illumina.com/\n"
        f"accesstoken = {TOKEN}\n"
        "; comment\n"
        "someUnknownKey = whatever\n"
        "\n"
        "[BSFS]\n"
        "accessToken = not-this-one\n"
        "apiServer = https://elsewhere.example\n"
    )
    put_config(tmp_path, "work", text)
    creds = load_credentials("work", environ={}, home=tmp_path)
    assert creds.api_server == "https://api.basespace.illumina.com"
    assert creds.access_token == TOKEN


def test_whitespace_and_trailing_slashes_are_normalised(tmp_path):
    put_config(tmp_path, "default", f"   apiServer=https://api.basespace.illumina.com//   \n\taccessToken =   {TOKEN}   \n")
    creds = load_credentials(environ={}, home=tmp_path)
    assert creds.api_server == "https://api.basespace.illumina.com"
    assert creds.access_token == TOKEN


def test_missing_api_server_means_default(tmp_path):
    put_config(tmp_path, "default", f"accessToken = {TOKEN}\n")
    assert load_credentials(environ={}, home=tmp_path).api_server == DEFAULT_API_SERVER


def test_missing_token_names_the_file(tmp_path):
    path = put_config(tmp_path, "default", "apiServer = https://api.basespace.illumina.com\naccessToken =\n")
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    assert str(path) in str(info.value)
    assert "accessToken" in str(info.value)


def test_garbled_token_is_refused_without_echoing_it(tmp_path):
    put_config(tmp_path, "default", "accessToken = secret\x01value\n")
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    assert "secret" not in str(info.value)
    assert "invalid characters" in str(info.value)


def test_plain_http_server_in_a_file_is_refused(tmp_path):
    path = put_config(tmp_path, "default", f"apiServer = http://api.example.com\naccessToken = {TOKEN}\n")
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    assert str(path) in str(info.value) and "https" in str(info.value)
    creds = load_credentials(environ={}, home=tmp_path, allow_insecure=True)
    assert creds.api_server == "http://api.example.com"


# -- precedence ---------------------------------------------------------------------------------


def test_environment_beats_default_file(tmp_path):
    put_config(tmp_path, "default", f"accessToken = {TOKEN}\n")
    env = {"BASESPACE_ACCESS_TOKEN": ENV_TOKEN_VALUE, "BASESPACE_API_SERVER": "https://api.aps2.sh.basespace.illumina.com/"}
    creds = load_credentials(environ=env, home=tmp_path)
    assert creds.access_token == ENV_TOKEN_VALUE
    assert creds.api_server == "https://api.aps2.sh.basespace.illumina.com"
    assert creds.path is None and "BASESPACE_ACCESS_TOKEN" in creds.source


def test_environment_without_server_uses_default_server(tmp_path):
    creds = load_credentials(environ={"BASESPACE_ACCESS_TOKEN": ENV_TOKEN_VALUE}, home=tmp_path)
    assert creds.api_server == DEFAULT_API_SERVER


def test_explicit_config_beats_environment(tmp_path):
    put_config(tmp_path, "lab", f"apiServer = https://api.euw2.sh.basespace.illumina.com\naccessToken = {TOKEN}\n")
    creds = load_credentials("lab", environ={"BASESPACE_ACCESS_TOKEN": ENV_TOKEN_VALUE}, home=tmp_path)
    assert creds.access_token == TOKEN
    assert creds.api_server == "https://api.euw2.sh.basespace.illumina.com"


def test_api_server_argument_overrides_every_source(tmp_path):
    put_config(tmp_path, "default", f"apiServer = https://api.euc1.sh.basespace.illumina.com\naccessToken = {TOKEN}\n")
    assert load_credentials(None, "cn", environ={}, home=tmp_path).api_server == REGIONS["cnn1"]
    env = {"BASESPACE_ACCESS_TOKEN": ENV_TOKEN_VALUE, "BASESPACE_API_SERVER": "https://api.euc1.sh.basespace.illumina.com"}
    creds = load_credentials(None, "http://127.0.0.1:8080/", environ=env, home=tmp_path)
    assert creds.api_server == "http://127.0.0.1:8080"
    assert creds.access_token == ENV_TOKEN_VALUE


def test_empty_environment_token_is_ignored(tmp_path):
    put_config(tmp_path, "default", f"accessToken = {TOKEN}\n")
    creds = load_credentials(environ={"BASESPACE_ACCESS_TOKEN": "  "}, home=tmp_path)
    assert creds.access_token == TOKEN


def test_missing_named_config_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_credentials("lab", environ={}, home=tmp_path)
    message = str(info.value)
    assert "no config 'lab'" in message
    assert str(tmp_path / ".basespace" / "lab.cfg") in message
    assert "basemount-py auth --config lab" in message


def test_missing_default_config_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    assert "no config 'default'" in str(info.value) and "basemount-py auth" in str(info.value)


@pytest.mark.parametrize("name", ["", "  ", "a/b", "..", "../x", "x\\y"])
def test_config_names_must_be_plain(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid config name"):
        config_path(name, tmp_path)


def test_config_path_layout(tmp_path):
    assert config_path("work", tmp_path) == tmp_path / ".basespace" / "work.cfg"


# -- API server rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias, url",
    [
        ("use1", "https://api.basespace.illumina.com"),
        ("US", "https://api.basespace.illumina.com"),
        ("euc1", "https://api.euc1.sh.basespace.illumina.com"),
        ("eu", "https://api.euc1.sh.basespace.illumina.com"),
        ("APS2", "https://api.aps2.sh.basespace.illumina.com"),
        ("au", "https://api.aps2.sh.basespace.illumina.com"),
        ("cac1", "https://api.cac1.sh.basespace.illumina.com"),
        ("ca", "https://api.cac1.sh.basespace.illumina.com"),
        ("cnn1", "https://api.cnn1.sh.basespace.illumina.com.cn"),
        ("cn", "https://api.cnn1.sh.basespace.illumina.com.cn"),
        ("euw2", "https://api.euw2.sh.basespace.illumina.com"),
        ("uk", "https://api.euw2.sh.basespace.illumina.com"),
        (" Hoth ", "https://api.cloud-hoth.illumina.com"),
    ],
)
def test_region_aliases(alias, url):
    assert resolve_api_server(alias) == url


def test_region_help_lists_every_alias():
    text = format_regions()
    for alias, url in REGIONS.items():
        assert alias in text and url in text


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/", "http://127.5.6.7", "http://localhost:9000", "http://[::1]:8080", "https://example.org/"],
)
def test_https_or_loopback_accepted(url):
    assert resolve_api_server(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080", "http://api.example.com", "http://[::2]/"])
def test_plain_http_elsewhere_needs_override(url):
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        resolve_api_server(url)
    assert resolve_api_server(url, allow_insecure=True) == url.rstrip("/")


@pytest.mark.parametrize(
    "value", ["", "nosuchregion", "ftp://example.org", "https://", "https://user:pw@example.org", "http://[::1", "https://h:99999"]
)
def test_invalid_servers_give_one_clear_line(value):
    with pytest.raises(ConfigError) as info:
        resolve_api_server(value)
    assert "\n" not in str(info.value)
    assert "pw" not in str(info.value)  # a password in the URL is never echoed


# -- file security ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_config_is_refused(tmp_path, mode):
    path = put_config(tmp_path, "default", f"accessToken = {TOKEN}\n", mode=mode)
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    assert f"chmod 600 {path}" in str(info.value)
    assert TOKEN not in str(info.value)


def test_write_config_modes_and_round_trip(tmp_path):
    path = write_config("lab", "https://api.euc1.sh.basespace.illumina.com/", TOKEN, home=tmp_path)
    assert path == tmp_path / ".basespace" / "lab.cfg"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Go bs form: no section header, so every tool sharing ~/.basespace can read it.
    assert path.read_text() == f"apiServer   = https://api.euc1.sh.basespace.illumina.com\naccessToken = {TOKEN}\n"
    creds = load_credentials("lab", environ={}, home=tmp_path)
    assert (creds.api_server, creds.access_token) == ("https://api.euc1.sh.basespace.illumina.com", TOKEN)


def test_write_config_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    write_config("default", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    old_inode = config_path("default", tmp_path).stat().st_ino
    path = write_config("default", DEFAULT_API_SERVER, ENV_TOKEN_VALUE, home=tmp_path)
    # A rename puts a new inode in place (an in-place rewrite would keep the old one and could
    # leave a half-written token behind after a crash).
    assert path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["default.cfg"]
    assert load_credentials(environ={}, home=tmp_path).access_token == ENV_TOKEN_VALUE


def test_write_config_file_mode_ignores_umask(tmp_path):
    (tmp_path / ".basespace").mkdir(mode=0o755)
    os.chmod(tmp_path / ".basespace", 0o755)
    old_umask = os.umask(0)  # even a permissive umask must not widen the file mode
    try:
        path = write_config("default", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_config_error_is_one_line(tmp_path):
    (tmp_path / ".basespace").write_text("a file where the directory should be")
    with pytest.raises(ConfigError) as info:
        write_config("default", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    assert "cannot write config" in str(info.value) and "\n" not in str(info.value)


# -- token rotation -----------------------------------------------------------------------------


def test_reload_token_rereads_the_same_file(tmp_path):
    write_config("lab", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    creds = load_credentials("lab", environ={}, home=tmp_path)
    write_config("lab", DEFAULT_API_SERVER, ENV_TOKEN_VALUE, home=tmp_path)
    assert reload_token(creds) == ENV_TOKEN_VALUE


def test_reload_token_from_environment_is_none(tmp_path):
    creds = load_credentials(environ={"BASESPACE_ACCESS_TOKEN": ENV_TOKEN_VALUE}, home=tmp_path)
    assert reload_token(creds) is None


def test_reload_token_of_a_broken_file_raises_config_error(tmp_path):
    write_config("lab", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    creds = load_credentials("lab", environ={}, home=tmp_path)
    os.chmod(creds.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        reload_token(creds)


# -- secrecy ------------------------------------------------------------------------------------


def test_token_absent_from_repr_and_str(tmp_path):
    write_config("default", DEFAULT_API_SERVER, TOKEN, home=tmp_path)
    creds = load_credentials(environ={}, home=tmp_path)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert TOKEN not in text
        assert DEFAULT_API_SERVER in text
    direct = Credentials("https://x.example", TOKEN, "test")
    assert TOKEN not in repr(direct) and TOKEN not in str(direct)


def test_token_absent_from_every_error_message(tmp_path):
    messages = []
    cases = [
        f"apiServer = http://api.example.com\naccessToken = {TOKEN}\n",
        f"apiServer = not a url\naccessToken = {TOKEN}\n",
        f"apiServer = https://user:{TOKEN}@example.org\naccessToken = {TOKEN}\n",
        f"accessToken = x{TOKEN}\x7f\n",
    ]
    for text in cases:
        put_config(tmp_path, "default", text)
        with pytest.raises(ConfigError) as info:
            load_credentials(environ={}, home=tmp_path)
        messages.append(str(info.value))
    put_config(tmp_path, "default", f"accessToken = {TOKEN}\n", mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_credentials(environ={}, home=tmp_path)
    messages.append(str(info.value))
    for message in messages:
        assert TOKEN not in message
    assert len(messages) == 5
