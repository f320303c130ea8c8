"""What Victoria does with one task. Deterministic given the results it gets back from ``ctx``.

Every side effect goes through the ``TaskContext``: a stage, a model call, a file request. The
context takes each one from the task's history when the history already holds it, so running this
code again after a crash continues after the last finished step and repeats nothing.

Replay safety: a stored model request carries a hash of what it asked (``fingerprint``) and
``VERSION``. When a resumed attempt would ask something else under the same id (the code or the
prompts changed between attempts), the context does not take the old answer: it asks again under
the next free id (``plan-v2``), as a new question, and logs a warning. A file request whose stored
result was for another path is made again the same way. Bump ``VERSION`` when the workflow's
questions or their order change, so that the warning says which versions met.

How the model calls tools: natively first. A step request carries the tool table as the protocol's
``tools`` (``tools.specs()``) and no JSON mode; each tool call of a reply runs in order, and its
result goes back as a ``role: "tool"`` message for the model's id of that call; a reply without a
tool call is the final answer. Our own call ids stay ours: ``call-<step>`` for a reply's one call,
``call-<step>-<n>`` for the n-th of several. A reply that is a tool call written as JSON text (what
a model writes when its chat template fails) runs as that call, its result given back as in the
JSON-in-text protocol. When a step request's result says the server or the model does not take
tools (``tools_refused``, or its error speaks of tools), the task asks that step again under
``step-<n>-text`` in the JSON-in-text protocol over the same tool table, and keeps to it for the
rest of its steps, with the calls made so far in its transcript. Every switch follows from stored
results, so a resumed attempt takes the same path and asks the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgspec

from victoria.actors.agent import capabilities, classifier
from victoria.actors.agent.replies import (
    Action,
    Finish,
    ToolCall,
    Understanding,
    native_call,
    parse_action,
    parse_native,
    parse_understanding,
)
from victoria.errors import TaskAborted
from victoria.events import tools
from victoria.events.contracts import (
    ChatMessage,
    FilesRequest,
    Knowledge,
    LLMResult,
    Purpose,
    TaskSubmitted,
    ToolCallPart,
    ToolOutcome,
    ToolResult,
    VerboseStep,
)

VERSION: Final = 6
"""The workflow's version, stored with each model request. 1: before requests carried it. 3: the
understand step answers in JSON and may ask back; earlier turns and images are in the prompts. 4: the
task's expert's prompt leads the system prompts. 5: the steps' tool calls are durable calls of
Veronica's (``tool_intent``, ``tool_outcome``), ``run_command`` among the tools. 6: the steps call
tools natively (the tool table as the request's ``tools``, results as ``role: "tool"`` messages, a
reply without a call the answer; ``call-<step>-<n>`` for several calls of a reply), falling back to
the JSON-in-text protocol under ``step-<n>-text`` when the server refuses tools."""


ToolSpecs = Sequence[dict[str, Any]]
"""Tool definitions as a request sends them (``LLMRequested.tools``): OpenAI function specs."""


def tool_fingerprint(tool: str, args: dict[str, Any]) -> str:
    """What a tool call does, as 32 hex digits: the same on every attempt for the same call."""
    return hashlib.blake2b(msgspec.json.encode([tool, args], order="sorted"), digest_size=16).hexdigest()


def fingerprint(
    messages: list[ChatMessage],
    *,
    model: str | None,
    json_mode: bool,
    tools: ToolSpecs = (),
) -> str:
    """What a model request asks, as 32 hex digits: the same on every attempt for the same question.
    The tools sent are part of it; a request without tools hashes as it did before they were."""
    parts: list[Any] = [model, json_mode, messages]
    if tools:
        parts.append(list(tools))
    asked = msgspec.json.encode(parts)
    return hashlib.blake2b(asked, digest_size=16).hexdigest()


class TaskContext(Protocol):
    task: TaskSubmitted
    delegate_timeout: float

    async def stage(
        self, stage: str, *, step: int | None = None, detail: str = "", key: str | None = None
    ) -> None: ...

    async def pause(self, seconds: float, *, before: str) -> None:
        """Sleep, unless the history shows that the model request ``before`` was already made."""
        ...

    async def llm(
        self,
        request_id: str,
        purpose: Purpose,
        messages: list[ChatMessage],
        *,
        json_mode: bool = False,
        tools: ToolSpecs = (),
    ) -> LLMResult:
        """One model answer, from the history when it holds the same question. ``tools``: the tool
        table sent as the protocol's own (``LLMRequested.tools``); part of the fingerprint."""
        ...

    async def files(self, call_id: str, request: FilesRequest, *, timeout: float) -> ToolResult: ...

    async def tool(self, call_id: str, tool: str, args: dict[str, Any]) -> ToolOutcome:
        """One tool call, durably: at most once for a call that must not run again."""
        ...

    async def tool_table(self) -> tools.Table:
        """The tools the model may call now: the table's own, and those of the MCP servers that
        are up (``reads.mcp_servers``)."""
        ...

    def understood(self, text: str) -> None:
        """What the goal was understood to ask: the next model request stored carries it, for the
        old clients' ``/stream`` (their "Understood" step)."""
        ...


