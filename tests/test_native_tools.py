"""The agent calls tools natively (actors/agent/workflow.py): the tool table goes as the protocol's
``tools``, each call of a reply runs in order and its result goes back as a ``role: "tool"``
message; a server that refuses tools gets the JSON-in-text protocol. First the workflow alone
against a scripted context, then the whole system against the fake model server, speaking Ollama's
and OpenAI's protocols."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages, victoria_up
from victoria.actors.agent import workflow
from victoria.actors.llm_runner import traits
from victoria.events import tools
from victoria.events.contracts import (
    ChatMessage,
    FilesRequest,
    LLMResult,
    McpServerState,
    McpToolInfo,
    Purpose,
    TaskSubmitted,
    ToolCallPart,
    ToolOutcome,
    ToolResult,
)

READ, LIST, WRITE, RUN = (
    tools.READ_FILE.name,
    tools.LIST_DIRECTORY.name,
    tools.WRITE_FILE.name,
    tools.RUN_COMMAND.name,
)


# --- the workflow alone --------------------------------------------------------------------------


@dataclass
class Asked:
    request_id: str
    messages: list[ChatMessage]
    json_mode: bool
    tools: list[dict[str, Any]]


@dataclass
class Scripted:
    """A ``TaskContext`` whose step requests get the next of ``replies`` (an ``LLMResult`` or a
    text); every tool call gets ``<tool> saw <args>``."""

    replies: list[LLMResult | str]
    task: TaskSubmitted = field(
        default_factory=lambda: TaskSubmitted(
            task_id="t1", goal="Do the work", task_type="agent", verbose=True
        )
    )
    delegate_timeout: float = 1.0
    asked: list[Asked] = field(default_factory=list)
    ran: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    table: tools.Table = tools.BUILTINS

    async def stage(
        self, stage: str, *, step: int | None = None, detail: str = "", key: str | None = None
    ) -> None:
        pass

    async def pause(self, seconds: float, *, before: str) -> None:
        pass

    async def llm(
        self,
        request_id: str,
        purpose: Purpose,
        messages: list[ChatMessage],
        *,
        json_mode: bool = False,
        tools: workflow.ToolSpecs = (),
    ) -> LLMResult:
        self.asked.append(Asked(request_id, messages, json_mode, list(tools)))
        if purpose == "understand":
            return LLMResult(
                task_id="t1",
                request_id=request_id,
                ok=True,
                content='{"clear": true, "understanding": "work"}',
            )
        if purpose == "plan":
            return LLMResult(task_id="t1", request_id=request_id, ok=True, content="1. Work.")
        reply = self.replies.pop(0) if self.replies else "All done."
        if isinstance(reply, str):
            return LLMResult(task_id="t1", request_id=request_id, ok=True, content=reply)
        return reply

    async def files(self, call_id: str, request: FilesRequest, *, timeout: float) -> ToolResult:
        raise AssertionError("no files request in an agent run")

    async def tool(self, call_id: str, tool: str, args: dict[str, Any]) -> ToolOutcome:
        self.ran.append((call_id, tool, args))
        return ToolOutcome(
            task_id="t1", call_id=call_id, tool=tool, ok=True, output=f"{tool} saw {json.dumps(args)}"
        )

    async def tool_table(self) -> tools.Table:
        return self.table

    def understood(self, text: str) -> None:
        pass

    def steps(self) -> list[Asked]:
        return [asked for asked in self.asked if asked.request_id.startswith("step-")]


def calls(*parts: tuple[str, dict[str, Any]], content: str = "") -> LLMResult:
    """A reply that calls tools, with the model's ids ``m0``, ``m1``..."""
    made = [ToolCallPart(f"m{n}", name, args) for n, (name, args) in enumerate(parts)]
    return LLMResult(task_id="t1", request_id="x", ok=True, content=content, tool_calls=made)


REFUSED = LLMResult(
    task_id="t1",
    request_id="x",
    ok=False,
    error="model server at http://m does not take tools for m (HTTP 500: tools param requires --jinja flag)",
    error_kind="http_status",
    tools_refused=True,
)


def run(ctx: Scripted) -> workflow.Outcome:
    return asyncio.run(workflow.agent_run(ctx))


