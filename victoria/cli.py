"""The ``victoria`` command: run the system, one actor, or talk to a running system."""

from __future__ import annotations

import argparse
import dataclasses
import os
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
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="embedded NATS servers: 3 starts a local cluster, streams with 3 replicas (VICTORIA_REPLICAS)",
    )
    up.add_argument(
        "--instances",
        type=int,
        default=1,
        help="processes of each actor but the monitor (they share the work through NATS)",
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="let the gateway listen beyond loopback with no API token (anyone reaching it can run tasks)",
    )

    actor = sub.add_parser("actor", help="run one actor alone")
    actor.add_argument("name", choices=ACTOR_NAMES)
    actor.add_argument("--nats-url", default=None)
    actor.add_argument("--data-dir", type=Path, default=None)

    gateway = sub.add_parser("gateway", help="run the HTTP gateway alone")
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--port", type=int, default=None)
    gateway.add_argument("--nats-url", default=None)
    gateway.add_argument("--data-dir", type=Path, default=None)
    gateway.add_argument("--insecure", action="store_true", help="listen beyond loopback with no API token")

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

    for verb, what in (("approve", "approve"), ("deny", "deny")):
        decide = sub.add_parser(
            verb,
            help=f"{what} a tool call of a task that waits for a person (the only one waiting, "
            "unless ID names it)",
        )
        decide.add_argument("task_id")
        decide.add_argument("approval_id", nargs="?", default=None, metavar="ID")
        decide.add_argument("--reason", default="", help="said to the model (and kept) with the decision")
        decide.add_argument("--url", default=None)

    runs = sub.add_parser("runs", help="list tasks from the history (PostgreSQL), newest first")
    runs.add_argument("--url", default=None)
    runs.add_argument("--status", choices=("queued", "running", "completed", "failed", "cancelled"))
    runs.add_argument("--project")
    runs.add_argument("--since", help="ISO 8601 time or Unix seconds")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")

    models = sub.add_parser(
        "models", help="every model of every model server: where, whether loaded, latency of recent calls"
    )
    models.add_argument("--url", default=None)
    models.add_argument("--json", action="store_true")

    tools = sub.add_parser(
        "tools", help="the tools the model may call: effect, whether calls wait for approval, description"
    )
    tools.add_argument("--url", default=None, help="gateway URL (default VICTORIA_URL)")
    tools.add_argument("--json", action="store_true", help="print GET /tools as it answers")

    mcp = sub.add_parser(
        "mcp",
        help="serve the gateway's MCP tools over stdio (for MCP clients that start a command), "
        "talking to the gateway's /mcp with VICTORIA_API_TOKEN",
    )
    mcp.add_argument(
        "--url", default=None, help="gateway URL (default VICTORIA_URL or http://127.0.0.1:8010)"
    )

    from victoria import admin

    admin.add_commands(sub)

    watch = sub.add_parser(
        "watch",
        help="print events as they arrive (like nats sub, readable); given a task id, that task's "
        "whole story (stages, model calls, tools, log, output), followed to its end",
    )
    watch.add_argument("subject", nargs="?", default="victoria.>", help="a subject, or a task id")
    watch.add_argument("--url", default=None, help="gateway URL, for a task id (default VICTORIA_URL)")
    watch.add_argument("--nats-url", default=None)
    watch.add_argument("--data-dir", type=Path, default=None)
    watch.add_argument("--raw", action="store_true", help="print payloads as they are")

    setup = sub.add_parser(
        "setup",
        help="make every stream and bucket as the NATS user supervisor (VICTORIA_REPLICAS copies), then exit",
    )
    setup.add_argument("--nats-url", default=None)
    setup.add_argument("--data-dir", type=Path, default=None)

    sandbox = sub.add_parser(
        "sandbox",
        help="say what the model's commands run in (VICTORIA_SANDBOX), or run COMMAND there as "
        "run_command would (in VICTORIA_WORKSPACE, with its limits) and print what it did",
    )
    sandbox.add_argument("--timeout", type=float, default=None, help="seconds (default 60)")
    sandbox.add_argument("--cwd", default=".", help="a folder of the workspace")
    sandbox.add_argument("shell", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="shell text")

    nats_env = sub.add_parser(
        "nats-env",
        help="print the NATS users' passwords as export lines, for a nats-server of your own run with "
        "victoria's nats.conf (made in the data dir if missing)",
    )
    nats_env.add_argument("--data-dir", type=Path, default=None)
    nats_env.add_argument(
        "--as",
        dest="role",
        default=None,
        help="print NATS_URL, NATS_USER and NATS_PASSWORD of this role instead, for the NATS CLI "
        "(observer: read-only; supervisor: everything)",
    )
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
    if command == "sandbox":
        return process.run(_sandbox(args, config))
    if command == "up":
        from victoria.runtime.supervisor import Supervisor

        log_handler = logs.setup("up", config.log_level, instance=config.instance)
        host = args.host or config.host
        port = args.port if args.port is not None else config.port
        nats_url = args.nats_url or config.nats_url
        if not 1 <= args.nodes <= 7 or not 1 <= args.instances <= 32:
            raise VictoriaError("--nodes takes 1 to 7, --instances 1 to 32")
        if args.nodes > 1 and nats_url:
            raise VictoriaError("--nodes starts embedded servers; it does not go with --nats-url or NATS_URL")
        if args.nodes > 1 and not os.environ.get("VICTORIA_REPLICAS", "").strip():
            config = dataclasses.replace(config, replicas=min(3, args.nodes))
        supervisor = Supervisor(
            config,
            nats_url=nats_url,
            host=host,
            port=port,
            insecure=args.insecure,
            nodes=args.nodes,
            instances=args.instances,
            log_handler=log_handler,
        )
        return process.run(supervisor.run())
    if command == "gateway":
        from victoria.gateway.server import serve
        from victoria.runtime import connection

        log_handler = logs.setup("gateway", config.log_level, instance=config.instance)
        url = connection.resolve_nats_url(config, args.nats_url)
        host = args.host or config.host
        port = args.port if args.port is not None else config.port
        return process.run(
            serve(config, url, host=host, port=port, insecure=args.insecure, log_handler=log_handler)
        )
    if command == "actor":
        from victoria.runtime import connection

        log_handler = logs.setup(args.name, config.log_level, instance=config.instance)
        url = connection.resolve_nats_url(config, args.nats_url)
        factory = _actor_factory(args.name)
        return process.run(process.serve_actor(factory, config, url, name=args.name, log_handler=log_handler))
    if command in ("db", "experts", "projects"):
        from victoria import admin

        return process.run(admin.run(args, config))
    if command == "runs":
        from victoria import client

        params = {"status": args.status, "project": args.project, "since": args.since, "limit": args.limit}
        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return client.runs(target, {k: v for k, v in params.items() if v is not None}, as_json=args.json)
    if command == "models":
        from victoria import client
        from victoria import models as models_command

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return models_command.models(target, as_json=args.json)
    if command == "tools":
        from victoria import client

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return client.tools(target, as_json=args.json)
    if command == "mcp":
        from victoria import client, mcpstdio

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return process.run(mcpstdio.serve(target))
    if command in ("approve", "deny"):
        from victoria import client

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return client.decide(target, args.task_id, args.approval_id, command, args.reason)
    if command in ("run", "status", "cancel"):
        from victoria import client

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        if command == "run":
            body: dict[str, object] = {"goal": args.goal}
            if args.task_type:
                body["task_type"] = args.task_type
            if args.max_steps is not None:
                body["max_steps"] = args.max_steps
            if args.model:
                body["model"] = args.model
            if args.sync:
                return client.run_sync(target, body, as_json=args.json)
            return client.run(target, body, follow=not args.no_follow, as_json=args.json)
        if command == "status":
            return client.status(target, args.task_id)
        return client.cancel(target, args.task_id)
    if command == "setup":
        from victoria.runtime import connection, logs, setup

        logs.setup("setup", config.log_level, instance=config.instance)
        return process.run(setup.run(config, connection.resolve_nats_url(config, args.nats_url)))
    if command == "nats-env":
        from victoria.errors import ConfigError
        from victoria.runtime import connection, credentials
        from victoria.runtime.natsserver import config_path

        if args.role is not None:
            known = credentials.read(config.nats_credentials_file) or {}
            if args.role not in known:
                raise ConfigError(
                    "--as",
                    f"no NATS user {args.role!r} in {config.nats_credentials_file} (`victoria up` makes it)",
                )
            url = credentials.without_credentials(connection.resolve_nats_url(config))
            print(f"export NATS_URL={url} NATS_USER={args.role} NATS_PASSWORD={known[args.role]}", flush=True)
            return 0
        users = credentials.load_or_create(config.nats_credentials_file)
        print(f"# NATS users of victoria, from {config.nats_credentials_file}", flush=True)
        users_conf = config_path().with_name("nats-users.conf")
        print(f"# for: nats-server -c {config_path()}, or `include {users_conf}` in your own", flush=True)
        print("\n".join(credentials.export_lines(users)), flush=True)
        return 0
    if command == "watch" and _is_task_id(args.subject):
        from victoria import client, story

        target = client.Gateway((args.url or config.gateway_url).rstrip("/"), config.api_token)
        return story.watch_task(target, args.subject)
    if command == "watch":
        from victoria import watch
        from victoria.runtime import connection, credentials

        url = connection.resolve_nats_url(config, args.nats_url)
        auth = credentials.for_role(config, "observer", url)
        return process.run(watch.watch(url, args.subject, raw=args.raw, auth=auth))
    raise AssertionError(command)


def _is_task_id(argument: str) -> bool:
    from victoria.story import is_task_id

    return is_task_id(argument)


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


async def _sandbox(args: argparse.Namespace, config: Config) -> int:
    from victoria.actors.veronica.commands import Commands

    commands = Commands(config)
    shell = " ".join(args.shell[1:] if args.shell[:1] == ["--"] else args.shell)
    if not shell:
        print((await commands.ready()).describe())
        return 0
    outcome = await commands.run(shell, cwd=args.cwd, timeout_s=args.timeout, approved=True)
    sys.stdout.write(outcome.stdout)
    sys.stderr.write(outcome.stderr)
    ended = outcome.reason or f"exit {outcome.exit_code}"
    cut = ", output cut" if outcome.cut else ""
    print(f"[{outcome.sandbox}: {ended}, {outcome.duration_s:g}s{cut}]", file=sys.stderr)
    return outcome.exit_code if outcome.exit_code is not None else 124
