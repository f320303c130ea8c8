"""A fake model server speaking the Ollama and OpenAI chat protocols over a real socket.

No model runs here: answers are made from the request. It counts calls, so tests can prove that a
call was not repeated. Run alone with ``python -m tests.fakellm --port 11434 [--delay 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeLLM:
    """Modes: ``normal``, ``tool`` (first step lists files), ``nonjson``, ``partial``, ``empty``,
    ``error``, ``long`` (every answer is 300 words), ``overflow`` (every call is refused as over
    the context, as llama-cpp-python says it), ``tool_calls`` (a request with ``tools`` gets the
    next reply of ``script``, native tool calls or text), ``no_tools`` (a request with ``tools``
    is refused as Ollama refuses it for a model without tool support: 400, "... does not
    support tools")."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.0,
        mode: str = "normal",
        chunk_delay: float = 0.0,
    ) -> None:
        self.delay = delay
        self.mode = mode
        self.chunk_delay = chunk_delay
        """Seconds between the pieces of a streamed answer."""
        self.calls: Counter[str] = Counter()
        self.prompts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.aborted = 0
        self.images: list[str] = []
        """Every image a request carried (base64), in either protocol's shape."""
        self.requests: list[dict[str, Any]] = []
        """Every chat request body, as it came."""
        self.models: list[str] = ["fake"]
        """What /api/tags and /v1/models list."""
        self.load_time = 0.0
        """Seconds a call for a model other than the loaded one costs first. When above 0 the
        server holds one model and takes one call at a time (like Ollama on a big model)."""
        self.loaded: str | None = None
        self.swaps = 0
        self.served: list[str] = []
        """The model of every call answered, in order."""
        self.serial = threading.Lock()
        self.down = False
        """True: every request is dropped without an answer (the connection closes), as when the
        server is gone."""
        self.one_at_a_time = False
        """True: one request at a time, listings too: a GET waits while an answer streams (as
        mlx_lm.server, or llama-cpp-python without its interrupts)."""
        self.generating = 0
        self.gets_while_generating: list[str] = []
        """The GETs that arrived while an answer streamed: path and user agent (the monitor's
        httpx, or the runner's aiohttp)."""
        self.stall_after: int | None = None
        """Pieces of an answer after which it stops for ``stall`` seconds."""
        self.stall = 0.0
        self.script: list[list[dict[str, Any]] | str] = []
        """Mode ``tool_calls``: the replies to requests with ``tools``, in order, each a list of
        calls (``{"name": ..., "arguments": {...}}``) or a text; past its end, the usual answer."""
        self.tool_ids = False
        """Ollama's tool calls carry an ``id`` (Ollama 0.12.10 and later); OpenAI's always do."""
        self.tools_refusal = ""
        """Set: a request with ``tools`` is refused with this text whatever the mode, as llama-server
        refuses it when started without ``--jinja`` (500, ``{"error": {"code": 500, "message":
        "tools param requires --jinja flag", "type": "server_error"}}``)."""
        self.steps: list[dict[str, Any]] = []
        """Mode ``steps``: the step replies, in order (the n-th step call gets the n-th; then finish)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if fake.down:
                    self.close_connection = True
                    return
                with fake.lock:
                    if fake.generating > 0:
                        fake.gets_while_generating.append(f"{self.path} ({self.headers.get('user-agent')})")
                if fake.one_at_a_time:
                    with fake.serial:
                        self._get()
                else:
                    self._get()

            def _get(self) -> None:
                if self.path in ("/api/tags", "/v1/models", "/"):
                    names = list(fake.models)
                    self._send(
                        200, {"models": [{"name": n} for n in names], "data": [{"id": n} for n in names]}
                    )
                elif self.path == "/api/ps":
                    loaded = [fake.loaded] if fake.loaded else []
                    self._send(200, {"models": [{"name": n, "model": n} for n in loaded]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                if fake.down:
                    self.close_connection = True
                    return
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path not in ("/api/chat", "/v1/chat/completions"):
                    self._send(404, {"error": "not found"})
                    return
                if fake.mode == "overflow":
                    message = (
                        "This model's maximum context length is 8192 tokens. However, you requested 9041 "
                        "tokens (9031 in the messages, 10 in the completion)."
                    )
                    self._send(400, {"error": {"message": message, "code": "context_length_exceeded"}})
                    return
                if fake.mode == "no_tools" and body.get("tools"):
                    with fake.lock:
                        fake.requests.append(body)
                    message = f"{body.get('model') or 'fake'} does not support tools"
                    if self.path == "/api/chat":
                        self._send(400, {"error": message})
                    else:  # Ollama's OpenAI-compatible endpoint says it so
                        self._send(400, {"error": {"message": message, "type": "api_error"}})
                    return
                if fake.tools_refusal and body.get("tools"):
                    with fake.lock:
                        fake.requests.append(body)
                    refusal = {"code": 500, "message": fake.tools_refusal, "type": "server_error"}
                    self._send(500, {"error": refusal})
                    return
                if fake.one_at_a_time:
                    with fake.serial:
                        self._answer(body)
                else:
                    self._answer(body)

            def _answer(self, body: dict[str, Any]) -> None:
                content = fake.answer(body.get("messages") or [])
                calls: list[dict[str, Any]] = []
                if fake.mode == "tool_calls" and body.get("tools"):
                    with fake.lock:
                        reply = fake.script.pop(0) if fake.script else None
                    if isinstance(reply, list):
                        calls, content = reply, ""
                    elif isinstance(reply, str):
                        content = reply
                key = json.dumps(body.get("messages"), sort_keys=True, ensure_ascii=False)
                with fake.lock:
                    fake.calls[self.path] += 1
                    fake.prompts[key] += 1
                    fake.requests.append(body)
                    fake.images.extend(images_in(body.get("messages") or []))
                if fake.load_time > 0:
                    with fake.serial:  # one call at a time; a call for another model loads it first
                        wanted = str(body.get("model") or "fake")
                        if fake.loaded != wanted:
                            if fake.loaded is not None:
                                fake.swaps += 1
                            time.sleep(fake.load_time)
                            fake.loaded = wanted
                        time.sleep(fake.delay)
                        with fake.lock:
                            fake.served.append(wanted)
                elif fake.delay:
                    deadline = time.monotonic() + fake.delay
                    while time.monotonic() < deadline:
                        time.sleep(min(0.05, fake.delay))
                if fake.mode == "error":
                    self._send(500, {"error": "model exploded"})
                    return
                model = body.get("model") or "fake"
                cap = body.get("max_tokens") or (body.get("options") or {}).get("num_predict")
                finish = "tool_calls" if calls else "stop"
                if isinstance(cap, int) and len(content.split(" ")) > cap:  # a word is a token here
                    content, finish = " ".join(content.split(" ")[:cap]), "length"
                if body.get("stream"):
                    with fake.lock:
                        fake.generating += 1
                    try:
                        self._stream(model, content, finish, calls)
                    except (BrokenPipeError, ConnectionResetError):
                        with fake.lock:
                            fake.aborted += 1
                    finally:
                        with fake.lock:
                            fake.generating -= 1
                    return
                if self.path == "/api/chat":
                    message: dict[str, Any] = {"role": "assistant", "content": content}
                    if calls:
                        message["tool_calls"] = [self._ollama_call(n, call) for n, call in enumerate(calls)]
                    out = {
                        "model": model,
                        "message": message,
                        "done": True,
                        "done_reason": "stop" if finish == "tool_calls" else finish,
                        "prompt_eval_count": 10,
                        "eval_count": 5,
                    }
                else:
                    message = {"role": "assistant", "content": content or (None if calls else "")}
                    if calls:
                        message["tool_calls"] = [self._openai_call(n, call) for n, call in enumerate(calls)]
                    out = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    }
                try:
                    self._send(200, out)
                except (BrokenPipeError, ConnectionResetError):
                    with fake.lock:
                        fake.aborted += 1

            def _ollama_call(self, n: int, call: dict[str, Any]) -> dict[str, Any]:
                function = {"index": n, "name": call["name"], "arguments": call["arguments"]}
                return (
                    {"id": f"call_fake{n}", "function": function} if fake.tool_ids else {"function": function}
                )

            def _openai_call(self, n: int, call: dict[str, Any]) -> dict[str, Any]:
                arguments = json.dumps(call["arguments"])
                return {
                    "id": f"call-fake-{n}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments},
                }

            def _stream(self, model: str, content: str, finish: str, calls: list[dict[str, Any]]) -> None:
                """Chunked transfer: Ollama NDJSON or OpenAI server-sent events, a few words each. Tool
                calls come as those servers send them: Ollama's each whole in a line of its own, OpenAI's
                as ``delta.tool_calls`` pieces keyed by ``index``, the arguments' JSON split in three."""
                ollama = self.path == "/api/chat"
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson" if ollama else "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                words = content.split(" ")
                pieces = [
                    " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")
                    for i in range(0, len(words), 3)
                ]
                for n, call in enumerate(calls):
                    if ollama:
                        message = {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [self._ollama_call(n, call)],
                        }
                        self._chunk(json.dumps({"model": model, "message": message, "done": False}) + "\n")
                        continue
                    whole = self._openai_call(n, call)
                    arguments = whole["function"]["arguments"]
                    third = max(1, len(arguments) // 3 + 1)
                    deltas = [{**whole, "index": n, "function": {"name": call["name"], "arguments": ""}}]
                    deltas += [
                        {"index": n, "function": {"arguments": arguments[i : i + third]}}
                        for i in range(0, len(arguments), third)
                    ]
                    for delta in deltas:
                        choice = {"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}
                        line = {"object": "chat.completion.chunk", "model": model, "choices": [choice]}
                        self._chunk("data: " + json.dumps(line) + "\n\n")
                if calls and not content:
                    pieces = [] if ollama else [""]  # OpenAI's last chunk carries its finish_reason
                for n, piece in enumerate(pieces):
                    if n and fake.chunk_delay:
                        time.sleep(fake.chunk_delay)
                    if n and n == fake.stall_after:
                        time.sleep(fake.stall)
                    if ollama:
                        line = {
                            "model": model,
                            "message": {"role": "assistant", "content": piece},
                            "done": False,
                        }
                        self._chunk(json.dumps(line) + "\n")
                    else:
                        last = n == len(pieces) - 1 or not pieces
                        line = {
                            "object": "chat.completion.chunk",
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"content": piece},
                                    "finish_reason": finish if last else None,
                                }
                            ],
                        }
                        self._chunk("data: " + json.dumps(line) + "\n\n")
                if ollama:
                    end = {
                        "model": model,
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                        "done_reason": "stop" if finish == "tool_calls" else finish,
                        "prompt_eval_count": 10,
                        "eval_count": 5,
                    }
                    self._chunk(json.dumps(end) + "\n")
                else:
                    usage = {
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    }
                    self._chunk("data: " + json.dumps(usage) + "\n\n")
                    self._chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def total_calls(self) -> int:
        with self.lock:
            return sum(self.calls.values())

    def repeated_prompts(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.prompts.values() if n > 1)

    def repeated(self) -> list[str]:
        """The prompts asked more than once, each as its last 300 characters (for a failure's text)."""
        with self.lock:
            return [key[-300:] for key, n in self.prompts.items() if n > 1]

    def answer(self, messages: list[dict[str, Any]]) -> str:
        system = next((text_of(m) for m in messages if m.get("role") == "system"), "")
        user = next((text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
        goal = user.removeprefix("Goal: ").split("\n")[0][:80]
        if self.mode == "long":
            return " ".join(f"word{n}" for n in range(300))
        if "carrying out a plan" not in system:
            if self.mode == "empty":
                return ""
            if "numbered plan" in system:
                return "1. Look at the goal.\n2. Answer it."
            if "???" in goal:  # the goal is too unclear: the understand step asks back
                return json.dumps(
                    {
                        "clear": False,
                        "questions": ["Which project do you mean?", "What should the result look like?"],
                        "suggested_restatement": f"Describe the project named in: {goal.strip('? ')}",
                    }
                )
            return json.dumps({"clear": True, "understanding": f"The user wants: {goal}"}, ensure_ascii=False)
        if self.mode == "nonjson":
            return f"Sure! Here is my answer about {goal}, in plain words."
        if self.mode == "partial":
            return '{"tool": "finish", "args": {"answer": "Partial answer about ' + goal
        if self.mode == "empty":
            return ""
        if self.mode == "tool" and not any(m.get("role") == "assistant" for m in messages):
            return '{"tool": "list_directory", "args": {"path": "."}}'
        if self.mode == "steps":
            done = sum(1 for m in messages if m.get("role") == "assistant")
            if done < len(self.steps):
                return json.dumps(self.steps[done], ensure_ascii=False)
        return json.dumps({"tool": "finish", "args": {"answer": f"Done: {goal}"}}, ensure_ascii=False)

    def prompts_text(self) -> str:
        """Every prompt seen, as one text to search."""
        with self.lock:
            return "\n".join(self.prompts)

    def start(self) -> FakeLLM:
        self._thread = threading.Thread(target=self.server.serve_forever, name="fakellm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeLLM:
        """Started for the ``with`` block, stopped after it."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def text_of(message: dict[str, Any]) -> str:
    """A message's text: its content, or the text parts of an OpenAI content list."""
    content = message.get("content", "")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return str(content)


def images_in(messages: list[dict[str, Any]]) -> list[str]:
    """Images as Ollama (``images``) or an OpenAI-compatible server (``image_url`` parts) takes them."""
    found: list[str] = []
    for message in messages:
        found.extend(message.get("images") or [])
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    found.append(str(part["image_url"]["url"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--mode", default="normal")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed pieces")
    args = parser.parse_args()
    fake = FakeLLM(port=args.port, delay=args.delay, mode=args.mode, chunk_delay=args.chunk_delay)
    print(f"fake model server on {fake.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake.server.serve_forever()


if __name__ == "__main__":
    main()
