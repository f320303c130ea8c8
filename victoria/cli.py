"""The ``victoria`` command: run the system, one actor, or talk to a running system."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from victoria.errors import VictoriaError

if TYPE_CHECKING:
    from victoria.runtime.base import Actor
from victoria.runtime.config import Config

ACTOR_NAMES = ("victoria", "veronica", "monitor", "llm-runner", "projector")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="victoria", description="A crash-proof runtime for LLM agent tasks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start NATS, the gateway and every actor, in the foreground")
    up.add_argument("--host", default=None, help="gateway listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="gateway port (default 8010)")
    up.add_argument("--data-dir", type=Path, default=None, help="JetStream store and NATS URL file")
    up.add_argument("--nats-url", default=None, help="use this NATS instead of starting one")

    actor = sub.add_parser("actor", help="run one actor alone")
    actor.add_argument("name", choices=ACTOR_NAMES)
    actor.add_argument("--nats-url", default=None)
    actor.add_argument("--data-dir", type=Path, default=None)

    gateway = sub.add_parser("gateway", help="run the HTTP gateway alone")
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--port", type=int, default=None)
    gateway.add_argument("--nats-url", default=None)
    gateway.add_argument("--data-dir", type=Path, default=None)

    run = sub.add_parser("run", help="submit a goal, follow its stages, print the result")
    run.add_argument("goal")
    run.add_argument(
        "--url", default=None, help="gateway URL (default VICTORIA_URL or http://127.0.0.1:8010)"
    )
    run.add_argument("--task-type", default=None, choices=("capabilities", "files", "agent", "plan"))
    run.add_argument("--max-steps", type=int, default=None)
    run.add_argument("--model", default=None)
    run.add_argument("--no-follow", action="store_true", help="print the task id and return")
    run.add_argument(
        "--sync",
        action="store_true",
        help="one synchronous POST /run, as the old server's clients make it; prints its answer",
    )
    run.add_argument("--json", action="store_true", help="print the final status object as JSON")

    status = sub.add_parser("status", help="print a task's status")
    status.add_argument("task_id")
    status.add_argument("--url", default=None)

    cancel = sub.add_parser("cancel", help="cancel a task")
    cancel.add_argument("task_id")
    cancel.add_argument("--url", default=None)

    runs = sub.add_parser("runs", help="list tasks from the history (PostgreSQL), newest first")
    runs.add_argument("--url", default=None)
    runs.add_argument("--status", choices=("queued", "running", "completed", "failed", "cancelled"))
    runs.add_argument("--project")
    runs.add_argument("--since", help="ISO 8601 time or Unix seconds")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")

    from victoria import admin

    admin.add_commands(sub)

    watch = sub.add_parser("watch", help="print events as they arrive (like nats sub, readable)")
    watch.add_argument("subject", nargs="?", default="victoria.>")
    watch.add_argument("--nats-url", default=None)
    watch.add_argument("--data-dir", type=Path, default=None)
    watch.add_argument("--raw", action="store_true", help="print payloads as they are")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
        data_dir = getattr(args, "data_dir", None)
        if data_dir is not None:
            config = dataclasses.replace(config, data_dir=data_dir.expanduser().resolve())
        return _dispatch(args, config)
    except VictoriaError as exc:
        print(f"victoria: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _skip_websocket_support(args: argparse.Namespace, config: Config) -> None:
    """nats-py imports aiohttp only for its WebSocket transport. Processes that reach NATS over TCP
    and make no HTTP calls with aiohttp (all but the LLM runner) skip it (the memory it saves:
    bench/README.md)."""
    if args.command == "actor" and args.name == "llm-runner":
        return
    url = getattr(args, "nats_url", None) or config.nats_url or ""
    if url.startswith(("ws://", "wss://")) or "aiohttp" in sys.modules:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # import aiohttp now raises ImportError


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command in ("up", "gateway", "actor", "watch"):
        _skip_websocket_support(args, config)
    from victoria.runtime import logs, process

    command = args.command
    if command == "up":
        from victoria.runtime.supervisor import Supervisor

        log_handler = logs.setup("up", config.log_level, instance=config.instance)
        host = args.host or config.host
        port = args.port if args.port is not None else config.port
        nats_url = args.nats_url or config.nats_url
        supervisor = Supervisor(config, nats_url=nats_url, host=host, port=port, log_handler=log_handler)
        return process.run(supervisor.run())
    if command == "gateway":
        from victoria.gateway.server import serve
        from victoria.runtime import bus

        log_handler = logs.setup("gateway", config.log_level, instance=config.instance)
        url = bus.resolve_nats_url(config, args.nats_url)
        host = args.host or config.host
        port = args.port if args.port is not None else config.port
        return process.run(serve(config, url, host=host, port=port, log_handler=log_handler))
    if command == "actor":
        from victoria.runtime import bus

        log_handler = logs.setup(args.name, config.log_level, instance=config.instance)
        url = bus.resolve_nats_url(config, args.nats_url)
        factory = _actor_factory(args.name)
        return process.run(process.serve_actor(factory, config, url, name=args.name, log_handler=log_handler))
    if command in ("db", "experts", "projects"):
        from victoria import admin

        return process.run(admin.run(args, config))
    if command == "runs":
        from victoria import client

        params = {"status": args.status, "project": args.project, "since": args.since, "limit": args.limit}
        base = (args.url or config.gateway_url).rstrip("/")
        return client.runs(base, {k: v for k, v in params.items() if v is not None}, as_json=args.json)
    if command in ("run", "status", "cancel"):
        from victoria import client

        base = (args.url or config.gateway_url).rstrip("/")
        if command == "run":
            body: dict[str, object] = {"goal": args.goal}
            if args.task_type:
                body["task_type"] = args.task_type
            if args.max_steps is not None:
                body["max_steps"] = args.max_steps
            if args.model:
                body["model"] = args.model
            if args.sync:
                return client.run_sync(base, body, as_json=args.json)
            return client.run(base, body, follow=not args.no_follow, as_json=args.json)
        if command == "status":
            return client.status(base, args.task_id)
        return client.cancel(base, args.task_id)
    if command == "watch":
        from victoria import watch
        from victoria.runtime import bus

        url = bus.resolve_nats_url(config, args.nats_url)
        return process.run(watch.watch(url, args.subject, raw=args.raw))
    raise AssertionError(command)


def _actor_factory(name: str) -> type[Actor]:
    if name == "victoria":
        from victoria.actors.agent.actor import Victoria

        return Victoria
    if name == "veronica":
        from victoria.actors.veronica.actor import Veronica

        return Veronica
    if name == "monitor":
        from victoria.actors.monitor.actor import Monitor

        return Monitor
    if name == "projector":
        from victoria.actors.projector.actor import Projector

        return Projector
    from victoria.actors.llm_runner.actor import LLMRunner

    return LLMRunner


if __name__ == "__main__":
    sys.exit(main())