def _step_calls() -> str:
    """The step prompt's examples, one reply per tool of the table and the final answer."""
    calls = [
        json.dumps({"tool": tool.name, "args": tool.example}, ensure_ascii=False)
        for tool in (*tools.TOOLS, tools.FINISH)
    ]
    return ", ".join(calls[:-1]) + ", or " + calls[-1]


SYSTEM: Final[dict[str, str]] = {
    "understand": (
        "You are Victoria, an agent that carries out a user's goal. Read the goal (and the conversation "
        'before it, if any) and reply with one JSON object: {"clear": true, "understanding": "<in one or '
        'two sentences, what the user wants and what a good answer must contain>"}. Only when the goal '
        "is too unclear to act on even with the conversation so far, reply instead "
        '{"clear": false, "questions": ["<what you need to ask the user>"], "suggested_restatement": '
        '"<the goal as you would restate it>"}. Write in the user\'s language.'
    ),
    "plan": (
        "You are Victoria. Write a short numbered plan (at most {max_steps} steps) to reach the goal. "
        f"Tools: {', '.join(tool.signature() for tool in (*tools.TOOLS, tools.FINISH))}. "
        "Answer in the user's language."
    ),
    "step": (
        "You are Victoria, carrying out a plan. Reply with exactly one JSON object and nothing else: "
        f"{_step_calls()}. "
        "Paths are relative to the workspace. Finish as soon as you can answer. "
        "Write the answer in the user's language."
    ),
    "step_native": (
        "You are Victoria, carrying out a plan. Call the tools you need; you may call several at once, "
        "and they run in order. Each result comes back to you. Paths are relative to the workspace. "
        "As soon as you can answer, reply with the final answer for the user as plain text, calling no "
        "tool. Write the answer in the user's language."
    ),
}
"""The system prompts: ``step`` for the JSON-in-text protocol, ``step_native`` when the tools go
as the protocol's own."""

