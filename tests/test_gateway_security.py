"""Who may call the gateway: tokens (Bearer or HTTP Basic), the refusal to listen open, admission."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from tests.fakellm import FakeLLM
from tests.system import System, free_port, run_victoria, victoria_up
from victoria.errors import ConfigError
from victoria.gateway import dashboard
from victoria.gateway.app import create_app
from victoria.gateway.auth import Tokens, parse_tokens_file, presented_token
from victoria.gateway.backend import GatewayState
from victoria.runtime.config import Config
from victoria.runtime.listen import InsecureListen, is_loopback, refuse_open_listen

TOKEN = "main-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
LIMIT = 3


# --- the pieces, without a server ------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_bearer_token_is_read_from_the_authorization_header() -> None:
    assert presented_token(f"Bearer {TOKEN}") == TOKEN
    assert presented_token(f"bearer   {TOKEN} ") == TOKEN


def test_the_password_of_basic_auth_is_the_token_and_a_lone_user_name_too() -> None:
    assert presented_token(_basic("victoria", TOKEN)) == TOKEN
    assert presented_token(_basic(TOKEN, "")) == TOKEN


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic !!!", "Digest abc", _basic("", "")])
def test_a_missing_or_malformed_authorization_header_presents_no_token(header: str | None) -> None:
    assert presented_token(header) is None


def test_a_tokens_file_names_each_client_and_skips_comments_and_blank_lines() -> None:
    parsed = parse_tokens_file(f"# clients\n\nalice {ALICE}  # the CLI\n{BOB}\n")
    assert sorted(parsed.values()) == ["alice", "line-4"]


def test_a_short_token_in_the_file_is_refused_naming_its_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_tokens_file(f"alice {ALICE}\nbob short\n")


def test_a_short_api_token_is_refused_at_start_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="VICTORIA_API_TOKEN") as caught:
        Config.from_env({"VICTORIA_API_TOKEN": "hunter2"})
    assert "hunter2" not in str(caught.value)


def test_the_api_token_is_not_in_the_config_repr() -> None:
    assert TOKEN not in repr(Config.from_env({"VICTORIA_API_TOKEN": TOKEN}))


def test_known_tokens_name_their_client_and_unknown_ones_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\n", encoding="utf-8")
    tokens = Tokens(token=TOKEN, path=path)
    assert tokens.required
    assert (tokens.client_of(ALICE), tokens.client_of(TOKEN)) == ("alice", "api-token")
    assert tokens.client_of(BOB) is None
    assert tokens.client_of(None) is None


def test_an_empty_tokens_file_still_asks_for_a_token_and_accepts_none(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n", encoding="utf-8")
    tokens = Tokens(path=path)
    assert tokens.required and tokens.client_of(ALICE) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("victoria.example", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listening_open_beyond_loopback_is_refused_unless_insecure_is_said() -> None:
    with pytest.raises(InsecureListen, match="--insecure"):
        refuse_open_listen("0.0.0.0", tokens_required=False, insecure=False)
    refuse_open_listen("0.0.0.0", tokens_required=False, insecure=True)
    refuse_open_listen("0.0.0.0", tokens_required=True, insecure=False)
    refuse_open_listen("127.0.0.1", tokens_required=False, insecure=False)


# --- a running system with tokens ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM, workspace: Path, tokens_file: Path
) -> Iterator[System]:
    with victoria_up(
        tmp_path_factory.mktemp("data"),
        fake_llm,
        workspace,
        token=TOKEN,
        VICTORIA_API_TOKENS_FILE=str(tokens_file),
        VICTORIA_MAX_TASKS_IN_FLIGHT=str(LIMIT),
    ).start() as system:
        yield system
    for path in system.data_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for token in (TOKEN, ALICE, BOB):
                assert token not in text, f"a token is written in {path}"


def _routes() -> list[tuple[str, str]]:
    app = create_app(GatewayState(Config.from_env({})))
    found: list[tuple[str, str]] = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace("{task_id}", "0123456789abcdef0123456789abcdef")
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, path))
    return found


def test_every_route_but_health_and_ready_answers_401_without_a_token(secured: System) -> None:
    with httpx.Client(base_url=secured.url, timeout=10.0) as anonymous:
        for method, path in _routes():
            response = anonymous.request(method, path)
            if path in ("/health", "/ready", *dashboard.PATHS):  # the page and its files hold no data
                assert response.status_code == 200, (method, path, response.text)
                continue
            assert response.status_code == 401, (method, path, response.status_code, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_token_is_refused_and_says_so(secured: System) -> None:
    response = httpx.get(f"{secured.url}/status", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": "the token is not valid"}


def test_the_api_token_and_each_client_token_are_accepted_as_bearer(secured: System) -> None:
    for token in (TOKEN, ALICE, BOB):
        response = httpx.get(f"{secured.url}/status", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


def test_an_old_client_with_the_token_in_its_url_gets_in_by_basic_auth(secured: System) -> None:
    url = f"http://victoria:{ALICE}@127.0.0.1:{secured.port}"
    response = httpx.post(f"{url}/run", json={"prompt": "Say hello"}, timeout=60.0)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"


def test_curl_with_the_token_in_the_url_gets_in(secured: System) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is on every machine this project supports"
    out = subprocess.run(
        [
            curl,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://victoria:{BOB}@127.0.0.1:{secured.port}/status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout == "200"
    out = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{secured.port}/status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout == "401"


def test_the_event_stream_of_a_task_needs_the_token_too(secured: System) -> None:
    task_id = secured.submit("Say hello")
    with httpx.Client(timeout=10.0) as http:
        refused = http.get(f"{secured.url}/run/{task_id}/events")
        assert refused.status_code == 401
        with http.stream(
            "GET", f"{secured.url}/run/{task_id}/events", headers={"Authorization": f"Bearer {ALICE}"}
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
    assert secured.wait_terminal(task_id)["status"] == "completed"


def test_victoria_run_sends_the_token_from_the_environment(secured: System) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICTORIA_")}
    argv = [sys.executable, "-m", "victoria", "run", "Say hello", "--url", secured.url]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    ran = subprocess.run(
        argv,
        env={**env, "VICTORIA_API_TOKEN": ALICE},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Done: Say hello" in ran.stdout


def test_a_client_removed_from_the_tokens_file_is_refused_within_seconds(
    secured: System, tokens_file: Path
) -> None:
    def answer(token: str) -> int:
        return httpx.get(f"{secured.url}/status", headers={"Authorization": f"Bearer {token}"}).status_code

    assert answer(BOB) == 200
    tokens_file.write_text(f"alice {ALICE}\n", encoding="utf-8")
    secured.wait_for(lambda: answer(BOB) == 401, timeout=10.0, what="bob refused")
    assert answer(ALICE) == 200
    assert answer(TOKEN) == 200
    tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    secured.wait_for(lambda: answer(BOB) == 200, timeout=10.0, what="bob back")


def test_past_the_limit_of_tasks_in_flight_a_new_task_gets_503_with_retry_after(
    secured: System, fake_llm: FakeLLM
) -> None:
    fake_llm.delay = 3.0
    try:
        held = [secured.submit(f"Slow task {n}") for n in range(LIMIT)]
        refused = secured.http.post("/run", params={"async_mode": "true"}, json={"goal": "One too many"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "overloaded"
        assert "VICTORIA_MAX_TASKS_IN_FLIGHT" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        sync = secured.http.post("/run", json={"prompt": "One too many, old style"})
        assert sync.status_code == 503
    finally:
        fake_llm.delay = 0.0
    for task_id in held:
        assert secured.wait_terminal(task_id, timeout=60.0)["status"] == "completed"
    time.sleep(1.0)  # the count is read again at most every half second
    assert secured.submit("Room again")
    metrics = secured.http.get("/metrics").text
    overloaded = [line for line in metrics.splitlines() if line.startswith("victoria_gateway_refused_total")]
    counts = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in overloaded}
    assert counts["overloaded"] >= 2
    assert counts["unauthorized"] >= 1


# --- listening beyond loopback ---------------------------------------------------------------------


def _on_all_addresses(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``victoria COMMAND --host 0.0.0.0 --port <free> ARGS``, with no VICTORIA_ or NATS_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))}
    return run_victoria(command, "--host", "0.0.0.0", "--port", str(free_port()), *args, env=env)


def test_victoria_up_on_all_addresses_without_a_token_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    out = _on_all_addresses("up", "--data-dir", str(tmp_path / "data"))
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "VICTORIA_API_TOKEN" in said and "--insecure" in said, said
    assert not (tmp_path / "data" / "jetstream").exists()  # nothing was started


def test_the_gateway_alone_on_all_addresses_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    out = _on_all_addresses("gateway", "--nats-url", "nats://127.0.0.1:1")
    assert out.returncode == 2
    assert "--insecure" in out.stderr


def test_victoria_up_on_all_addresses_with_insecure_starts_and_warns(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    with victoria_up(
        tmp_path / "data", fake_llm, extra_args=["--host", "0.0.0.0", "--insecure"]
    ).start() as system:
        assert system.http.get("/status").status_code == 200
    assert "no API token (--insecure)" in system.log_path.read_text()
