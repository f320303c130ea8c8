"""The NATS users' credentials (runtime/credentials.py): made once, private, found in order."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from victoria.errors import ConfigError
from victoria.runtime import credentials
from victoria.runtime.config import Config


def config(tmp_path: Path, **env: str) -> Config:
    return Config.from_env({"VICTORIA_DATA_DIR": str(tmp_path), **env})


def test_the_file_is_made_once_with_mode_0600_and_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "data" / credentials.FILE_NAME
    first = credentials.load_or_create(path)
    assert sorted(first) == sorted(credentials.ROLES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.load_or_create(path) == first
    assert [p.name for p in path.parent.iterdir()] == [credentials.FILE_NAME]  # no temporary left


def test_a_file_that_lacks_a_role_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / credentials.FILE_NAME
    path.write_text('{"supervisor": "abc"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="no NATS password for gateway"):
        credentials.load_or_create(path)
    assert path.read_text(encoding="utf-8") == '{"supervisor": "abc"}'


def test_passwords_parse_as_strings_in_nats_conf() -> None:
    for _ in range(200):
        password = credentials.new_password()
        assert len(password) == credentials.PASSWORD_LENGTH
        assert password[0].isalpha() and password.isalnum()


def test_each_role_has_its_variable() -> None:
    assert credentials.password_variable("llm-runner") == "VICTORIA_NATS_PASSWORD_LLM_RUNNER"
    users = {role: f"p{n}" for n, role in enumerate(credentials.ROLES)}
    lines = credentials.export_lines(users)
    assert "export VICTORIA_NATS_PASSWORD_SUPERVISOR=p0" in lines
    assert len(lines) == len(credentials.ROLES)


def test_urls_are_shown_without_their_password() -> None:
    url = credentials.with_user("nats://127.0.0.1:4222", "gateway", "s3cret")
    assert url == "nats://gateway:s3cret@127.0.0.1:4222"
    assert credentials.redact(url) == "nats://gateway:***@127.0.0.1:4222"
    assert credentials.without_credentials(url) == "nats://127.0.0.1:4222"
    assert credentials.redact("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert credentials.has_credentials(url) and not credentials.has_credentials("nats://h:1")
    assert "s3cret" not in repr(credentials.Auth(user="gateway", password="s3cret"))


def test_a_process_finds_its_credentials_in_the_url_then_the_environment_then_the_data_dir(
    tmp_path: Path,
) -> None:
    users = credentials.load_or_create(tmp_path / credentials.FILE_NAME)
    url = "nats://127.0.0.1:4222"
    in_url = credentials.for_role(
        config(tmp_path, VICTORIA_NATS_USER="x", VICTORIA_NATS_PASSWORD="y"), "gateway", "nats://a:b@h:1"
    )
    assert (in_url.user, in_url.source) == (None, "url")
    env = credentials.for_role(
        config(tmp_path, VICTORIA_NATS_USER="x", VICTORIA_NATS_PASSWORD="y"), "gateway", url
    )
    assert (env.user, env.password, env.source) == ("x", "y", "environment")
    creds_file = tmp_path / "user.creds"
    creds_file.write_text("-----BEGIN NATS USER JWT-----\n", encoding="utf-8")
    creds = credentials.for_role(config(tmp_path, VICTORIA_NATS_CREDS=str(creds_file)), "gateway", url)
    assert (creds.user, creds.creds_file) == (None, creds_file)
    stored = credentials.for_role(config(tmp_path), "gateway", url)
    assert (stored.user, stored.password) == ("gateway", users["gateway"])
    none = credentials.for_role(config(tmp_path / "elsewhere"), "gateway", url)
    assert (none.user, none.password, none.creds_file) == (None, None, None)


def test_a_user_without_a_password_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VICTORIA_NATS_PASSWORD"):
        config(tmp_path, VICTORIA_NATS_USER="gateway")
    secret = config(tmp_path, VICTORIA_NATS_USER="gateway", VICTORIA_NATS_PASSWORD="s3cret")
    assert "s3cret" not in repr(secret)


def test_a_child_gets_its_own_password_and_no_other() -> None:
    users = {role: f"pw-{role}" for role in credentials.ROLES}
    environ = {
        "PATH": "/bin",
        "VICTORIA_NATS_PASSWORD_GATEWAY": "pw-gateway",
        "VICTORIA_NATS_CREDS": "/x.creds",
        "VICTORIA_NATS_USER": "supervisor",
        "VICTORIA_NATS_PASSWORD": "pw-supervisor",
    }
    env = credentials.child_environment(environ, "llm-runner", users)
    assert env == {
        "PATH": "/bin",
        "VICTORIA_NATS_USER": "llm-runner",
        "VICTORIA_NATS_PASSWORD": "pw-llm-runner",
    }