TOOL_SPECS: Final = tools.specs()
"""The tool table as a native step request sends it."""
MAX_CALLS: Final = 16  # tool calls run from one reply; the model is told of those left out


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What a task came to: its output and what it knows beyond it."""

    output: str
    knowledge: Knowledge


def route_of(task: TaskSubmitted) -> classifier.Route:
    if task.task_type == "capabilities":
        return classifier.Route("capabilities")
    if task.task_type == "plan":
        return classifier.Route("plan")
    if task.task_type == "files":
        return classifier.files_route(task.goal)
    if task.task_type == "agent":
        return classifier.Route("agent")
    return classifier.classify(task.goal)


async def run(ctx: TaskContext) -> Outcome:
    task = ctx.task
    route = route_of(task)
    if route.kind == "capabilities":
        await ctx.stage("answering", detail="from the capability registry")
        answer = capabilities.answer(classifier.language(task.goal))
        return Outcome(answer, Knowledge(routed_to="capabilities", source="capability_registry"))
    if route.kind == "plan":
        return await plan_only(ctx)
    if route.kind == "files":
        await ctx.stage("delegating", detail=f"veronica: {route.op} {route.path}")
        result = await ctx.files(
            "delegate",
            FilesRequest(
                op=route.op,
                path=route.path,
                limit=route.limit,
                goal=task.goal,
                task_id=task.task_id,
                workspace=task.workspace,
            ),
            timeout=ctx.delegate_timeout,
        )
        if result.ok:
            return Outcome(
                result.output, Knowledge(routed_to="veronica", delegated_to="veronica", source="workspace")
            )
        await ctx.stage("fallback", detail=f"delegation failed: {result.error}")
    return await agent_run(ctx)


def _context_block(task: TaskSubmitted) -> str:
    if task.project_context is None:
        return ""
    text = msgspec.json.encode(task.project_context).decode()
    return f"\n\nProject context (JSON): {text[:4000]}"


def _system(task: TaskSubmitted, instructions: str) -> str:
    """The system prompt of a model call: the task's expert's own prompt leads, then ours."""
    if not task.expert_prompt.strip():
        return instructions
    return f"{task.expert_prompt.strip()}\n\n{instructions}"


def _conversation(task: TaskSubmitted) -> list[ChatMessage]:
    """The earlier turns of the conversation, as chat messages before the goal."""
    messages: list[ChatMessage] = []
    for turn in task.chat_history:
        if turn.user:
            messages.append(ChatMessage("user", turn.user))
        if turn.assistant:
            messages.append(ChatMessage("assistant", turn.assistant))
    return messages


class _Models:
    """The model that answered last: ``knowledge.model_used``."""

    def __init__(self) -> None:
        self.used: str | None = None

    async def ask(
        self,
        ctx: TaskContext,
        purpose: Purpose,
        request_id: str,
        messages: list[ChatMessage],
        *,
        json_mode: bool = False,
    ) -> str:
        return (await self.result(ctx, purpose, request_id, messages, json_mode=json_mode)).content

    async def result(
        self,
        ctx: TaskContext,
        purpose: Purpose,
        request_id: str,
        messages: list[ChatMessage],
        *,
        json_mode: bool = False,
        tools: ToolSpecs = (),
    ) -> LLMResult:
        result = await _ask(ctx, purpose, request_id, messages, json_mode=json_mode, tools=tools)
        self.used = result.model or self.used
        return result


async def _understand_and_plan(ctx: TaskContext, models: _Models) -> tuple[str, Understanding, str | None]:
    """(goal with its context, what is asked, the plan; None when the model asks back first)."""
    task = ctx.task
    goal = task.goal + _context_block(task)
    earlier = _conversation(task)
    await ctx.stage("understanding")
    understanding = parse_understanding(
        await models.ask(
            ctx,
            "understand",
            "understand",
            [
                ChatMessage("system", _system(task, SYSTEM["understand"])),
                *earlier,
                ChatMessage("user", goal, task.images),
            ],
            json_mode=True,
        )
    )
    if understanding.unclear:
        return goal, understanding, None
    ctx.understood(understanding.text)
    await ctx.stage("planning")
    plan = await models.ask(
        ctx,
        "plan",
        "plan",
        [
            ChatMessage("system", _system(task, SYSTEM["plan"].format(max_steps=task.max_steps))),
            *earlier,
            ChatMessage("user", f"Goal: {goal}\n\nWhat is asked: {understanding.text}", task.images),
        ],
    )
    return goal, understanding, plan


def _asking_back(
    task: TaskSubmitted, understanding: Understanding, models: _Models, routed_to: str
) -> Outcome:
    lead = (
        "Уточните, пожалуйста:"
        if classifier.language(task.goal) == "ru"
        else "Before I start, please tell me:"
    )
    output = lead + "\n" + "\n".join(f"{n}. {q}" for n, q in enumerate(understanding.questions, 1))
    knowledge = Knowledge(
        routed_to=routed_to,
        source="model",
        model_used=models.used,
        clarification_questions=understanding.questions,
        suggested_restatement=understanding.restatement,
    )
    return Outcome(output, knowledge)


async def plan_only(ctx: TaskContext) -> Outcome:
    """Understand and plan, no steps: the plan is the answer (``POST /plan``)."""
    models = _Models()
    _, understanding, plan = await _understand_and_plan(ctx, models)
    if plan is None:
        return _asking_back(ctx.task, understanding, models, "plan")
    answer = plan.strip() or understanding.text
    return Outcome(answer, Knowledge(routed_to="plan", source="model", model_used=models.used))


async def agent_run(ctx: TaskContext) -> Outcome:
    task = ctx.task
    models = _Models()
    goal, understanding, plan = await _understand_and_plan(ctx, models)
    if plan is None:
        return _asking_back(task, understanding, models, "agent_run")
    steps = _Steps(ctx, models, ChatMessage("user", f"Goal: {goal}\n\nPlan:\n{plan}", task.images))

    def done(answer: str) -> Outcome:
        knowledge = Knowledge(
            routed_to="agent_run",
            source="model",
            model_used=models.used,
            verbose_steps=steps.verbose if task.verbose else [],
        )
        return Outcome(answer, knowledge)

    for step in range(1, task.max_steps + 1):
        await ctx.stage("step", step=step)
        finish = await steps.take(step)
        if finish is not None:
            return done(finish.answer.strip() or best_effort(understanding.text, plan, steps.observations))
    return done(best_effort(understanding.text, plan, steps.observations))


class _Steps:
    """The steps of one agent run: the transcript the model is shown, in the protocol the task
    calls tools in (native until a result says the tools were refused), and what the calls found."""

    def __init__(self, ctx: TaskContext, models: _Models, opening: ChatMessage) -> None:
        self.ctx = ctx
        self.models = models
        self.opening = opening
        self.native = True
        self.transcript = [ChatMessage("system", _system(ctx.task, SYSTEM["step_native"])), opening]
        self.made: list[tuple[str, dict[str, Any], str]] = []
        """Every call made, in order: tool, arguments, what the model was told of it."""
        self.observations: list[str] = []
        self.verbose: list[VerboseStep] = []
        self.table = tools.BUILTINS

    async def take(self, step: int) -> Finish | None:
        """One step: the final answer, or None when the model called tools (their results are in
        the transcript). The tools are the table of this moment (an MCP server may come or go)."""
        request_id = f"step-{step}"
        self.table = await self.ctx.tool_table()
        if self.native:
            offered = self.table.specs()
            result = await self.models.result(self.ctx, "step", request_id, self.transcript, tools=offered)
            if not refused_tools(result):
                return await self._native(step, result)
            self.native = False  # for the rest of the task: the same step again, in text
            self.transcript = self._text_transcript()
            request_id = f"step-{step}-text"
        reply = await self.models.ask(self.ctx, "step", request_id, self._in_text_now(), json_mode=True)
        action = parse_action(reply, self.table)
        if isinstance(action, Finish):
            return self._finish(step, action)
        await self._in_text(step, reply, action)
        return None

    async def _in_text(self, step: int, reply: str, action: ToolCall) -> None:
        """A call the model wrote as JSON text: run, and its result given back as the JSON-in-text
        protocol gives it (the reply, then "Result of ...")."""
        observation = await self._run(step, f"call-{step}", action)
        self.transcript = [
            *self.transcript,
            ChatMessage("assistant", reply),
            ChatMessage("user", f"Result of {_call_text(action.tool, action.args)}:\n{clipped(observation)}"),
        ]

    async def _native(self, step: int, result: LLMResult) -> Finish | None:
        calls = result.tool_calls
        if not calls:
            action = parse_native(result.content, self.table)
            if isinstance(action, Finish):
                return self._finish(step, action)
            await self._in_text(step, result.content, action)
            return None
        said = result.content.strip()
        answers: list[ChatMessage] = []
        for n, part in enumerate(calls, 1):
            call_id = f"call-{step}" if len(calls) == 1 else f"call-{step}-{n}"
            read: Action | str = (
                native_call(part.name, part.arguments, self.table)
                if n <= MAX_CALLS
                else f"not run: at most {MAX_CALLS} tool calls of one reply run; call it again"
            )
            if isinstance(read, Finish):  # ``finish`` called as a tool: the calls before it ran
                return self._finish(step, Finish(read.answer, said))
            observation = await self._run(step, call_id, read, part=part, thought=said)
            answers.append(ChatMessage("tool", clipped(observation), tool_call_id=part.id, name=part.name))
        self.transcript = [
            *self.transcript,
            ChatMessage("assistant", result.content, tool_calls=list(calls)),
            *answers,
        ]
        return None

    def _finish(self, step: int, action: Finish) -> Finish:
        self.verbose.append(
            VerboseStep(
                step=step, thought=action.thought, tool=tools.FINISH.name, input={"answer": action.answer}
            )
        )
        return action

    async def _run(
        self,
        step: int,
        call_id: str,
        action: ToolCall | str,
        *,
        part: ToolCallPart | None = None,
        thought: str = "",
    ) -> str:
        """One call, what the model is told of it: its result, or ``error: ...`` (a bad call is a
        tool error the model reads, not a crash)."""
        if isinstance(action, str):
            assert part is not None
            tool, args, observation = part.name, part.arguments, f"error: {action}"
        else:
            tool, args = action.tool, action.args
            checked = checked_args(tool, args, self.table)
            if isinstance(checked, str):
                observation = f"error: {checked}"
            else:
                outcome = await self.ctx.tool(call_id, tool, checked)
                observation = outcome.output if outcome.ok else f"error: {outcome.error}"
                if not outcome.ok and outcome.output:
                    observation += "\n" + outcome.output
        self.verbose.append(
            VerboseStep(
                step=step,
                thought=thought or (action.thought if isinstance(action, ToolCall) else ""),
                tool=tool,
                input=args,
            )
        )
        self.observations.append(f"{_call_text(tool, args)}:\n{observation}")
        self.made.append((tool, args, observation))
        return observation

    def _in_text_now(self) -> list[ChatMessage]:
        """The JSON-in-text transcript, its system prompt naming the MCP servers' tools of this
        step's table (the prompt's examples name the table's own)."""
        others = [tool for tool in self.table.tools if tool.input_schema is not None]
        if not others or not self.transcript or self.transcript[0].role != "system":
            return self.transcript
        listed = "; ".join(
            f"{tool.name}: {tool.description} Arguments (JSON Schema): "
            f"{json.dumps(tool.input_schema, ensure_ascii=False)[:600]}"
            for tool in others
        )
        system = ChatMessage(
            "system", f"{self.transcript[0].content}\n\nMore tools, called the same way: {listed}"
        )
        return [system, *self.transcript[1:]]

    def _text_transcript(self) -> list[ChatMessage]:
        """The JSON-in-text protocol's transcript of the calls made so far, for a task that falls
        back to it: each call as the JSON reply that would have made it, then its result."""
        messages = [ChatMessage("system", _system(self.ctx.task, SYSTEM["step"])), self.opening]
        for tool, args, observation in self.made:
            messages += [
                ChatMessage("assistant", json.dumps({"tool": tool, "args": args}, ensure_ascii=False)),
                ChatMessage("user", f"Result of {_call_text(tool, args)}:\n{clipped(observation)}"),
            ]
        return messages