def test_the_tool_table_goes_as_function_specs_without_finish() -> None:
    specs = tools.specs()
    assert [spec["function"]["name"] for spec in specs] == [tool.name for tool in tools.TOOLS]
    assert tools.FINISH.name not in json.dumps(specs)
    [read] = [spec["function"] for spec in specs if spec["function"]["name"] == READ]
    assert read["description"] == tools.READ_FILE.description
    assert read["parameters"]["type"] == "object" and read["parameters"]["required"] == ["path"]
    assert read["parameters"]["properties"]["offset"]["type"] == "integer"  # not a union with null
    assert "$ref" not in json.dumps(specs) and "title" not in json.dumps(specs)


def test_several_calls_of_one_reply_run_in_order_and_each_result_answers_its_call() -> None:
    ctx = Scripted(
        [
            calls((WRITE, {"path": "a", "content": "x"}), (READ, {"path": "a"}), content="First this."),
            "It is x.",
        ]
    )
    outcome = run(ctx)
    assert outcome.output == "It is x."
    assert [(call_id, tool) for call_id, tool, _ in ctx.ran] == [("call-1-1", WRITE), ("call-1-2", READ)]
    first, second = ctx.steps()
    assert first.tools == workflow.TOOL_SPECS and not first.json_mode
    called, *results = second.messages[-3:]
    assert called.role == "assistant" and [c.id for c in called.tool_calls] == ["m0", "m1"]
    assert [(m.role, m.tool_call_id, m.name) for m in results] == [
        ("tool", "m0", WRITE),
        ("tool", "m1", READ),
    ]
    assert results[1].content == 'read_file saw {"path": "a"}'
    assert [(s.step, s.tool) for s in outcome.knowledge.verbose_steps] == [
        (1, WRITE),
        (1, READ),
        (2, "finish"),
    ]
    assert outcome.knowledge.verbose_steps[0].thought == "First this."


def test_one_call_of_a_reply_has_the_steps_own_id() -> None:
    ctx = Scripted([calls((LIST, {})), calls((READ, {"path": "b"})), "ok"])
    run(ctx)
    assert [call_id for call_id, _, _ in ctx.ran] == ["call-1", "call-2"]


def test_bad_calls_are_tool_errors_the_model_reads_and_the_task_goes_on() -> None:
    ctx = Scripted(
        [
            calls(
                ("delete_everything", {"path": "/"}),
                (READ, {"path": "a", "limit": "many"}),
                (LIST, {"_raw": "{not json"}),
                (READ, {}),
                (READ, {"path": "fine"}),
            ),
            "Done anyway.",
        ]
    )
    assert run(ctx).output == "Done anyway."
    assert ctx.ran == [("call-1-5", READ, {"path": "fine"})]  # only the good call ran
    errors = [m.content for m in ctx.steps()[1].messages if m.role == "tool"]
    assert errors[0].startswith("error: there is no tool 'delete_everything'") and READ in errors[0]
    assert errors[1].startswith("error: bad arguments for read_file") and "limit" in errors[1]
    assert errors[2].startswith("error: the arguments of list_directory were not a JSON object")
    assert errors[3].startswith("error: bad arguments for read_file") and "path" in errors[3]
    assert errors[4] == 'read_file saw {"path": "fine"}'


