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
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, Protocol

import msgspec

from victoria.actors.agent import capabilities, classifier
from victoria.actors.agent.replies import Finish, ToolCall, parse_action
from victoria.errors import TaskAborted
from victoria.events.contracts import ChatMessage, FilesRequest, LLMResult, TaskSubmitted, ToolResult

VERSION: Final = 2
"""The workflow's version, stored with each model request. 1: before requests carried it."""


def fingerprint(messages: list[ChatMessage], *, model: str | None, json_mode: bool) -> str:
    """What a model request asks, as 32 hex digits: the same on every attempt for the same question."""
    asked = msgspec.json.encode([model, json_mode, messages])
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
        self, request_id: str, purpose: str, messages: list[ChatMessage], *, json_mode: bool = False
    ) -> LLMResult: ...

    async def files(self, call_id: str, request: FilesRequest, *, timeout: float) -> ToolResult: ...


SYSTEM: dict[str, str] = {
    "understand": (
        "You are Victoria, an agent that carries out a user's goal. In one or two sentences, say what "
        "the user wants and what a good answer must contain. Answer in the user's language."
    ),
    "plan": (
        "You are Victoria. Write a short numbered plan (at most {max_steps} steps) to reach the goal. "
        "Tools: list_directory(path), read_file(path), finish(answer). Answer in the user's language."
    ),
    "step": (
        "You are Victoria, carrying out a plan. Reply with exactly one JSON object and nothing else: "
        '{{"tool": "list_directory", "args": {{"path": "."}}}}, '
        '{{"tool": "read_file", "args": {{"path": "README.md"}}}}, or '
        '{{"tool": "finish", "args": {{"answer": "<the final answer for the user>"}}}}. '
        "Paths are relative to the workspace. Finish as soon as you can answer. "
        "Write the answer in the user's language."
    ),
}


def route_of(task: TaskSubmitted) -> classifier.Route:
    if task.task_type == "capabilities":
        return classifier.Route("capabilities")
    if task.task_type == "files":
        return classifier.files_route(task.goal)
    if task.task_type == "agent":
        return classifier.Route("agent")
    return classifier.classify(task.goal)


async def run(ctx: TaskContext) -> str:
    task = ctx.task
    route = route_of(task)
    if route.kind == "capabilities":
        await ctx.stage("answering", detail="from the capability registry")
        return capabilities.answer(classifier.language(task.goal))
    if route.kind == "files":
        await ctx.stage("delegating", detail=f"veronica: {route.op} {route.path}")
        result = await ctx.files(
            "delegate",
            FilesRequest(
                op=route.op, path=route.path, limit=route.limit, goal=task.goal, task_id=task.task_id
            ),
            timeout=ctx.delegate_timeout,
        )
        if result.ok:
            return result.output
        await ctx.stage("fallback", detail=f"delegation failed: {result.error}")
    return await agent_run(ctx)


def _context_block(task: TaskSubmitted) -> str:
    if task.project_context is None:
        return ""
    text = msgspec.json.encode(task.project_context).decode()
    return f"\n\nProject context (JSON): {text[:4000]}"


async def agent_run(ctx: TaskContext) -> str:
    task = ctx.task
    goal = task.goal + _context_block(task)
    await ctx.stage("understanding")
    understanding = await _ask(
        ctx, "understand", [ChatMessage("system", SYSTEM["understand"]), ChatMessage("user", goal)]
    )
    await ctx.stage("planning")
    plan = await _ask(
        ctx,
        "plan",
        [
            ChatMessage("system", SYSTEM["plan"].format(max_steps=task.max_steps)),
            ChatMessage("user", f"Goal: {goal}\n\nWhat is asked: {understanding}"),
        ],
    )
    transcript: list[ChatMessage] = [
        ChatMessage("system", SYSTEM["step"].format()),
        ChatMessage("user", f"Goal: {goal}\n\nPlan:\n{plan}"),
    ]
    observations: list[str] = []
    for step in range(1, task.max_steps + 1):
        await ctx.stage("step", step=step)
        reply = await _ask(ctx, f"step-{step}", transcript, json_mode=True)
        action = parse_action(reply)
        if isinstance(action, Finish):
            return action.answer.strip() or best_effort(understanding, plan, observations)
        assert isinstance(action, ToolCall)
        op: Literal["list", "read"] = "list" if action.tool == "list_directory" else "read"
        path = str(action.args.get("path") or ".")
        result = await ctx.files(
            f"step-{step}",
            FilesRequest(op=op, path=path, goal=task.goal, task_id=task.task_id),
            timeout=ctx.delegate_timeout,
        )
        observation = result.output if result.ok else f"error: {result.error}"
        observations.append(f"{action.tool}({path}):\n{observation}")
        transcript = [
            *transcript,
            ChatMessage("assistant", reply),
            ChatMessage("user", f"Result of {action.tool}({path}):\n{observation[:8000]}"),
        ]
    return best_effort(understanding, plan, observations)


WAIT_FIRST: Final = 1.0  # seconds before asking a model server that was unreachable again
WAIT_MAX: Final = 30.0  # seconds between tries, at most


async def _ask(
    ctx: TaskContext, request_id: str, messages: list[ChatMessage], *, json_mode: bool = False
) -> str:
    """One model answer. While the model server is unreachable the task waits in the stage
    ``waiting_for_model`` and asks again with backoff; the task's deadline ends the wait."""
    purpose = request_id.split("-")[0]
    rid, tries, delay = request_id, 0, WAIT_FIRST
    while True:
        result = await ctx.llm(rid, purpose, messages, json_mode=json_mode)
        if result.ok:
            return result.content
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
