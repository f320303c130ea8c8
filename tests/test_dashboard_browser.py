"""The dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser is
downloaded), against ``victoria up`` and the fake model server writing its words slowly.

Every test also checks that the page logged no error and sent no request beyond the gateway's
origin. ``VICTORIA_SCREENSHOTS=docs/images`` saves the README's screenshots there.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakellm import FakeLLM
from tests.system import System, free_port, victoria_up

# A slow model server: the words of an answer arrive one by one, visibly.
pytestmark = [pytest.mark.e2e, pytest.mark.fake_llm(delay=0.3, chunk_delay=0.12)]

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "dashboard-test-token-0123456789"
TRACE_URL = "http://127.0.0.1:16686/trace/{trace_id}"
LIVE = 1000  # ms: a task submitted after the page opened is in the list within this

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.fail("the dashboard tests need Playwright: pip install -e '.[test]'", pytrace=False)


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    return start_system(
        "dashboard",
        VICTORIA_TRACE_URL=TRACE_URL,
        VICTORIA_RESTART_BACKOFF="3",  # a killed actor stays down long enough to be seen
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard tests need Chromium at {CHROMIUM}: apt-get install chromium (scripts/test "
            "installs it on Debian and Ubuntu when run as root)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page, with every console error, page error and request URL it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def check(self, origin: str, *, allowed_errors: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.errors if not any(allowed in e for allowed in allowed_errors)]
        assert errors == [], errors
        assert self.requests, "the page made no request"
        strangers = [url for url in self.requests if not url.startswith(origin + "/")]
        assert strangers == [], strangers

    def open_task_list(self, url: str) -> Page:
        """The page, at the dashboard ``url``, once its list of tasks is there."""
        self.page.goto(url)
        self.page.wait_for_selector("#task-rows", state="attached")
        return self.page


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield Watched(page)
    context.close()


def until(page: Page, predicate: str, timeout: float = 15.0) -> None:
    """Wait until a JavaScript expression is true in the page. Not ``wait_for_function``: that
    evaluates strings in the page, which its Content-Security-Policy (no eval) refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({predicate})"):
        assert time.monotonic() < deadline, f"not true within {timeout}s: {predicate}"
        time.sleep(0.05)


