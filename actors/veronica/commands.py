"""Veronica's commands: the sandbox found once, each command checked and run in it.

``run_command``'s rules: the command is shell text, run with ``/bin/sh -c`` in the workspace (or a
folder of it, ``cwd``, held to it like every path of her tools); ``timeout_s`` is 60 unless given,
at most ``VICTORIA_COMMAND_MAX_S``. Without a usable sandbox every command is refused with
``SandboxUnavailable`` (its text says how to install one), unless ``VICTORIA_SANDBOX=none`` was
set on purpose. How a command is made durable (intent, claim, outcome) is the tools issue's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Final

from victoria.actors.veronica import files
from victoria.errors import SandboxUnavailable, ToolError
from victoria.runtime import sandbox
from victoria.runtime.config import Config

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 60.0


def policy(config: Config, workspace: Path | None = None) -> sandbox.Policy:
    return sandbox.Policy(
        workspace=workspace or config.workspace,
        network=config.sandbox_network,
        env=config.sandbox_env,
        hidden=(config.data_dir,),
        read_only=config.sandbox_read,
    )


class Commands:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.sandbox: sandbox.Sandbox | None = None
        self.refusal: SandboxUnavailable | None = None
        self._lock = asyncio.Lock()

    async def ready(self) -> sandbox.Sandbox:
        """The sandbox, found (and tried) the first time; ``SandboxUnavailable`` when there is none."""
        async with self._lock:
            if self.sandbox is None and self.refusal is None:
                try:
                    self.sandbox = await sandbox.find(self.config.sandbox, policy(self.config))
                except SandboxUnavailable as exc:
                    self.refusal = exc
                    log.warning("%s", exc)
                else:
                    log.info("commands run in %s", self.sandbox.describe())
        if self.refusal is not None:
            raise self.refusal
        assert self.sandbox is not None
        return self.sandbox

    def health(self) -> tuple[str, str]:
        """What the heartbeat says of the commands: degraded without a sandbox."""
        if self.refusal is not None:
            return "degraded", str(self.refusal)
        if self.sandbox is not None:
            return "up", "commands: " + self.sandbox.describe()
        return "up", ""

    def limits(self, timeout_s: float | None) -> sandbox.Limits:
        top = self.config.command_max_s
        if timeout_s is not None and not 0 < timeout_s <= top:
            raise ToolError(f"timeout_s must be more than 0 and at most {top:g} seconds, got {timeout_s:g}")
        return sandbox.Limits(
            timeout_s=timeout_s if timeout_s is not None else min(DEFAULT_TIMEOUT, top),
            memory_mb=self.config.command_memory_mb,
            processes=self.config.command_processes,
            output_bytes=self.config.command_output,
        )

    async def run(
        self,
        command: str,
        *,
        cwd: str = ".",
        timeout_s: float | None = None,
        workspace: Path | None = None,
        approved: bool = False,
    ) -> sandbox.Outcome:
        """Run one command of the model's; a bad call is a ``ToolError`` the model can read.
        Without a sandbox (``VICTORIA_SANDBOX=none``) only an ``approved`` command runs (a
        person's yes; ``victoria sandbox`` is a person at the command line)."""
        if not command.strip():
            raise ToolError("command is empty")
        limits = self.limits(timeout_s)
        root = workspace or self.config.workspace
        where = await asyncio.to_thread(files.resolve_inside, root, cwd)
        if not await asyncio.to_thread(where.is_dir):
            raise ToolError(f"cwd {cwd!r} is not a directory of the workspace")
        found = await self.ready()
        if not found.isolated and not approved:
            raise ToolError(
                "commands run without a sandbox (VICTORIA_SANDBOX=none) only with a person's approval, "
                "and this call has none"
            )
        if workspace is not None and workspace != found.policy.workspace:
            found = dataclasses.replace(found, policy=policy(self.config, workspace))
        return await found.run(command, cwd=where, limits=limits)
