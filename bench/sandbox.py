"""S1, the sandbox's cost per command: ``true`` in the sandbox against plain ``true``.

Both are started the way Veronica starts a command (asyncio's subprocess, stdout and stderr piped
and read, ``/bin/sh -c``), one after the other, ``--runs`` times each (50); the medians and p90 in
milliseconds, and their difference. ``python -m bench.sandbox [--runs N] [--mode auto|bwrap|none]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from victoria.runtime import sandbox


async def plain(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await process.communicate()
        out.append((time.perf_counter() - began) * 1000)
    return out


async def boxed(box: sandbox.Sandbox, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        outcome = await box.run("true")
        assert outcome.exit_code == 0, outcome
        out.append((time.perf_counter() - began) * 1000)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(runs: int, mode: sandbox.Mode) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as workspace:
        box = await sandbox.find(mode, sandbox.Policy(Path(workspace)))
        await boxed(box, 3)  # warm: the first start reads the binaries from disk
        await plain(3)
        inside = await boxed(box, runs)
        outside = await plain(runs)
    return {
        "sandbox": box.describe(),
        "runs": runs,
        "plain_ms": {"p50": round(statistics.median(outside), 2), "p90": round(_p(outside, 0.9), 2)},
        "sandboxed_ms": {"p50": round(statistics.median(inside), 2), "p90": round(_p(inside, 0.9), 2)},
        "cost_ms_p50": round(statistics.median(inside) - statistics.median(outside), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--mode", default="auto", choices=sandbox.MODES)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.mode)), indent=2))
