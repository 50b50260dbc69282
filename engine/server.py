"""The local OpenAI-compatible API, served from the model host's queue.

Editors, scripts and other chat front-ends talk to the loaded model the way they talk to
OpenAI: ``GET /v1/models``, ``POST /v1/chat/completions`` (streamed as server-sent events or
not) and ``POST /v1/completions``. Their requests wait in the same queue as the chat
window's, in turn.

Built on Starlette and uvicorn (with its pure-Python h11 protocol and asyncio loop): the
ASGI stack llama.cpp's own Python server, vLLM and most OpenAI-compatible servers use, kept
up by Encode, with streaming responses that notice a client going away, which is what lets
a dropped client cancel its generation. aiohttp would do as well but brings its own C
extensions (multidict, yarl, frozenlist) for nothing we need.

Binding: 127.0.0.1 unless asked; any other address only with an API key, which every
request must then send as ``Authorization: Bearer <key>``. CORS is off unless origins are
allowed by name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.chat_format import Channel, TemplateOptions
from engine.errors import MoeChatError
from engine.host import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    HostBusy,
    HostState,
    HostUnavailable,
    ModelHost,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplyPieces,
    Request,
    Ticket,
)
from engine.session import SamplingSettings, Stats

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# LM Studio's port: tools set up for a local OpenAI-compatible server often expect it.
DEFAULT_PORT = 1234
API_KEY_ENV = "MOE_CHAT_API_KEY"  # read by `moe-chat serve`, so the key stays out of `ps`
MAX_STOP_STRINGS = 4  # as OpenAI
# Finish reasons by the session's stop reasons
FINISH_REASONS = {"end": "stop", "stop": "stop", "length": "length", "context_full": "length"}


class ServerError(MoeChatError):
    """The server cannot start as asked (address in use, no key for a public address)."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()  # CORS; none: browsers' cross-origin calls fail


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServerConfig) -> None:
    """Refuse to listen beyond this computer without a key.

    Raises:
        ServerError: a non-loopback address and no API key.
    """
    if not is_loopback(config.host) and not config.api_key:
        raise ServerError(
            f"Listening on {config.host} lets other computers use the model, so it needs an "
            "API key.",
            "Set an API key, or listen on 127.0.0.1.",
        )


class ApiError(Exception):
    """An HTTP error in OpenAI's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


# -- reading requests ---------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ApiError(400, f"'{name}' must be a whole number of at least {low}.", param=name)
    return value


def sampling_from(body: dict[str, Any], n_ctx: int) -> SamplingSettings:
    """The sampling fields clients send (OpenAI's, and llama.cpp's top_k/min_p/
    repeat_penalty); what is left out keeps the app's defaults, except that, as in OpenAI's
    API and llama.cpp's server, nothing penalises repeats unless asked. Without max_tokens a
    reply may use the whole context."""
    sampling = SamplingSettings(repeat_penalty=1.0, max_tokens=n_ctx)
    changes: dict[str, Any] = {}
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("min_p", 0.0, 1.0),
        ("repeat_penalty", 0.0, 10.0),
    ):
        value = _number(body, name, low, high)
        if value is not None:
            changes[name] = value
    top_k = _integer(body, "top_k", 0)
    if top_k is not None:
        changes["top_k"] = top_k
    seed = _integer(body, "seed", -(2**63))
    if seed is not None:
        changes["seed"] = seed % 2**32  # the engine's seed is 32 bits
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) for s in stops)
        ):
            raise ApiError(
                400, f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS}.", "stop"
            )
        changes["stop"] = tuple(s for s in stops if s)
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "Only one choice per request is supported ('n' must be 1).", "n")
    return replace(sampling, **changes)


def _text_of(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(
                    400, "Only text content is supported.", param=f"messages[{index}].content"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ApiError(400, "A message's content must be text.", param=f"messages[{index}].content")


def chat_request_from(body: dict[str, Any], n_ctx: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, "Each message must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system prompt
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"Unsupported role {role!r}: use system, user or assistant.",
                param=f"messages[{index}].role",
            )
        reasoning = message.get("reasoning_content") or ""
        chat.append(ChatMessage(role, _text_of(message.get("content"), index), str(reasoning)))
    return ChatRequest(tuple(chat), sampling_from(body, n_ctx), template_options_from(body))


def template_options_from(body: dict[str, Any]) -> TemplateOptions:
    """OpenAI's ``reasoning_effort`` (gpt-oss), and ``chat_template_kwargs`` as llama.cpp's
    server and vLLM take them (``enable_thinking`` for Qwen3 and GLM)."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object.", "chat_template_kwargs")
    effort = body.get("reasoning_effort", kwargs.get("reasoning_effort"))
    if effort is not None and effort not in ("low", "medium", "high"):
        raise ApiError(400, "'reasoning_effort' must be low, medium or high.", "reasoning_effort")
    thinking = kwargs.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise ApiError(400, "'enable_thinking' must be true or false.", "chat_template_kwargs")
    return TemplateOptions(reasoning_effort=effort, enable_thinking=thinking)