def refused_tools(result: LLMResult) -> bool:
    """A native step request's result says the server or the model does not take tools: the runner
    said so (``tools_refused``), or the model server's error speaks of tools."""
    if result.ok:
        return False
    if result.tools_refused:
        return True
    return result.error_kind in ("http_status", "protocol") and "tool" in (result.error or "").lower()


def checked_args(
    tool: str, args: dict[str, Any], table: tools.Table = tools.BUILTINS
) -> dict[str, Any] | str:
    """The call's arguments held to the tool's schema (msgspec; an MCP server's tool: its JSON
    Schema), as JSON values; or what is wrong."""
    spec = table.get(tool)
    if spec is None or spec is tools.FINISH:
        return f"there is no tool {tool!r}; the tools are {', '.join(t.name for t in table.tools)}"
    if spec.input_schema is not None:
        return _checked_by_schema(spec, args)
    try:
        value = msgspec.convert(args, spec.args, strict=False)
    except msgspec.ValidationError as exc:
        return f"bad arguments for {tool}: {exc}"
    out: dict[str, Any] = msgspec.to_builtins(value)
    return {key: item for key, item in out.items() if item is not None}


def _checked_by_schema(spec: tools.Tool, args: dict[str, Any]) -> dict[str, Any] | str:
    """An MCP tool's arguments checked against its server's JSON Schema (``jsonschema``, in the
    draft the schema names; 2020-12 when it names none, as MCP says)."""
    import jsonschema  # loaded at the first MCP call, not at start

    schema = spec.input_schema or {}
    try:
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(args))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the MCP server's schema of {spec.name} is not valid: {exc.message}"
    if error is None:
        return args
    where = "/".join(str(part) for part in error.absolute_path)
    return f"bad arguments for {spec.name}: {f'{where}: ' if where else ''}{error.message}"


