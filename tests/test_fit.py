"""The pure parts of talking to real model servers: fitting a request to a context window, what
a server says of itself, how a streamed answer ended, and the output caps of the models file."""

from __future__ import annotations

from pathlib import Path

import pytest

from victoria.actors.llm_runner import fit, protocols, traits
from victoria.errors import LLMContextError, LLMProtocolError
from victoria.events.contracts import ChatMessage, ToolCallPart
from victoria.runtime import modelservers


def transcript(results: int, size: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are careful."), ChatMessage("user", "Goal: fix the test")]
    for n in range(results):
        messages += [
            ChatMessage("assistant", f"step {n}"),
            ChatMessage("user", f"Result {n}:\n" + "r" * size),
        ]
    return messages


def test_a_request_that_fits_is_sent_as_it_is() -> None:
    messages = transcript(2, 100)
    fitted = fit.fit(messages, context=4096, cap=512, estimator=fit.Estimator())
    assert fitted.messages == messages and fitted.max_tokens == 512 and fitted.trimmed is None


def test_with_no_context_known_nothing_is_changed() -> None:
    messages = transcript(5, 50_000)
    assert fit.fit(messages, context=None, cap=512, estimator=fit.Estimator()).messages == messages


def test_the_cap_shrinks_before_anything_is_cut() -> None:
    messages = transcript(1, 3000)
    estimator = fit.Estimator()
    need = estimator.tokens(messages)
    fitted = fit.fit(messages, context=need + 300, cap=1024, estimator=estimator)
    assert fitted.messages == messages
    assert fitted.max_tokens == 300 and fitted.trimmed is None


def test_the_longest_tool_outputs_are_cut_first_and_the_goal_is_kept() -> None:
    messages = transcript(3, 600)
    messages[3] = ChatMessage("user", "Result 0:\n" + "r" * 9000)  # one long output among short ones
    fitted = fit.fit(messages, context=1500, cap=256, estimator=fit.Estimator())
    assert len(fitted.messages) == len(messages)  # nothing left out: cutting the long one was enough
    assert "cut to fit the model's context" in fitted.messages[3].content
    assert fitted.messages[:2] == messages[:2]
    assert fitted.trimmed == "1 long messages cut to fit 1500 tokens"


def test_then_the_oldest_turns_are_left_out_and_the_last_is_kept() -> None:
    messages = transcript(12, 1000)
    fitted = fit.fit(messages, context=2000, cap=256, estimator=fit.Estimator())
    assert fitted.messages[:2] == messages[:2]
    assert fitted.messages[-1].content.startswith("Result 11:")
    assert "earlier messages left out" in fitted.messages[2].content
    assert "oldest messages left out" in str(fitted.trimmed)
    assert fit.Estimator().tokens(fitted.messages) + fitted.max_tokens <= 2000


def test_a_goal_longer_than_the_context_is_a_clear_error() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", "g" * 30_000)]
    with pytest.raises(LLMContextError, match="the model's context holds 2048"):
        fit.fit(messages, context=2048, cap=256, estimator=fit.Estimator())


def test_russian_text_counts_as_more_tokens_than_english_of_the_same_length() -> None:
    estimator = fit.Estimator()
    english = estimator.tokens([ChatMessage("user", "find the failing test " * 20)])
    russian = estimator.tokens([ChatMessage("user", "найди падающий тест и " * 20)])
    assert russian > 2 * english


def test_the_estimate_follows_what_the_server_counted() -> None:
    estimator = fit.Estimator()
    messages = [ChatMessage("user", "x" * 3000)]
    before = estimator.tokens(messages)
    estimator.learn(messages, before * 2)
    assert estimator.tokens(messages) >= 2 * before - 2


@pytest.mark.parametrize(
    ("text", "context"),
    [
        (  # llama-cpp-python, vLLM
            "This model's maximum context length is 8192 tokens. However, you requested 9041 tokens",
            8192,
        ),
        (  # llama-server
            '{"error":{"code":400,"message":"the request exceeds the available context size","type":'
            '"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}',
            4096,
        ),
        ("Requested tokens (9000) exceed context window of 2048", 2048),
    ],
)
def test_an_overflow_error_names_the_context(text: str, context: int) -> None:
    assert traits.is_overflow(text)
    assert traits.context_from_error(text) == context


def test_ollama_says_a_models_context_and_tools() -> None:
    show = {"model_info": {"llama.context_length": 131072}, "capabilities": ["completion", "tools"]}
    assert traits.ollama_show(show) == traits.ModelTraits(context=131072, tools=True)
    ps = {"models": [{"name": "qwen3:8b", "context_length": 8192}, {"name": "old"}]}
    assert traits.ollama_loaded_context(ps) == {"qwen3:8b": 8192}


async def test_a_server_is_known_by_what_it_answers() -> None:
    answers = {
        "http://a/props": {
            "default_generation_settings": {"n_ctx": 4096},
            "total_slots": 4,
            "chat_template": "x",
        },
        "http://b/openapi.json": {"info": {"title": "🦙 llama.cpp Python API"}},
    }

    async def get(url: str) -> object:
        if url not in answers:
            raise OSError(url)
        return answers[url]

    assert await traits.discover(get, "http://a", "openai", {}) == traits.Traits(
        kind="llama.cpp", context=4096, slots=4, tools=False, answers_while_generating=True
    )
    assert await traits.discover(get, "http://b", "openai", {}) == traits.Traits(
        kind="llama-cpp-python", slots=1, tools=False
    )
    vllm = {"data": [{"id": "m", "max_model_len": 32768}]}
    assert (await traits.discover(get, "http://c", "openai", vllm)).context == 32768
    assert (await traits.discover(get, "http://d", "openai", {})).kind == "openai"
    assert (await traits.discover(get, "http://e", "ollama", {})).answers_while_generating


def test_a_stream_says_how_it_ended() -> None:
    cut = protocols.StreamReader("openai", "m")
    cut.feed('data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":"length"}]}')
    cut.feed("data: [DONE]")
    assert cut.completion().finish_reason == "length"
    interrupted = protocols.StreamReader("openai", "m")
    interrupted.feed('data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}')
    interrupted.feed("data: [DONE]")  # llama-cpp-python, when another request arrived
    assert interrupted.completion().finish_reason == "interrupted"
    ollama = protocols.StreamReader("ollama", "m")
    ollama.feed('{"message":{"content":"Hi"},"done":true,"done_reason":"length"}')
    assert ollama.completion().finish_reason == "length"
    with pytest.raises(LLMProtocolError, match="without sending anything"):
        protocols.StreamReader("openai", "m").completion()


def test_the_cap_goes_where_each_protocol_takes_it() -> None:
    messages = [ChatMessage("user", "hi")]
    openai = protocols.request_body("openai", "m", messages, json_mode=False, max_tokens=64)
    assert openai["max_tokens"] == 64
    ollama = protocols.request_body("ollama", "m", messages, json_mode=False, max_tokens=64, num_ctx=8192)
    assert ollama["options"] == {"num_predict": 64, "num_ctx": 8192}


def test_caps_are_read_per_purpose_server_and_model(tmp_path: Path) -> None:
    assert modelservers.parse_caps("plan=10, step=20") == (("plan", 10), ("step", 20))
    with pytest.raises(ValueError, match="caps are set for understand, plan, step, answer"):
        modelservers.parse_caps("think=10")
    with pytest.raises(ValueError, match="positive number of tokens"):
        modelservers.parse_caps("plan=lots")
    path = tmp_path / "models.toml"
    path.write_text(
        '[[server]]\nurl = "http://h:1"\ncontext = 8192\n[server.caps]\nplan = 9\n[server.caps.big]\nplan = 99\n'
    )
    (server,) = modelservers.load_file(path, "ollama")
    assert server.context == 8192
    assert server.cap_for("big", "plan") == 99
    assert server.cap_for("small", "plan") == 9
    assert server.cap_for("small", "step") is None


def test_the_models_file_says_which_servers_and_models_take_tools(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[[server]]\nurl = "http://a:1"\ntools = false\n'
        '[[server]]\nurl = "http://b:2"\n[server.tools]\n"plain" = false\n"qwen3:8b" = true\n'
        '[[server]]\nurl = "http://c:3"\n'
    )
    a, b, c = modelservers.load_file(path, "openai")
    assert a.tools_for("anything") is False
    assert (b.tools_for("plain"), b.tools_for("qwen3:8b"), b.tools_for("other")) == (False, True, None)
    assert c.tools_for("anything") is None
    path.write_text('[[server]]\nurl = "http://a:1"\ntools = "no"\n')
    with pytest.raises(ValueError, match="server 1: tools must be true or false"):
        modelservers.load_file(path, "openai")


def test_a_tool_call_is_left_out_only_with_its_results_and_a_cut_result_keeps_its_call_id() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", "Goal: read")]
    for n in range(12):
        messages += [
            ChatMessage("assistant", "", tool_calls=[ToolCallPart(f"c{n}", "read_file", {"path": str(n)})]),
            ChatMessage("tool", "r" * 3000, tool_call_id=f"c{n}", name="read_file"),
        ]
    fitted = fit.fit(messages, context=1500, cap=256, estimator=fit.Estimator())
    assert "oldest messages left out" in str(fitted.trimmed) and "long messages cut" in str(fitted.trimmed)
    assert fitted.messages[-1].tool_call_id == "c11"
    called: set[str] = set()
    for message in fitted.messages:
        if message.role == "tool":  # every result follows the call it answers, and says which it is
            assert message.tool_call_id in called and message.name == "read_file"
        called = {call.id for call in message.tool_calls} if message.tool_calls else called
    answered = {m.tool_call_id for m in fitted.messages if m.role == "tool"}
    assert answered == {call.id for m in fitted.messages for call in m.tool_calls}


def test_the_tool_table_counts_in_the_estimate() -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 3000, "parameters": {}}}]
    messages = [ChatMessage("user", "hi")]
    extra = fit.tool_tokens(tools)
    assert extra >= 1000 and fit.tool_tokens([]) == 0
    assert fit.Estimator().tokens(messages, extra) > fit.Estimator().tokens(messages) + 900
    with pytest.raises(LLMContextError):
        fit.fit(messages, context=1000, cap=256, estimator=fit.Estimator(), extra=extra)
