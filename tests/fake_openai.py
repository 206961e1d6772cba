"""A local HTTP server that speaks enough of the OpenAI chat API (as vLLM, llama.cpp's server
and LiteLLM serve it) for ChatOpenAI and the ``openai`` client, with the faults a real one
has.

Use the ``fake_openai`` fixture or :class:`FakeOpenAI` directly::

    fake_openai.script.append(tool_call("image", attachment_id="att_1"))
    fake_openai.script.append(answer("A cat."))
    settings = Settings(llm_api="openai", llm_base_url=fake_openai.url, ...)

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (streamed as server-sent events
in chunked encoding, or one JSON). Text streams a word per chunk; a tool call's arguments
stream in :attr:`Scripted.pieces` parts over several chunks (its id and name in the first), as
vLLM sends them; the last chunk carries ``usage``. Faults: a wrong API key answers 401, an
unknown model 404, tools to a server without tool calling 400 (vLLM's words), a
``json_schema`` response format to one without it 500 (llama-cpp-python's words); a scripted
reply can be an HTTP error with any body and headers (:func:`failure`), break off after its
first words (:func:`cut`), or stream words forever (:func:`endless`). Every request is
recorded in :attr:`FakeOpenAI.requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fake_ollama import _pieces
from tests.local_http import LocalHTTPServer, QuietHandler

#: What vLLM answers when tools are sent and it was started without tool calling.
VLLM_NO_TOOLS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'

#: What llama-cpp-python's server answers to a ``json_schema`` response_format.
LLAMA_CPP_NO_JSON_SCHEMA = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
                            "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}")


@dataclass
class Scripted:
    """One scripted chat reply: text and/or tool calls, or an HTTP error, or a broken stream."""

    content: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pieces: int = 3  # how many chunks each tool call's arguments are split over
    status: int = 200
    body: str = ""  # an error's body, as sent
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # words sent before the connection breaks off
    every: float | None = None  # endless: a word every this many seconds, until the client leaves


def answer(text: str) -> Scripted:
    return Scripted(content=text)


def tool_call(*calls: tuple[str, dict[str, Any]] | str, pieces: int = 3, **arguments: Any) -> Scripted:
    """``tool_call("image", attachment_id="att_1")`` or ``tool_call(("a", {...}), ("b", {...}))``."""
    pairs = [(calls[0], arguments)] if len(calls) == 1 and isinstance(calls[0], str) else list(calls)
    return Scripted(tool_calls=pairs, pieces=pieces)  # type: ignore[arg-type]


def failure(status: int, body: str | dict[str, Any], *, content_type: str = "application/json",
            **headers: str) -> Scripted:
    text = body if isinstance(body, str) else json.dumps(body)
    return Scripted(status=status, body=text, content_type=content_type,
                    headers={name.replace("_", "-"): value for name, value in headers.items()})


def cut(text: str, after: int) -> Scripted:
    """``text`` streams, and the connection breaks off after ``after`` words."""
    return Scripted(content=text, cut_after=after)


def endless(every: float) -> Scripted:
    """A reply that streams a word every ``every`` seconds and never ends."""
    return Scripted(every=every)


class FakeOpenAI(LocalHTTPServer):
    """A threaded fake OpenAI-compatible server on 127.0.0.1 and a free port (its API under /v1)."""

    def __init__(self, models: list[str] | None = None, *, api_key: str | None = None, tools: bool = True,
                 json_schema: bool = True) -> None:
        self.models = list(models if models is not None else ["llama3.1:8b", "qwen2.5:7b"])
        self.api_key = api_key
        self.tools = tools  # False: like vLLM started without --enable-auto-tool-choice
        self.json_schema = json_schema  # False: like llama-cpp-python's server (json_object + schema only)
        self.script: list[Scripted] = []
        self.requests: list[dict[str, Any]] = []  # {"path", "headers" (lower-case names), "body"}
        self._lock = threading.Lock()
        super().__init__(_handler(self))

    @property
    def url(self) -> str:
        return super().url + "/v1"

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    def next_reply(self) -> Scripted:
        with self._lock:
            if not self.script:
                return failure(500, {"error": {"message": "fake openai: no scripted reply left"}})
            return self.script.pop(0)


def _handler(fake: FakeOpenAI) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": {}})
            if not self.authorised():
                return
            if self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in fake.models]})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            if not self.authorised():
                return
            if self.path != "/v1/chat/completions":
                self.send_json(404, {"detail": "Not Found"})
            elif body.get("model") not in fake.models:
                self.send_json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                               "type": "NotFoundError", "code": 404}})
            elif body.get("tools") and not fake.tools:
                self.send_json(400, {"error": {"message": VLLM_NO_TOOLS, "type": "BadRequestError", "code": 400}})
            elif (body.get("response_format") or {}).get("type") == "json_schema" and not fake.json_schema:
                self.send_json(500, {"error": {"message": LLAMA_CPP_NO_JSON_SCHEMA, "type": "internal_server_error"}})
            else:
                self.reply(body, fake.next_reply())

        def authorised(self) -> bool:
            if fake.api_key is None or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                return True
            self.send_json(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}})
            return False

        def reply(self, body: dict[str, Any], reply: Scripted) -> None:
            if reply.status != 200:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body.encode())))
                self.end_headers()
                self.wfile.write(reply.body.encode())
                return
            model = body["model"]
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": reply.content}
                if reply.tool_calls:
                    message["tool_calls"] = [_call(i, name, json.dumps(args)) for i, (name, args)
                                             in enumerate(reply.tool_calls)]
                self.send_json(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                     "usage": _USAGE})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self.stream(model, body, reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left (an endless reply cut off, or a cancelled one)

        def stream(self, model: str, body: dict[str, Any], reply: Scripted) -> None:
            self.event(_chunk(model, {"role": "assistant", "content": ""}))
            if reply.every is not None:
                while True:
                    self.event(_chunk(model, {"content": "word "}))
                    time.sleep(reply.every)
            for number, piece in enumerate(_pieces(reply.content) if reply.content else []):
                if reply.cut_after is not None and number == reply.cut_after:
                    self.wfile.write(b"40\r\ndata: {\"id\": \"chatcmpl-1\", \"obj")  # a chunk half sent
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.event(_chunk(model, {"content": piece}))
            for index, (name, args) in enumerate(reply.tool_calls):
                text = json.dumps(args, ensure_ascii=False)
                size = -(-len(text) // reply.pieces)
                parts = [text[i:i + size] for i in range(0, len(text), size)] or [""]
                self.event(_chunk(model, {"tool_calls": [_call(index, name, parts[0])]}))
                for part in parts[1:]:
                    self.event(_chunk(model, {"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
            finish = "tool_calls" if reply.tool_calls else "stop"
            self.event(_chunk(model, {}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                self.event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                            "choices": [], "usage": _USAGE})
            self.event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def event(self, data: dict[str, Any] | str) -> None:
            payload = f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

    return Handler


_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _call(index: int, name: str, arguments: str) -> dict[str, Any]:
    return {"index": index, "id": f"call_{index}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@pytest.fixture()
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started :class:`FakeOpenAI` serving llama3.1:8b and qwen2.5:7b, with tool calling, no key."""
    server = FakeOpenAI().start()
    yield server
    server.stop()