def completion_request_from(body: dict[str, Any], n_ctx: int) -> CompletionRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be one non-empty string.", param="prompt")
    sampling = sampling_from(body, n_ctx)
    if "max_tokens" not in body:
        sampling = replace(sampling, max_tokens=16)  # OpenAI's default for completions
    return CompletionRequest(prompt, sampling)


def usage_of(stats: Stats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    }


# -- the app ------------------------------------------------------------------------------


def client_name(http: Any) -> str:
    """The queue's name for a request's client: all of one address take one turn."""
    return f"API {http.client.host}" if http.client else "API"


def create_app(host: ModelHost, config: ServerConfig) -> Any:
    """The ASGI app serving ``host``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error_response(error: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    def loaded_model() -> Any:
        model = host.model
        if model is None:
            raise ApiError(
                503, "No model is loaded in MoE Chat.", kind="server_error", code="no_model"
            )
        return model

    def model_entry(model: Any) -> dict[str, Any]:
        try:
            created = int(Path(model.path).stat().st_mtime)
        except OSError:
            created = 0
        return {"id": model.model_id, "object": "model", "created": created, "owned_by": "local"}

    async def read_json(request: HttpRequest) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def submit(request: Request, who: str) -> tuple[Ticket, asyncio.Queue[ReplyEvent]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ReplyEvent] = asyncio.Queue()

        def deliver(event: ReplyEvent) -> None:  # on the host's reader thread
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
                loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            return host.submit(request, who, deliver), events
        except HostBusy as exc:
            raise ApiError(429, str(exc), kind="rate_limit_error", code="busy") from None
        except HostUnavailable as exc:
            raise ApiError(503, str(exc), kind="server_error", code="no_model") from None

    def failure(event: ReplyFailed) -> ApiError:
        code = "engine_crashed" if event.crashed else "generation_failed"
        return ApiError(500, event.message, kind="server_error", code=code)

    def stopped() -> ApiError:
        """A reply the app stopped (the model was replaced, unloaded or tuned): OpenAI has no
        finish reason for that, and "stop" would pass a cut reply off as whole."""
        return ApiError(
            503,
            "The reply was stopped before it finished: the model was replaced, unloaded or "
            "tuned in MoE Chat.",
            kind="server_error",
            code="cancelled",
        )

    async def collect(
        http: HttpRequest, ticket: Ticket, events: asyncio.Queue[ReplyEvent]
    ) -> tuple[str, str, Stats]:
        """The whole reply; a client that goes away first cancels it."""

        async def watch() -> None:
            while True:
                message = await http.receive()
                if message["type"] == "http.disconnect":
                    ticket.cancel()
                    return

        watcher = asyncio.create_task(watch())
        text: list[str] = []
        reasoning: list[str] = []
        try:
            while True:
                event = await events.get()
                if isinstance(event, ReplyPieces):
                    for piece in event.pieces:
                        reasoning_piece = piece.channel is Channel.REASONING
                        (reasoning if reasoning_piece else text).append(piece.text)
                elif isinstance(event, ReplyFinished):
                    if event.stats.stop_reason == "cancelled":
                        raise stopped()
                    return "".join(text), "".join(reasoning), event.stats
                elif isinstance(event, ReplyFailed):
                    raise failure(event)
        finally:
            watcher.cancel()
            ticket.cancel()  # nothing if it finished

    def sse(data: dict[str, Any] | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    async def stream_events(
        ticket: Ticket,
        events: asyncio.Queue[ReplyEvent],
        chunk: Callable[[str, str, str | None], dict[str, Any]],
        usage_chunk: Callable[[Stats], dict[str, Any]] | None,
    ) -> AsyncIterator[str]:
        """Server-sent events; when the client goes away Starlette cancels this, and the
        ``finally`` cancels the generation."""
        try:
            yield sse(chunk("", "", None))
            while True:
                event = await events.get()
                if isinstance(event, ReplyPieces):
                    for piece in event.pieces:
                        if piece.channel is Channel.REASONING:
                            yield sse(chunk("", piece.text, None))
                        else:
                            yield sse(chunk(piece.text, "", None))
                elif isinstance(event, ReplyFinished) and event.stats.stop_reason == "cancelled":
                    yield sse(stopped().body())
                    break
                elif isinstance(event, ReplyFinished):
                    reason = FINISH_REASONS.get(event.stats.stop_reason, "stop")
                    yield sse(chunk("", "", reason))
                    if usage_chunk is not None:
                        yield sse(usage_chunk(event.stats))
                    break
                elif isinstance(event, ReplyFailed):
                    yield sse(failure(event).body())
                    break
            yield sse("[DONE]")
        finally:
            ticket.cancel()

    def sse_response(stream: AsyncIterator[str]) -> Response:
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def models(_request: HttpRequest) -> Response:
        model = host.model
        return JSONResponse(
            {"object": "list", "data": [model_entry(model)] if model is not None else []}
        )

    async def model_detail(request: HttpRequest) -> Response:
        model = loaded_model()
        if request.path_params["model"] != model.model_id:
            raise ApiError(
                404, f"The model {request.path_params['model']!r} is not loaded.", param="model"
            )
        return JSONResponse(model_entry(model))

    async def chat_completions(http: HttpRequest) -> Response:
        body = await read_json(http)
        model = loaded_model()
        request = chat_request_from(body, model.n_ctx)
        ticket, events = submit(request, client_name(http))
        reply_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if not body.get("stream"):
            text, reasoning, stats = await collect(http, ticket, events)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reasoning:
                message["reasoning_content"] = reasoning
            return JSONResponse(
                {
                    "id": reply_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model.model_id,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": FINISH_REASONS.get(stats.stop_reason, "stop"),
                        }
                    ],
                    "usage": usage_of(stats),
                }
            )

        def chunk(content: str, reasoning: str, finish: str | None) -> dict[str, Any]:
            delta: dict[str, Any] = {}
            if finish is None and not content and not reasoning:
                delta = {"role": "assistant", "content": ""}
            if content:
                delta["content"] = content
            if reasoning:
                delta["reasoning_content"] = reasoning
            return {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        def usage_chunk(stats: Stats) -> dict[str, Any]:
            return {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model.model_id,
                "choices": [],
                "usage": usage_of(stats),
            }

        options = body.get("stream_options") or {}
        wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return sse_response(
            stream_events(ticket, events, chunk, usage_chunk if wants_usage else None)
        )

    async def completions(http: HttpRequest) -> Response:
        body = await read_json(http)
        model = loaded_model()
        request = completion_request_from(body, model.n_ctx)
        ticket, events = submit(request, client_name(http))
        reply_id = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not body.get("stream"):
            text, _reasoning, stats = await collect(http, ticket, events)
            return JSONResponse(
                {
                    "id": reply_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model.model_id,
                    "choices": [choice(text, FINISH_REASONS.get(stats.stop_reason, "stop"))],
                    "usage": usage_of(stats),
                }
            )

        def chunk(content: str, _reasoning: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": reply_id,
                "object": "text_completion",
                "created": created,
                "model": model.model_id,
                "choices": [choice(content, finish)],
            }

        return sse_response(stream_events(ticket, events, chunk, None))

    async def on_api_error(_request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(_request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, str(exc.detail), kind=kind))

    async def on_unexpected(_request: HttpRequest, exc: Exception) -> Response:
        log.error("the API failed on a request", exc_info=exc)
        return error_response(ApiError(500, f"Internal error: {exc}", kind="server_error"))

    class BearerAuth:
        """Every request needs ``Authorization: Bearer <key>`` when a key is set."""

        def __init__(self, app: Any) -> None:
            self.app = app
            self.expected = f"Bearer {config.api_key}".encode()

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] != "OPTIONS":
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not secrets.compare_digest(given, self.expected):
                    error = ApiError(
                        401,
                        "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.",
                        code="invalid_api_key",
                    )
                    await error_response(error)(scope, receive, send)
                    return
            await self.app(scope, receive, send)

    middleware = []
    if config.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.allowed_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    if config.api_key:
        middleware.append(Middleware(BearerAuth))
    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model_detail, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        middleware=middleware,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )


# -- running ------------------------------------------------------------------------------


class ApiServer:
    """The API on a thread of its own (uvicorn's asyncio loop), until ``stop``."""

    def __init__(self, host: ModelHost, config: ServerConfig | None = None) -> None:
        self.host = host
        self.config = config or ServerConfig()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address = ""  # http://host:port, once started

    def start(self) -> str:
        """Listen and serve; returns the base address (``http://127.0.0.1:1234``).

        Raises:
            ServerError: no key for a public address, the port is taken, or the address is
                not this computer's.
        """
        import uvicorn

        check_config(self.config)
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if sys.platform != "win32":  # on Windows this would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"Port {self.config.port} on {self.config.host} is already in use (another "
                    "server, perhaps LM Studio, or MoE Chat itself).",
                    "Choose another port.",
                ) from None
            raise ServerError(f"Cannot listen on {self.config.host}: {exc.strerror}.") from None
        sock.listen(128)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.address = f"http://{shown}:{bound_port}"
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self.host, self.config),
                loop="asyncio",
                http="h11",
                ws="none",
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=3,
            )
        )
        self._server = server
        started = threading.Event()

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            finally:
                started.set()
                sock.close()

        self._thread = threading.Thread(target=run, name="api-server", daemon=True)
        self._thread.start()
        while not server.started and not started.is_set():
            started.wait(0.02)
        if not server.started:
            raise ServerError(f"The API server on {self.address} did not start.")
        log.info("API listening on %s", self.address)
        return self.address

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end open streams (their generations are cancelled), and return."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._server = self._thread = None