def _screenshot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("VICTORIA_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=False)


def test_a_task_submitted_after_the_page_opened_appears_at_once_and_completes_without_reload(
    system: System, watched: Watched, tmp_path: Path
) -> None:
    page = watched.open_task_list(f"{system.url}/")
    expect(page.locator("#connection")).to_have_text("")
    time.sleep(0.3)  # the list's stream is open
    goal = "Напиши хайку про JetStream"
    task_id = system.submit(goal)
    row = f"tr[data-task='{task_id}']"
    page.wait_for_selector(row, timeout=LIVE)
    assert page.inner_text(f"{row} td.goal") == goal
    page.wait_for_selector(f"{row}[data-status='completed']")
    assert page.inner_text(f"{row} td:nth-child(6)") == "llama3.2"
    for goal in ("Write a haiku about NATS", "Выведи список файлов в корне проекта"):
        system.submit(goal)
    page.wait_for_selector("#task-rows tr:nth-child(3)")
    page.fill("#filter-q", task_id[:12])
    expect(page.locator("#task-rows tr")).to_have_count(1)
    page.fill("#filter-q", "")
    page.select_option("#filter-status", "completed")
    page.wait_for_selector(f"{row}")
    page.select_option("#filter-status", "")
    until(page, "document.querySelectorAll('#task-rows tr[data-status=completed]').length >= 3")
    _screenshot(page, "dashboard-list.png", tmp_path)
    watched.check(system.url)


def test_a_click_opens_the_tasks_own_page_with_its_stages_and_streamed_model_calls(
    system: System, watched: Watched, tmp_path: Path
) -> None:
    page = watched.open_task_list(f"{system.url}/")
    time.sleep(0.3)
    task_id = system.submit("Write a haiku about NATS")
    page.click(f"tr[data-task='{task_id}'] td.goal")
    page.wait_for_url(f"**/#/task/{task_id}")
    # the model's words appear while the task still runs
    until(
        page,
        """document.querySelector('#task-status .badge')?.textContent === 'running'
           && [...document.querySelectorAll('#timeline li.call pre.words')].some((p) => p.textContent.length > 0)""",
    )
    page.wait_for_selector("#task-output")
    assert "Done: Write a haiku about NATS" in page.inner_text("#task-output")
    stages = page.locator("#timeline li.stage").all_inner_texts()
    assert any("understanding" in s for s in stages) and any("planning" in s for s in stages)
    assert (
        page.locator("#timeline li.attempt").count() == 1 and page.locator("#timeline li.crash").count() == 0
    )
    calls = page.locator("#timeline li.call").all_inner_texts()
    assert len(calls) >= 3 and all("llama3.2" in call and "tokens" in call for call in calls), calls
    assert page.locator("#timeline-strip .segment").count() >= 3
    trace = page.get_attribute("#trace-link", "href") or ""
    assert trace.startswith("http://127.0.0.1:16686/trace/") and len(trace) > len(TRACE_URL)
    _screenshot(page, "dashboard-task.png", tmp_path)
    page.reload()  # its own URL opens it again
    page.wait_for_selector("#task-output")
    assert page.locator("#timeline li.call").count() == len(calls)
    watched.check(system.url)


def test_a_running_task_can_be_cancelled_from_the_list(system: System, watched: Watched) -> None:
    page = watched.open_task_list(f"{system.url}/")
    page.fill("#goal", "Write a long story about NATS")
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-form .muted")).to_contain_text("submitted")
    row = page.locator("#task-rows tr[data-status='running'], #task-rows tr[data-status='queued']").first
    row.locator("button.cancel").click()
    page.wait_for_selector("#task-rows tr[data-status='cancelled']")
    watched.check(system.url)


def test_a_killed_actor_shows_as_down_at_once_with_its_reason(system: System, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{system.url}/#/services")
    veronica = page.locator("#service-rows tr[data-service^='veronica/']")
    veronica.first.wait_for()
    page.wait_for_selector("#service-rows tr[data-service^='veronica/'][data-status='up']")
    pid = system.pid_of("veronica")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    page.wait_for_selector("#service-rows tr[data-service^='veronica/'][data-status='down']", timeout=5000)
    assert time.monotonic() - killed_at < 3.0
    reason = page.inner_text("#service-rows tr[data-service^='veronica/'] td.reason")
    assert reason.strip(), "no reason shown"
    assert "SIGKILL" in reason or "signal" in reason or "exit" in reason, reason
    page.wait_for_selector("#service-rows tr[data-service^='veronica/'][data-status='up']", timeout=20_000)
    watched.check(system.url)


# --- with a token, and behind a path prefix -------------------------------------------------------


@pytest.fixture(scope="module")
def secured(start_system: Callable[..., System]) -> System:
    return start_system("dashboard-token", token=TOKEN)


def test_the_page_asks_for_the_token_once_and_sends_it_only_in_a_header(
    secured: System, watched: Watched
) -> None:
    page = watched.page
    sent: list[dict[str, str]] = []
    page.on("request", lambda request: sent.append(request.headers))
    page.goto(f"{secured.url}/")
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#token-dialog[open]", state="detached")
    goal = "Напиши хайку про <b>NATS</b> <img src=x id=injected>"
    task_id = secured.submit(goal)
    page.wait_for_selector(f"tr[data-task='{task_id}'][data-status='completed']")
    assert page.inner_text(f"tr[data-task='{task_id}'] td.goal") == goal  # text, never HTML
    assert page.query_selector("#injected") is None
    page.reload()  # kept for the session: not asked again
    page.wait_for_selector(f"tr[data-task='{task_id}']")
    assert page.locator("#token-dialog[open]").count() == 0
    assert any(headers.get("authorization") == f"Bearer {TOKEN}" for headers in sent)
    assert not any(TOKEN in url for url in watched.requests)
    # the one refusal that made the page ask is the only error the browser reports
    watched.check(secured.url, allowed_errors=("401 (Unauthorized)",))


class PrefixProxy:
    """A reverse proxy that serves the gateway under ``/victoria/`` and strips that prefix, as a
    front end such as nginx would: streaming answers stream through."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/victoria/{rest:path}", self.forward, methods=["GET", "POST"])]),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="off",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def forward(self, request: Request) -> Response:
        client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = client.build_request(
            request.method,
            f"{self.target}/{request.path_params['rest']}",
            params=request.query_params,
            headers=headers,
            content=await request.body(),
        )
        answer = await client.send(upstream, stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()
                await client.aclose()

        passed = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding")
        }
        return StreamingResponse(body(), status_code=answer.status_code, headers=passed)

    def __enter__(self) -> PrefixProxy:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_the_page_works_behind_a_path_prefix(system: System, watched: Watched) -> None:
    page = watched.page
    with PrefixProxy(system.url) as proxy:
        page.goto(f"{proxy.url}/victoria/")
        page.wait_for_selector("#task-rows", state="attached")
        page.fill("#goal", "Что ты умеешь? Ответь коротко.")
        page.click("#submit-form button[type=submit]")
        row = page.locator("#task-rows tr", has_text="Что ты умеешь?").first
        row.wait_for()
        page.wait_for_selector("#task-rows tr[data-status='completed']")
        row.locator("td.goal").click()
        page.wait_for_url("**/victoria/#/task/*")
        page.wait_for_selector("#task-output")
        page.close()  # ends the page's streams before the proxy stops
        watched.check(f"{proxy.url}/victoria")


def test_a_task_whose_agent_was_killed_shows_both_attempts_and_the_crash_between(
    system: System, watched: Watched
) -> None:
    task_id = system.submit("Write a haiku about NATS after a crash")
    system.wait_for(lambda: system.status(task_id)["stage"] == "planning", what="the task planning")
    os.kill(system.pid_of("victoria"), signal.SIGKILL)
    assert system.wait_terminal(task_id, timeout=40.0)["status"] == "completed"
    page = watched.page
    page.goto(f"{system.url}/#/task/{task_id}")
    page.wait_for_selector("#task-output")
    expect(page.locator("#timeline li.attempt")).to_have_count(2)
    expect(page.locator("#timeline li.crash")).to_have_count(1)
    assert "attempt 1 ended without a result" in page.inner_text("#timeline li.crash")
    assert page.locator("#timeline-strip .segment.crashed").count() == 1
    watched.check(system.url)


# --- tool calls, and a person's approval ------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(
    not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"), reason="no bubblewrap"
)


def _command(text: str) -> dict[str, Any]:
    return {"tool": "run_command", "args": {"command": text}}


@pytest.fixture
def tool_workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "notes.txt").write_text("first line\n<img src=x id=injected> second line\n", encoding="utf-8")
    return path


@needs_bwrap
def test_the_task_page_shows_each_tool_call_with_its_arguments_outcome_and_duration(
    tmp_path: Path, tool_workspace: Path, watched: Watched
) -> None:
    with FakeLLM(delay=0.05) as fake:
        fake.mode = "steps"
        fake.steps = [
            {"tool": "read_file", "args": {"path": "notes.txt"}},
            _command("echo hello from the sandbox; exit 3"),
            {"tool": "read_file", "args": {"path": "../outside.txt"}},
        ]
        with victoria_up(tmp_path / "data", fake, tool_workspace).start() as system:
            task_id = system.submit("Read the notes and run a command", task_type="agent")
            assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
            page = watched.page
            page.goto(f"{system.url}/#/task/{task_id}")
            page.wait_for_selector("#task-output")
            rows = page.locator("#tool-rows tr")
            expect(rows).to_have_count(3)
            read, run, outside = (rows.nth(n) for n in range(3))
            assert read.get_attribute("data-state") == "ok"
            assert read.locator("td.tool strong").inner_text() == "read_file"
            assert "path: notes.txt" in read.locator("td.args").inner_text()
            assert "<img src=x id=injected>" in read.locator("td.outcome pre").inner_text()  # text
            assert page.query_selector("#injected") is None
            assert read.locator("td.approval").inner_text() == "not needed"
            assert run.get_attribute("data-state") == "failed"
            assert run.locator("td.tool .effect").inner_text() == "execute"
            assert "command: echo hello from the sandbox; exit 3" in run.locator("td.args").inner_text()
            assert "exit 3" in run.locator("td.outcome").inner_text()
            assert "hello from the sandbox" in run.locator("td.outcome pre").inner_text()
            assert outside.get_attribute("data-state") == "failed"
            assert "outside" in outside.locator("td.outcome .tool-error").inner_text().lower()
            for n in range(3):
                assert re.fullmatch(r"\d+ ms|\d+\.\d s", rows.nth(n).locator("td.duration").inner_text())
            timeline = page.locator("#timeline li.tool").all_inner_texts()
            assert len(timeline) == 3 and "(exit 3)" in timeline[1], timeline
            page.locator("#tool-rows").scroll_into_view_if_needed()
            _screenshot(page, "dashboard-tools.png", tmp_path)
            watched.check(system.url)


def _decision_of(page: Page, call: str) -> str:
    return page.inner_text(f"#tool-rows tr[data-call='{call}'] td.approval")


@needs_bwrap
def test_a_call_waiting_for_approval_is_approved_or_denied_with_a_reason_from_the_page(
    tmp_path: Path, tool_workspace: Path, watched: Watched
) -> None:
    with FakeLLM(delay=0.05) as fake:
        fake.mode = "steps"
        fake.steps = [_command("echo approved >> runs.txt"), _command("echo denied >> runs.txt")]
        up = victoria_up(tmp_path / "data", fake, tool_workspace, VICTORIA_APPROVAL="execute")
        with up.start() as system:
            task_id = system.submit("Run two commands", task_type="agent")
            page = watched.page
            page.goto(f"{system.url}/#/task/{task_id}")
            waiting = "#tool-rows tr[data-state='waiting']"
            page.wait_for_selector(f"{waiting} button.approve", timeout=30_000)
            first = page.get_attribute(waiting, "data-call") or ""
            assert "echo approved" in page.inner_text(f"{waiting} td.args")
            expect(page.locator("#task-facts")).to_contain_text("waiting_for_approval")
            [pending] = system.status(task_id)["pending_approvals"]
            assert pending["id"] == first
            page.click(f"{waiting} button.approve")
            page.wait_for_selector(f"#tool-rows tr[data-call='{first}'][data-state='ok']", timeout=30_000)
            assert _decision_of(page, first).startswith("approved by ") and "null" not in _decision_of(
                page, first
            )
            page.wait_for_selector(f"{waiting} button.deny", timeout=30_000)
            second = page.get_attribute(waiting, "data-call") or ""
            assert second != first
            page.click(f"{waiting} button.deny")
            page.fill(f"#tool-rows tr[data-call='{second}'] input.reason", "not today")
            page.locator("#tool-rows").scroll_into_view_if_needed()
            _screenshot(page, "dashboard-approval.png", tmp_path)
            page.click(f"#tool-rows tr[data-call='{second}'] button.deny-send")
            page.wait_for_selector(f"#tool-rows tr[data-call='{second}'][data-state='denied']")
            assert "denied by " in _decision_of(page, second) and "not today" in _decision_of(page, second)
            assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
            assert (tool_workspace / "runs.txt").read_text().split() == ["approved"]
            assert "not today" in fake.prompts_text()
            again = system.http.post(f"/run/{task_id}/approvals/{first}", json={"decision": "deny"})
            assert again.status_code == 409 and again.json()["decision"] == "approve"
            expect(page.locator("#tool-rows button.approve")).to_have_count(0)
            watched.check(system.url)