def _call_text(tool: str, args: dict[str, Any]) -> str:
    """``read_file(README.md)``, ``run_command(pytest -q)``: a call as the transcript shows it."""
    shown = (
        args.get("command")
        or args.get("pattern")
        or args.get("path")
        or ("patch" if tool == tools.APPLY_PATCH.name else ".")
    )
    return f"{tool}({shown})"


OBSERVATION_CHARS: Final = 8000  # characters of a tool's result the model is shown


def clipped(observation: str) -> str:
    """A tool's result as the model is shown it: cut to ``OBSERVATION_CHARS``, with a note saying so
    (Veronica's own notes of a cut come first in her results, so they are kept)."""
    if len(observation) <= OBSERVATION_CHARS:
        return observation
    return (
        observation[:OBSERVATION_CHARS]
        + f"\n[cut: only the first {OBSERVATION_CHARS} of {len(observation)} characters of this result are shown]"
    )


WAIT_FIRST: Final = 1.0  # seconds before asking a model server that was unreachable again
WAIT_MAX: Final = 30.0  # seconds between tries, at most


async def _ask(
    ctx: TaskContext,
    purpose: Purpose,
    request_id: str,
    messages: list[ChatMessage],
    *,
    json_mode: bool = False,
    tools: ToolSpecs = (),
) -> LLMResult:
    """One model answer. While the model server is unreachable the task waits in the stage
    ``waiting_for_model`` and asks again with backoff; the task's deadline ends the wait. A request
    with ``tools`` whose result says they were refused returns that result, for the caller to ask
    without them."""
    rid, tries, delay = request_id, 0, WAIT_FIRST
    while True:
        result = await ctx.llm(rid, purpose, messages, json_mode=json_mode, tools=tools)
        if result.ok or (tools and refused_tools(result)):
            return result
        if result.error_kind != "unavailable":
            raise TaskAborted(
                ctx.task.task_id,
                result.error or "model call failed",
                kind=f"llm_{result.error_kind or 'error'}",
            )
        tries += 1
        rid = f"{request_id}-retry{tries}"
        await ctx.stage("waiting_for_model", detail=result.error or "", key=f"waiting_for_model:{request_id}")
        await ctx.pause(delay, before=rid)
        delay = min(delay * 2, WAIT_MAX)


def best_effort(understanding: str, plan: str, observations: list[str]) -> str:
    """An answer made of what the task gathered, when the model gave no final answer."""
    if observations:
        return "The model gave no final answer. What the steps found:\n\n" + "\n\n".join(observations[-3:])
    for text in (plan, understanding):
        if text.strip():
            return text.strip()
    return "The model returned an empty answer."
