"""A local HTTP server that speaks enough of Ollama's API for ChatOllama and the ollama client.

Use the ``fake_ollama`` fixture (registered for every test by ``tests/conftest.py``) or
:class:`FakeOllama` directly::

    fake_ollama.script.append(tool_call("image", {"attachment_id": "att_1"}))
    fake_ollama.script.append(answer("A cat."))
    settings = Settings(ollama_host=fake_ollama.url, ...)

Endpoints: ``GET /api/version``, ``GET /api/tags``, ``POST /api/show`` (with ``capabilities``
and ``model_info``, with what :attr:`FakeOllama.model_info` adds),
``POST /api/chat`` (streamed NDJSON or one JSON; ``tools``; ``message.tool_calls``; an empty
``messages`` list loads the model like Ollama does; a request of system messages alone is answered
at once, without using the script: the agent's warm-up). Each model's chat template is
``templates[name]`` (default ``{{ .Prompt }}``, which says nothing of tools). Like Ollama's prompt
cache, ``prompt_eval_count`` counts only what a request adds to the previous one of the same model
(the request's tools and messages as JSON, four characters a token). Failure modes: an unknown model answers
404 ``model '...' not found``; a model without the "tools" capability answers 400
``... does not support tools`` when tools are sent; a message with ``images`` to a model without
the "vision" capability answers 500 (Ollama refuses it too); :func:`slow` delays a scripted reply;
:func:`failure` answers an HTTP error (``html=True``: a proxy's HTML page); :func:`endless`
streams words forever. A model with a script of its own in :attr:`FakeOllama.scripts` answers
from it (a vision model beside the chat model), the others from :attr:`FakeOllama.script`.
Every request is recorded in :attr:`FakeOllama.requests`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.local_http import LocalHTTPServer, QuietHandler

#: Capabilities Ollama reports for a model with native tool calling, and for plain llama3.
TOOLS = ["completion", "tools"]
NO_TOOLS = ["completion"]
#: ... for a vision-language model (qwen2.5vl: it also calls tools) and for llama3.2-vision.
VISION = ["completion", "vision", "tools"]
VISION_ONLY = ["completion", "vision"]


@dataclass
class Scripted:
    """One scripted /api/chat reply: text and/or tool calls, optionally after a delay,
    or an HTTP error."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0
    status: int = 200
    error: str = ""
    html: bool = False  # the error as an HTML page (a proxy's), not Ollama's JSON
    every: float | None = None  # endless: a word every this many seconds, until the client leaves


def answer(text: str) -> Scripted:
    return Scripted(content=text)


def tool_call(*calls: tuple[str, dict[str, Any]] | str, **arguments: Any) -> Scripted:
    """``tool_call("image", attachment_id="att_1")`` or ``tool_call(("a", {...}), ("b", {...}))``."""
    if len(calls) == 1 and isinstance(calls[0], str):
        pairs = [(calls[0], arguments)]
    else:
        pairs = list(calls)  # type: ignore[arg-type]
    return Scripted(tool_calls=[{"function": {"name": name, "arguments": args}} for name, args in pairs])


def slow(seconds: float, reply: Scripted | None = None) -> Scripted:
    reply = reply or answer("late answer")
    reply.delay = seconds
    return reply


def failure(status: int, error: str, *, html: bool = False) -> Scripted:
    return Scripted(status=status, error=error, html=html)


def endless(every: float) -> Scripted:
    """A streamed reply that sends a word every ``every`` seconds and never ends."""
    return Scripted(every=every)


@dataclass
class Request:
    method: str
    path: str
    body: dict[str, Any]
    #: For a chat request: the tokens it added to the previous request's prompt (as answered).
    prompt_eval_count: int | None = None


