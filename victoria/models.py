"""``victoria models``: every model of every model server, where it is, whether it is loaded, and
its latency in recent calls (from the gateway's ``GET /services``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx

from victoria.client import Gateway


def table(servers: list[dict[str, Any]]) -> list[str]:
    """The lines ``victoria models`` prints."""
    if not servers:
        return ["no model server known yet (the LLM runner writes what it finds every few seconds)"]
    rows = [("MODEL", "SERVER", "LOADED", "CONTEXT", "TTFT", "TOKENS/S", "CALLS")]
    for server in servers:
        for model in server.get("models") or []:
            ttft = model.get("ttft_s")
            rate = model.get("tokens_per_s")
            rows.append(
                (
                    str(model["name"]),
                    str(server["url"]),
                    "yes" if model.get("loaded") else "no",
                    str(model.get("context") or "-"),
                    f"{ttft:.2f}s" if isinstance(ttft, int | float) else "-",
                    f"{rate:.1f}" if isinstance(rate, int | float) else "-",
                    str(model.get("calls", 0)),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    for server in servers:
        kind = server.get("kind") or ""
        slots = server.get("slots")
        said = ", ".join(
            part for part in (kind, f"{slots} slot{'s' if slots != 1 else ''}" if slots else "") if part
        )
        status = str(server.get("status"))
        if status == "busy":
            status += f" ({server.get('streaming') or 'a'} call(s) streaming)"
        lines.append(
            f"{server['url']}: {server.get('api')}{f' ({said})' if said else ''}, {status}, loaded: "
            f"{', '.join(server.get('loaded') or []) or 'nothing'}"
            f"{' (last served)' if server.get('loaded_source') == 'last_served' else ''}, "
            f"{server.get('swaps', 0)} swaps"
        )
    return lines


def models(gateway: Gateway, *, as_json: bool) -> int:
    base = gateway.base
    try:
        with gateway.client() as http:
            response = http.get(f"{base}/services")
    except httpx.HTTPError as exc:
        print(f"victoria: cannot reach the gateway at {base}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"victoria: HTTP {response.status_code}: {response.text[:300]}", file=sys.stderr)
        return 1
    servers = response.json().get("model_servers") or []
    if as_json:
        print(json.dumps(servers, ensure_ascii=False, indent=2), flush=True)
        return 0
    print("\n".join(table(servers)), flush=True)
    return 0
