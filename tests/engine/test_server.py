"""engine/server.py driven by the official ``openai`` client against the real engine.

The server listens on 127.0.0.1 on a free port; the model runs in the host's child process.
Every reply is checked against the same request answered by a Session in this process.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine.chat_format import TemplateOptions
from engine.host import HostEvent, ModelHost, RequestEnded
from engine.server import ApiServer, ServerConfig, ServerError, check_config, is_loopback
from engine.session import SamplingSettings, Session
from engine.synthetic import build_arch_model
from tests.helpers.templates import templates_dir

TIMEOUT_S = 60
KEY = "sk-local-test-key"
HELLO = [{"role": "user", "content": "hello"}]


def serve(model: Path, config: ServerConfig, n_ctx: int = 512) -> Iterator[tuple[str, ModelHost]]:
    with ModelHost() as host:
        host.load(model, n_ctx)
        host.wait_loaded(TIMEOUT_S)
        server = ApiServer(host, config)
        address = server.start()
        try:
            yield address, host
        finally:
            server.stop()


@pytest.fixture
def served(synthetic_model: Path) -> Iterator[tuple[str, ModelHost]]:
    yield from serve(synthetic_model, ServerConfig(port=0))


@pytest.fixture
def client(served: tuple[str, ModelHost]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def oracle(model: Path, messages: list[dict[str, str]], sampling: SamplingSettings, **kw: object):
    with Session(model) as session:
        return session.chat(messages, sampling, **kw)  # type: ignore[arg-type]


def test_models_lists_the_loaded_model(client: openai.OpenAI) -> None:
    [model] = client.models.list().data
    assert model.id == "synthetic-moe" and model.object == "model"
    assert client.models.retrieve("synthetic-moe").id == "synthetic-moe"
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        client.models.retrieve("gpt-4o")


def test_chat_completion_equals_the_engines_reply(
    client: openai.OpenAI, synthetic_model: Path
) -> None:
    reply = client.chat.completions.create(
        model="synthetic-moe", messages=HELLO, temperature=0, max_tokens=20
    )
    expected = oracle(synthetic_model, HELLO, SamplingSettings.greedy(20))
    [choice] = reply.choices
    assert choice.message.content == expected.text and choice.message.role == "assistant"
    assert choice.finish_reason == ("length" if expected.stats.stop_reason == "length" else "stop")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected.stats.prompt_tokens
    assert reply.usage.completion_tokens == expected.stats.generated_tokens == 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 20
    assert reply.model == "synthetic-moe" and reply.id.startswith("chatcmpl-")


def test_streamed_chat_is_the_same_reply_in_pieces(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="any", messages=HELLO, temperature=0, max_tokens=24
    )
    chunks = list(
        client.chat.completions.create(
            model="any",
            messages=HELLO,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24


def test_sampling_fields_are_honoured(client: openai.OpenAI, synthetic_model: Path) -> None:
    def ask(**fields: object) -> str:
        reply = client.chat.completions.create(model="m", messages=HELLO, **fields)  # type: ignore[call-overload]
        return reply.choices[0].message.content or ""

    sampled = {"temperature": 1.5, "top_p": 0.9, "max_tokens": 16}
    first = ask(seed=7, **sampled)
    assert ask(seed=7, **sampled) == first  # the same seed, the same reply
    assert any(ask(seed=s, **sampled) != first for s in (8, 9, 10))
    expected = oracle(
        synthetic_model,
        HELLO,
        SamplingSettings(temperature=1.5, top_p=0.9, seed=7, max_tokens=16, repeat_penalty=1.0),
    )
    assert first == expected.text  # the engine's sampler with the same settings
    whole = ask(temperature=0, max_tokens=16)
    stop = whole.strip()[2:4]
    stopped = client.chat.completions.create(
        model="m", messages=HELLO, temperature=0, max_tokens=16, stop=[stop, "never"]
    )
    assert stopped.choices[0].message.content == whole[: whole.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_continue_plain_text(client: openai.OpenAI, synthetic_model: Path) -> None:
    reply = client.completions.create(
        model="synthetic-moe", prompt="user: hello", temperature=0, max_tokens=12
    )
    with Session(synthetic_model) as session:
        pieces = session.complete("user: hello", SamplingSettings.greedy(12))
        expected = "".join(p.text for p in pieces)
    assert reply.choices[0].text == expected
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    stop = expected.strip()[1:3]
    stopped = client.completions.create(
        model="synthetic-moe", prompt="user: hello", temperature=0, max_tokens=12, stop=stop
    )
    assert stopped.choices[0].text == expected[: expected.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="synthetic-moe", prompt="user: hello", temperature=0, max_tokens=12, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_reasoning_comes_apart_from_the_answer(tmp_path: Path) -> None:
    """A template that opens <think> in the prompt (DeepSeek-R1's, with thinking on): what the
    model writes up to </think> is reasoning_content, as the engine splits it."""
    template = (templates_dir() / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    model = build_arch_model(tmp_path / "thinker.gguf", "qwen3moe", chat_template=template)
    thinking = {"chat_template_kwargs": {"enable_thinking": True}}
    expected = oracle(
        model, HELLO, SamplingSettings.greedy(16), options=TemplateOptions(enable_thinking=True)
    )
    assert expected.reasoning
    for address, _host in serve(model, ServerConfig(port=0)):
        client = openai.OpenAI(base_url=address + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="thinker", messages=HELLO, temperature=0, max_tokens=16, extra_body=thinking
        )
        message = reply.choices[0].message
        assert message.reasoning_content == expected.reasoning  # type: ignore[attr-defined]
        assert (message.content or "") == expected.text
        chunks = client.chat.completions.create(
            model="thinker",
            messages=HELLO,
            temperature=0,
            max_tokens=16,
            stream=True,
            extra_body=thinking,
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        streamed = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        assert streamed == expected.reasoning
        assert "".join(d.content or "" for d in deltas) == expected.text


def test_a_key_is_required_once_set(synthetic_model: Path) -> None:
    for address, _host in serve(synthetic_model, ServerConfig(port=0, api_key=KEY)):
        wrong = openai.OpenAI(base_url=address + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            wrong.models.list()
        assert raised.value.status_code == 401
        assert raised.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        right = openai.OpenAI(base_url=address + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in right.models.list().data] == ["synthetic-moe"]


def test_a_malformed_request_gets_400_and_loses_nothing(
    served: tuple[str, ModelHost], client: openai.OpenAI
) -> None:
    address, host = served
    port = int(address.rsplit(":", 1)[1])

    def post(body: bytes) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        connection.request(
            "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        result = response.status, json.loads(response.read())
        connection.close()
        return result

    for body, words in (
        (b'{"messages": [', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "non-empty list"),
        (b'{"messages": [{"role": "tool", "content": "x"}]}', "Unsupported role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "Only text"),
    ):
        status, error = post(body)
        assert status == 400, body
        assert words in error["error"]["message"] and error["error"]["type"]
    assert host.queue_state().running is None and not host.queue_state().waiting
    assert client.chat.completions.create(model="m", messages=HELLO, max_tokens=4).choices


def test_a_client_that_goes_away_cancels_its_generation(synthetic_model: Path) -> None:
    # Greedy never ends early here: ~2000 tokens fill the context, far more than the time a
    # closed connection takes to be seen.
    ended: queue.Queue[HostEvent] = queue.Queue()
    for address, host in serve(synthetic_model, ServerConfig(port=0), n_ctx=4096):
        host.add_listener(lambda e: ended.put(e) if isinstance(e, RequestEnded) else None)
        port = int(address.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        request = {"messages": HELLO, "stream": True, "max_tokens": 100_000, "temperature": 0}
        body = json.dumps(request).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while received.count(b"data: ") < 3:  # the reply is streaming
            received += sock.recv(4096)
        sock.close()
        event = ended.get(timeout=TIMEOUT_S)
        assert isinstance(event, RequestEnded) and event.stop_reason == "cancelled"
        assert event.info.client == "API 127.0.0.1"


def test_binding_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.20")
    with pytest.raises(ServerError, match="needs an API key"):
        check_config(ServerConfig(host="0.0.0.0"))
    check_config(ServerConfig(host="0.0.0.0", api_key=KEY))  # allowed, with a key
    check_config(ServerConfig(host="127.0.0.2"))


def test_a_port_in_use_is_a_clear_error(served: tuple[str, ModelHost]) -> None:
    address, host = served
    port = int(address.rsplit(":", 1)[1])
    with pytest.raises(ServerError, match=f"Port {port} on 127.0.0.1 is already in use"):
        ApiServer(host, ServerConfig(port=port)).start()


def test_cors_is_off_unless_origins_are_allowed(synthetic_model: Path) -> None:
    def preflight(address: str) -> dict[str, str]:
        host, port = address.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        connection.request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={"Origin": "http://app.test", "Access-Control-Request-Method": "POST"},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        return {k.lower(): v for k, v in response.getheaders()}

    for address, _host in serve(synthetic_model, ServerConfig(port=0)):
        assert "access-control-allow-origin" not in preflight(address)
    allowed = ServerConfig(port=0, allowed_origins=("http://app.test",))
    for address, _host in serve(synthetic_model, allowed):
        assert preflight(address)["access-control-allow-origin"] == "http://app.test"


def test_serve_command_prints_its_address_and_stops_on_sigterm(synthetic_model: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", str(synthetic_model), "--port", "0", "--ctx", "512"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "/v1" in line or not line:
                break
        address = lines[-1].split(" at ")[-1].strip()
        assert address.startswith("http://127.0.0.1:") and address.endswith("/v1"), lines
        client = openai.OpenAI(base_url=address, api_key="x", max_retries=0)
        assert client.chat.completions.create(model="m", messages=HELLO, max_tokens=4).choices
        process.terminate()
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Stopped." in out