class FakeOllama(LocalHTTPServer):
    """A threaded fake Ollama on 127.0.0.1 and a free port."""

    def __init__(self, models: dict[str, list[str]] | None = None) -> None:
        #: Pulled models and their capabilities (names as Ollama lists them, with a tag).
        self.models = dict(models if models is not None else {"llama3.1:8b": TOOLS, "llama3:latest": NO_TOOLS})
        #: Chat templates by model name (what /api/show reports); others get ``{{ .Prompt }}``.
        self.templates: dict[str, str] = {}
        self.script: list[Scripted] = []
        #: Scripts of particular models (by the name requested), used before :attr:`script`.
        self.scripts: dict[str, list[Scripted]] = {}
        #: What /api/show adds to a model's ``model_info``, by model (``general.architecture``...).
        self.model_info: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self._prompts: dict[str, str] = {}  # by model: the previous request's prompt
        self._lock = threading.Lock()
        super().__init__(_handler(self))

    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of /api/chat requests that asked for a reply (not the warm-up's empty load
        nor its reading of the system prompt)."""
        return [r.body for r in self.requests if r.path == "/api/chat" and r.body.get("messages")
                and not all(m.get("role") == "system" for m in r.body["messages"])]

    def model(self, name: str) -> list[str] | None:
        """Capabilities of a pulled model (``llama3`` means ``llama3:latest``), or None."""
        full = name if ":" in name else f"{name}:latest"
        return self.models.get(full)

    def next_reply(self, model: str = "") -> Scripted:
        with self._lock:
            script = self.scripts.get(model, self.script)
            if not script:
                return failure(500, "fake ollama: no scripted reply left")
            return script.pop(0)

    def images_sent(self, model: str | None = None) -> list[list[str]]:
        """The ``images`` (base64) of each chat request's messages (of ``model``, if given)."""
        return [[image for message in body["messages"] for image in message.get("images") or []]
                for body in self.chat_requests() if model is None or body.get("model") == model]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def evaluate(self, model: str, request: Request) -> int:
        """The prompt tokens ``request`` adds to the previous prompt of ``model`` (at least 1)."""
        prompt = json.dumps(request.body.get("tools") or []) + "".join(
            json.dumps({"role": m.get("role"), "content": m.get("content"), "tool_calls": m.get("tool_calls")},
                       ensure_ascii=False) for m in request.body.get("messages") or [])
        with self._lock:
            previous = self._prompts.get(model, "")
            shared = len(os.path.commonprefix([previous, prompt]))
            self._prompts[model] = prompt
            request.prompt_eval_count = max(1, (len(prompt) - shared) // 4)
            return request.prompt_eval_count


def _handler(fake: FakeOllama) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            fake.record(Request("GET", self.path, {}))
            if self.path == "/api/version":
                self.send_json(200, {"version": "0.12.0"})
            elif self.path == "/api/tags":
                self.send_json(200, {"models": [
                    {"name": name, "model": name, "size": 4_900_000_000, "digest": "0" * 64,
                     "modified_at": "2025-01-01T00:00:00Z", "details": {"family": "llama"}}
                    for name in fake.models]})
            else:
                self.send_json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            request = Request("POST", self.path, body)
            fake.record(request)
            model = str(body.get("model") or body.get("name") or "")
            capabilities = fake.model(model)
            if self.path not in ("/api/show", "/api/chat"):
                self.send_json(404, {"error": "not found"})
            elif capabilities is None:
                self.send_json(404, {"error": f"model '{model}' not found"})
            elif self.path == "/api/show":
                info = {"general.architecture": "llama", "llama.context_length": 131072,
                        **fake.model_info.get(model, {})}
                self.send_json(200, {"modelfile": "", "parameters": "",
                                     "template": fake.templates.get(model if ":" in model else f"{model}:latest", "{{ .Prompt }}"),
                                     "details": {"family": info["general.architecture"], "parameter_size": "8.0B"},
                                     "model_info": info, "capabilities": capabilities})
            elif body.get("tools") and "tools" not in capabilities:
                self.send_json(400, {"error": f"registry.ollama.ai/library/{model} does not support tools"})
            elif any(m.get("images") for m in body.get("messages") or []) and "vision" not in capabilities:
                self.send_json(500, {"error": "this model is missing data required for image input"})
            elif not body.get("messages"):
                self.send_json(200, {"model": model, "created_at": _now(), "done": True,
                                     "done_reason": "load", "message": {"role": "assistant", "content": ""}})
            else:
                self.chat(model, request)

        def chat(self, model: str, request: Request) -> None:
            body = request.body
            evaluated = fake.evaluate(model, request)
            if all(m.get("role") == "system" for m in body["messages"]):  # the prompt's start, read once
                self.send_json(200, {"model": model, "created_at": _now(), "done": True, "done_reason": "length",
                                     "message": {"role": "assistant", "content": ""},
                                     "prompt_eval_count": evaluated, "eval_count": 1})
                return
            reply = fake.next_reply(model)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.status != 200 and reply.html:
                self.send_bytes(reply.status, reply.error.encode(), "text/html")
                return
            if reply.status != 200:
                self.send_json(reply.status, {"error": reply.error})
                return
            if reply.every is not None:
                self.endless(model, reply.every)
                return
            message: dict[str, Any] = {"role": "assistant", "content": reply.content}
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            final = {"model": model, "created_at": _now(), "done": True, "done_reason": "stop",
                     "total_duration": 1_000_000, "prompt_eval_count": evaluated, "eval_count": 5}
            if not body.get("stream", True):
                self.send_json(200, {**final, "message": message})
                return
            parts = [{"model": model, "created_at": _now(), "done": False,
                      "message": {"role": "assistant", "content": piece}}
                     for piece in _pieces(reply.content)]
            if reply.tool_calls:
                parts.append({"model": model, "created_at": _now(), "done": False,
                              "message": {"role": "assistant", "content": "", "tool_calls": reply.tool_calls}})
            parts.append({**final, "message": {"role": "assistant", "content": ""}})
            data = b"".join(json.dumps(part).encode() + b"\n" for part in parts)
            self.send_bytes(200, data, "application/x-ndjson")

        def endless(self, model: str, every: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    line = json.dumps({"model": model, "created_at": _now(), "done": False,
                                       "message": {"role": "assistant", "content": "word "}}).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                    time.sleep(every)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client cut the reply off

    return Handler


def _pieces(text: str) -> list[str]:
    """Text cut into word-sized stream chunks that join back to it exactly."""
    return re.findall(r"\s*\S+\s*?(?=\s|$)|\s+$", text) or [""]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def unused_url() -> str:
    """A URL where nothing listens (for "Ollama is down")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def fake_ollama() -> Iterator[FakeOllama]:
    """A started :class:`FakeOllama` with llama3.1:8b (tools) and llama3:latest (no tools)."""
    server = FakeOllama().start()
    yield server
    server.stop()
