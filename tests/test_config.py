"""Configuration from the environment (runtime/config.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from victoria.errors import ConfigError
from victoria.runtime.config import Config, settings


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    config = Config.from_env({})
    assert config.nats_url is None
    assert config.llm_url == "http://127.0.0.1:11434"
    assert config.llm_api == "ollama"
    assert config.model == "llama3.2"
    assert config.llm_timeout == 300.0
    assert config.task_deadline == 900.0
    assert config.delegate_timeout == 90.0
    assert config.max_attempts == 5
    assert config.ack_wait == 5.0
    assert config.dedup_window == 120.0
    assert config.allow_unfenced is False
    assert config.heartbeat_interval == 2.0
    assert config.concurrency == 256
    assert config.llm_concurrency == 64
    assert config.host == "127.0.0.1"
    assert config.port == 8010
    assert config.gateway_url == "http://127.0.0.1:8010"
    assert config.log_level == "INFO"
    assert config.workspace == Path.cwd()
    assert config.instance


def test_the_default_instance_is_a_valid_instance_name() -> None:
    instance = Config.from_env({}).instance
    assert Config.from_env({"VICTORIA_INSTANCE": instance}).instance == instance


def test_the_data_dir_defaults_under_xdg_data_home(tmp_path: Path) -> None:
    config = Config.from_env({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert config.data_dir in (
        tmp_path / "xdg" / "victoria",
        tmp_path / "Library/Application Support/victoria",
    )
    assert config.nats_url_file == config.data_dir / "nats.url"


def test_values_from_the_environment_are_used() -> None:
    read: dict[str, tuple[str, str, object]] = {  # variable: (its value, the field, what the field holds)
        "NATS_URL": ("nats://10.0.0.1:4222", "nats_url", "nats://10.0.0.1:4222"),
        "VICTORIA_DATA_DIR": ("/srv/victoria", "data_dir", Path("/srv/victoria")),
        "VICTORIA_LLM_URL": ("https://llm.example.com/", "llm_url", "https://llm.example.com"),
        "VICTORIA_LLM_API": ("openai", "llm_api", "openai"),
        "VICTORIA_MODEL": ("qwen", "model", "qwen"),
        "VICTORIA_LLM_TIMEOUT": ("12.5", "llm_timeout", 12.5),
        "VICTORIA_TASK_DEADLINE": ("60", "task_deadline", 60.0),
        "VICTORIA_WORKSPACE": ("/tmp/ws", "workspace", Path("/tmp/ws")),
        "DELEGATE_VERONICA_TIMEOUT": ("7", "delegate_timeout", 7.0),
        "VICTORIA_MAX_ATTEMPTS": ("2", "max_attempts", 2),
        "VICTORIA_ACK_WAIT": ("3", "ack_wait", 3.0),
        "VICTORIA_DEDUP_WINDOW": ("2.5", "dedup_window", 2.5),
        "VICTORIA_ALLOW_UNFENCED": ("yes", "allow_unfenced", True),
        "VICTORIA_INSTANCE": ("node_1-a", "instance", "node_1-a"),
        "VICTORIA_HEARTBEAT_INTERVAL": ("0.5", "heartbeat_interval", 0.5),
        "VICTORIA_CONCURRENCY": ("4", "concurrency", 4),
        "VICTORIA_LLM_CONCURRENCY": ("2", "llm_concurrency", 2),
        "VICTORIA_HOST": ("0.0.0.0", "host", "0.0.0.0"),
        "VICTORIA_PORT": ("9000", "port", 9000),
        "VICTORIA_URL": ("http://gw:9000/", "gateway_url", "http://gw:9000"),
        "VICTORIA_LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    }
    config = Config.from_env({variable: value for variable, (value, _, _) in read.items()})
    assert {field: getattr(config, field) for _, field, _ in read.values()} == {
        field: held for _, field, held in read.values()
    }
    assert config.allow_unfenced is True


def test_blank_values_fall_back_to_the_defaults() -> None:
    config = Config.from_env({"VICTORIA_LLM_TIMEOUT": "  ", "VICTORIA_PORT": "", "NATS_URL": ""})
    assert config.llm_timeout == 300.0
    assert config.port == 8010
    assert config.nats_url is None


def test_values_are_trimmed() -> None:
    assert Config.from_env({"VICTORIA_PORT": " 9001 "}).port == 9001


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VICTORIA_LLM_TIMEOUT", "abc"),
        ("VICTORIA_LLM_TIMEOUT", "-1"),
        ("VICTORIA_LLM_TIMEOUT", "0"),
        ("VICTORIA_LLM_TIMEOUT", "nan"),
        ("VICTORIA_LLM_TIMEOUT", "inf"),
        ("VICTORIA_TASK_DEADLINE", "soon"),
        ("DELEGATE_VERONICA_TIMEOUT", "-5"),
        ("VICTORIA_ACK_WAIT", "0"),
        ("VICTORIA_DEDUP_WINDOW", "-2"),
        ("VICTORIA_ALLOW_UNFENCED", "maybe"),
        ("VICTORIA_HEARTBEAT_INTERVAL", "x"),
        ("VICTORIA_MAX_ATTEMPTS", "0"),
        ("VICTORIA_MAX_ATTEMPTS", "2.5"),
        ("VICTORIA_CONCURRENCY", "-1"),
        ("VICTORIA_LLM_CONCURRENCY", "many"),
        ("VICTORIA_LLM_API", "foo"),
        ("VICTORIA_LLM_API", "Ollama"),
        ("VICTORIA_LLM_URL", "ftp://x"),
        ("VICTORIA_LLM_URL", "127.0.0.1:11434"),
        ("VICTORIA_URL", "gateway"),
        ("VICTORIA_PORT", "70000"),
        ("VICTORIA_PORT", "-1"),
        ("VICTORIA_PORT", "http"),
        ("NATS_URL", "http://x"),
        ("NATS_URL", "localhost:4222"),
        ("VICTORIA_INSTANCE", "a.b"),
        ("VICTORIA_INSTANCE", "a b"),
        ("VICTORIA_INSTANCE", "x" * 49),
        ("VICTORIA_LOG_LEVEL", "verbose"),
    ],
)
def test_an_invalid_value_raises_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_the_config_is_frozen() -> None:
    config = Config.from_env({})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def _readme_configuration() -> dict[str, str]:
    """README's configuration table: variable -> its default as the table shows it."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = text.split("| Variable | Default | Meaning |", 1)[1].split("\n\n", 1)[0]
    shown: dict[str, str] = {}
    for row in table.strip().splitlines()[1:]:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        names = re.findall(r"`([A-Z_]+)`", cells[0].split("(or")[0])
        parts = re.split(r" / |, ", cells[1]) if len(names) > 1 else [cells[1]]
        shown.update(zip(names, parts if len(parts) == len(names) else [cells[1]] * len(names), strict=True))
    return shown


def test_the_readme_configuration_table_lists_every_setting_with_its_default() -> None:
    declared: dict[str, str] = {}
    for _, setting in settings():
        declared.setdefault(setting.variable, setting.default_text)
    assert _readme_configuration() == declared


def test_every_setting_is_read_from_its_variable_and_has_a_line_of_doc() -> None:
    for name, setting in settings():
        assert setting.doc and setting.variable.isupper(), name
    assert {name for name, _ in settings()} == {f.name for f in dataclasses.fields(Config)}