def serve_main(argv: list[str] | None = None) -> int:
    """``moe-chat serve MODEL.gguf``: the API without a window, until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="moe-chat serve", description="Serve a model on a local OpenAI-compatible API."
    )
    parser.add_argument("model", type=Path, help="the .gguf file to serve")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"or set ${API_KEY_ENV}"
    )
    parser.add_argument("--ctx", type=int, default=4096, help="context length in tokens")
    parser.add_argument(
        "--allow-origin", action="append", default=[], help="a web origin allowed by CORS"
    )
    parser.add_argument(
        "--workers",
        default="",
        metavar="H:P[,H:P…]",
        help="other computers (moe-chat worker) whose memory the model may use",
    )
    args = parser.parse_args(argv)
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = ServerConfig(args.host, args.port, args.api_key or None, tuple(args.allow_origin))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        check_config(config)
        with ModelHost() as host:
            print(f"Loading {args.model.name}…", flush=True)
            host.load(args.model, args.ctx, workers)
            while host.state is HostState.LOADING and not stop.wait(0.2):
                pass  # a signal stops the load too
            if stop.is_set():
                return 0
            model = host.wait_loaded(0)  # raises the load's own error
            server = ApiServer(host, config)
            address = server.start()
            print(f"Serving {model.name} ({model.model_id}) placed as: {model.placement}")
            for note in model.notes:
                print(f"Note: {note}")
            print(f"OpenAI-compatible API at {address}/v1", flush=True)
            if config.api_key:
                print("Requests need 'Authorization: Bearer <your key>'.", flush=True)
            while not stop.wait(0.5):
                pass
            print("Stopping…", flush=True)
            server.stop()
    except MoeChatError as exc:
        print(f"moe-chat serve: {exc}", file=sys.stderr)
        return 1
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