CLOCK: Final = McpServerState(
    server="clock",
    instance="v1",
    transport="stdio",
    target="mcp-server-time",
    status="up",
    tools=[
        McpToolInfo(
            name="get_current_time",
            description="The time now in a time zone.",
            input_schema={
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
            read_only=True,
        ),
        McpToolInfo(name="set.alarm", input_schema={"type": "object", "properties": {}}),
    ],
)
NOW: Final = "mcp__clock__get_current_time"


def test_the_tools_of_an_mcp_server_that_is_up_are_offered_and_their_calls_checked_by_its_schema() -> None:
    ctx = Scripted(
        [calls((NOW, {"timezone": "Europe/Moscow"}), (NOW, {"timezone": 3}), (NOW, {})), "It is noon."],
        table=tools.Table.of([CLOCK]),
    )
    assert run(ctx).output == "It is noon."
    offered = [spec["function"]["name"] for spec in ctx.steps()[0].tools]
    assert offered == [*(tool.name for tool in tools.TOOLS), NOW, "mcp__clock__set_alarm"]
    [spec] = [spec["function"] for spec in ctx.steps()[0].tools if spec["function"]["name"] == NOW]
    assert spec["parameters"] == CLOCK.tools[0].input_schema
    assert spec["description"] == "The time now in a time zone."
    assert ctx.ran == [("call-1-1", NOW, {"timezone": "Europe/Moscow"})]
    errors = [m.content for m in ctx.steps()[1].messages if m.role == "tool"][1:]
    assert errors[0].startswith(f"error: bad arguments for {NOW}: timezone: 3 is not of type 'string'")
    assert errors[1].startswith(f"error: bad arguments for {NOW}: 'timezone' is a required property")


def test_an_mcp_tools_effect_and_rerun_come_from_its_annotations() -> None:
    table = tools.Table.of([CLOCK, msgspec.structs.replace(CLOCK, server="down", status="restarting")])
    now, alarm = table.get(NOW), table.get("mcp__clock__set_alarm")
    assert now is not None and (now.effect, now.rerun, now.source) == ("read", True, "mcp:clock")
    assert alarm is not None and (alarm.effect, alarm.rerun, alarm.remote) == ("external", False, "set.alarm")
    idempotent = McpToolInfo(name="put", idempotent=True, destructive=False)
    assert tools.from_mcp("kv", idempotent).rerun and not tools.from_mcp("kv", McpToolInfo(name="rm")).rerun
    assert not [tool for tool in table.tools if tool.server == "down"]  # a server not up offers none


def test_a_model_in_text_is_told_the_mcp_tools_and_its_call_of_one_runs() -> None:
    call = json.dumps({"tool": NOW, "args": {"timezone": "UTC"}})
    ctx = Scripted(
        [REFUSED, call, '{"tool": "finish", "args": {"answer": "UTC noon"}}'], table=tools.Table.of([CLOCK])
    )
    assert run(ctx).output == "UTC noon"
    assert ctx.ran == [("call-1", NOW, {"timezone": "UTC"})]
    system = ctx.steps()[1].messages[0].content
    assert system.startswith(workflow.SYSTEM["step"]) and NOW in system and '"timezone"' in system


def test_a_call_written_as_json_text_runs_as_that_call_and_prose_is_the_answer() -> None:
    ctx = Scripted(['{"tool": "read_file", "args": {"path": "notes.md"}}', 'Use {"tool": "x"} like this.'])
    assert run(ctx).output == 'Use {"tool": "x"} like this.'
    assert ctx.ran == [("call-1", READ, {"path": "notes.md"})]
    last = ctx.steps()[1].messages
    assert last[-2] == ChatMessage("assistant", '{"tool": "read_file", "args": {"path": "notes.md"}}')
    assert last[-1].role == "user" and last[-1].content.startswith("Result of read_file(notes.md):")


def test_finish_called_as_a_tool_ends_the_task_after_the_calls_before_it() -> None:
    ctx = Scripted([calls((LIST, {}), ("finish", {"answer": "Listed."}), (READ, {"path": "never"}))])
    assert run(ctx).output == "Listed."
    assert [tool for _, tool, _ in ctx.ran] == [LIST]


def test_calls_past_the_cap_of_one_reply_are_told_they_did_not_run() -> None:
    many = [(LIST, {"path": str(n)}) for n in range(workflow.MAX_CALLS + 2)]
    ctx = Scripted([calls(*many), "ok"])
    run(ctx)
    assert len(ctx.ran) == workflow.MAX_CALLS
    told = [m for m in ctx.steps()[1].messages if m.role == "tool"]
    assert len(told) == workflow.MAX_CALLS + 2 and told[-1].content.startswith("error: not run")


def test_a_refusal_of_tools_asks_the_same_step_again_in_text_and_keeps_to_text() -> None:
    reply = '{"tool": "list_directory", "args": {"path": "src"}}'
    ctx = Scripted(
        [calls((READ, {"path": "a"})), REFUSED, reply, '{"tool": "finish", "args": {"answer": "fine"}}']
    )
    assert run(ctx).output == "fine"
    asked = [(a.request_id, bool(a.tools), a.json_mode) for a in ctx.steps()]
    assert asked == [
        ("step-1", True, False),
        ("step-2", True, False),
        ("step-2-text", False, True),
        ("step-3", False, True),
    ]
    assert [call_id for call_id, _, _ in ctx.ran] == ["call-1", "call-2"]
    text = ctx.steps()[2].messages
    assert text[0].content == workflow.SYSTEM["step"]  # the JSON-in-text instructions
    assert text[2] == ChatMessage("assistant", '{"tool": "read_file", "args": {"path": "a"}}')
    assert text[3].content.startswith("Result of read_file(a):") and all(not m.tool_calls for m in text)


def test_an_error_about_tools_the_runner_did_not_name_is_a_refusal_too() -> None:
    odd = LLMResult(
        task_id="t1",
        request_id="x",
        ok=False,
        error="HTTP 400: tool_choice is not supported",
        error_kind="http_status",
    )
    assert workflow.refused_tools(odd) and workflow.refused_tools(REFUSED)
    timeout = LLMResult(
        task_id="t1", request_id="x", ok=False, error="no tool answer in 60s", error_kind="timeout"
    )
    assert not workflow.refused_tools(timeout)
    ctx = Scripted([odd, "plain answer"])
    assert run(ctx).output == "plain answer"
    assert [a.request_id for a in ctx.steps()] == ["step-1", "step-1-text"]


def test_the_same_results_make_the_same_requests_on_every_attempt() -> None:
    def script() -> list[LLMResult | str]:
        return [
            calls((READ, {"path": "a"}), (LIST, {})),
            REFUSED,
            '{"tool": "read_file", "args": {"path": "b"}}',
            "end",
        ]

    first, second = Scripted(script()), Scripted(script())
    run(first), run(second)
    ids = [
        (a.request_id, workflow.fingerprint(a.messages, model=None, json_mode=a.json_mode, tools=a.tools))
        for a in first.asked
    ]
    assert ids == [
        (a.request_id, workflow.fingerprint(a.messages, model=None, json_mode=a.json_mode, tools=a.tools))
        for a in second.asked
    ]
    assert first.ran == second.ran


def test_a_fingerprint_without_tools_is_what_it_was_before_tools_were() -> None:
    messages = [ChatMessage("user", "hi")]
    assert workflow.fingerprint(messages, model="m", json_mode=True) == workflow.fingerprint(
        messages, model="m", json_mode=True, tools=()
    )
    assert workflow.fingerprint(messages, model="m", json_mode=False, tools=workflow.TOOL_SPECS) != (
        workflow.fingerprint(messages, model="m", json_mode=False)
    )


def test_llama_servers_refusal_without_jinja_is_a_refusal_of_tools() -> None:
    assert traits.refuses_tools(
        '{"error":{"code":500,"message":"tools param requires --jinja flag","type":"server_error"}}'
    )


# --- the whole system ----------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "alpha.txt").write_text("alpha contents\n")
    return path


def events(system: System, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>") if m["type"] == kind]


def step_bodies(fake: FakeLLM) -> list[dict[str, Any]]:
    return [body for body in fake.requests if "carrying out a plan" in json.dumps(body["messages"][0])]


@pytest.mark.e2e
@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_the_model_calls_tools_natively_in_order_and_reads_each_result_for_its_call(
    tmp_path: Path, fake: FakeLLM, workspace: Path, api: str
) -> None:
    fake.mode = "tool_calls"
    fake.script = [
        [
            {"name": WRITE, "arguments": {"path": "beta.txt", "content": "beta contents\n"}},
            {"name": READ, "arguments": {"path": "beta.txt"}},
            {"name": READ, "arguments": {"path": "alpha.txt"}},
        ],
        "Both files say their contents.",
    ]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_LLM_API=api).start() as system:
        task_id = system.submit("Write beta.txt, then read both", task_type="agent")
        end = system.wait_terminal(task_id, timeout=60)
        assert (end["status"], end["output"]) == ("completed", "Both files say their contents."), end
        intents = events(system, task_id, "tool_intent")
        assert [(i["call_id"], i["tool"]) for i in intents] == [
            ("call-1-1", WRITE),
            ("call-1-2", READ),
            ("call-1-3", READ),
        ]
        first, second = step_bodies(fake)
        assert first["tools"] == workflow.TOOL_SPECS and second["tools"] == workflow.TOOL_SPECS
        assert "JSON" not in json.dumps(first["messages"][0])  # no JSON-in-text instructions
        ids = (
            ["call-fake-0", "call-fake-1", "call-fake-2"]
            if api == "openai"
            else [f"step-1-call_{n}" for n in range(3)]
        )
        told = [m for m in second["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in told] == ids
        assert "beta contents" in told[1]["content"] and "alpha contents" in told[2]["content"]
        [called] = [m for m in second["messages"] if m.get("tool_calls")]
        assert len(called["tool_calls"]) == 3


@pytest.mark.e2e
def test_a_bad_native_call_is_a_tool_error_the_model_reads(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "tool_calls"
    fake.script = [
        [
            {"name": "summon", "arguments": {}},
            {"name": READ, "arguments": "{path: alpha.txt"},  # not JSON: the runner keeps it raw
            {"name": READ, "arguments": {"path": "../outside.txt"}},
        ],
        "I could not do it.",
    ]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_LLM_API="openai").start() as system:
        task_id = system.submit("Try some calls", task_type="agent")
        end = system.wait_terminal(task_id, timeout=60)
        assert (end["status"], end["output"]) == ("completed", "I could not do it."), end
        told = [m["content"] for m in step_bodies(fake)[-1]["messages"] if m["role"] == "tool"]
        assert told[0].startswith("error: there is no tool 'summon'")
        assert told[1].startswith("error: the arguments of read_file were not a JSON object")
        assert told[2].startswith("error:") and "outside" in told[2].lower()
        assert [i["call_id"] for i in events(system, task_id, "tool_intent")] == ["call-1-3"]


@pytest.mark.e2e
@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_model_without_tools_falls_back_to_json_in_text_and_the_task_completes(
    tmp_path: Path, fake: FakeLLM, workspace: Path, api: str
) -> None:
    fake.mode = "no_tools"
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_LLM_API=api).start() as system:
        task_id = system.submit("Write a haiku about NATS", task_type="agent")
        end = system.wait_terminal(task_id, timeout=60)
        assert (end["status"], end["output"]) == ("completed", "Done: Write a haiku about NATS"), end
        asked = [
            (r["request_id"], bool(r["tools"]), r["json_mode"])
            for r in events(system, task_id, "llm_requested")
        ]
        assert asked[-2:] == [("step-1", True, False), ("step-1-text", False, True)]
        [refused] = [r for r in events(system, task_id, "llm_result") if r["request_id"] == "step-1"]
        assert refused["tools_refused"] is True


@pytest.mark.e2e
def test_llama_server_without_jinja_falls_back_and_the_tools_still_work_in_text(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.tools_refusal = "tools param requires --jinja flag"
    fake.mode, fake.steps = "steps", [{"tool": READ, "args": {"path": "alpha.txt"}}]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_LLM_API="openai").start() as system:
        task_id = system.submit("Read alpha.txt", task_type="agent")
        end = system.wait_terminal(task_id, timeout=60)
        assert end["status"] == "completed", end
        ids = [r["request_id"] for r in events(system, task_id, "llm_requested")]
        assert ids[-3:] == ["step-1", "step-1-text", "step-2"]
        assert "Result of read_file(alpha.txt):\\nalpha contents" in fake.prompts_text()
        assert [r for r in fake.requests if r.get("tools")] == fake.requests[2:3]  # tools asked for once


@pytest.mark.e2e
def test_stream_sends_the_words_of_a_native_answer_as_they_are_written(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    answer = "The workspace holds one file, alpha.txt, and it says alpha contents."
    fake.mode, fake.chunk_delay = "tool_calls", 0.05
    fake.script = [[{"name": LIST, "arguments": {"path": "."}}], answer]
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        lines: list[dict[str, Any]] = []
        with system.http.stream(
            "POST", "/stream", json={"goal": "What is in the workspace?", "task_type": "agent"}
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(json.loads(line[6:]))
        chunks = [line["content"] for line in lines if line["type"] == "chunk"]
        assert len(chunks) > 1 and "".join(chunks) == answer
        assert (lines[-1]["type"], lines[-1]["output"]) == ("end", answer)


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"), reason="no bubblewrap")
def test_killing_victoria_mid_task_resumes_the_native_loop_without_repeating_a_call(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "tool_calls"
    fake.script = [
        [
            {"name": RUN, "arguments": {"command": "echo one >> runs.txt"}},
            {"name": RUN, "arguments": {"command": "sleep 3; echo two >> runs.txt"}},
        ],
        [{"name": RUN, "arguments": {"command": "echo three >> runs.txt"}}],
        "Ran all three.",
    ]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_ACK_WAIT="4").start() as system:
        task_id = system.submit("Run them", task_type="agent")
        system.wait_for(
            lambda: any(c["call_id"] == "call-1-2" for c in events(system, task_id, "tool_claim")),
            what="the second call claimed",
        )
        os.kill(system.pid_of("victoria"), signal.SIGKILL)
        end = system.wait_terminal(task_id, timeout=90)
        assert (end["status"], end["output"]) == ("completed", "Ran all three."), end
        assert (workspace / "runs.txt").read_text().split() == ["one", "two", "three"]
        intents = [i["call_id"] for i in events(system, task_id, "tool_intent")]
        assert intents == ["call-1-1", "call-1-2", "call-2"]
        assert [o["ok"] for o in events(system, task_id, "tool_outcome")] == [True, True, True]
        assert len(step_bodies(fake)) == 3  # the resumed attempt took step 1 from the history
