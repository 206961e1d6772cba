"""What the agent needs of a language model, whichever server answers: the :class:`ChatLLM`
protocol, what a status check says, the errors a person can act on, and what every client
shares: reading a stream within a reply's bound, and a server's error body as one line."""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from assistant.errors import LLMError
from assistant.llm.strategy import Strategy

if TYPE_CHECKING:
    from assistant.config import Settings

#: Guards making a model's client (PerModel.with_model).
_CLIENTS_LOCK = threading.Lock()
#: Seconds the status checks (`doctor`, `/model`, warm-up's first probe) wait for the server.
STATUS_TIMEOUT = 5.0
#: Most tokens of a structured reply (a tool decision is a few dozen): a small model caught in
#: a long string under constrained decoding stops here instead of writing until the window ends.
DECISION_TOKENS = 256


@dataclass
class LLMStatus:
    """What `assistant doctor` and the REPL's /model show about the language model."""

    host: str
    model: str
    reachable: bool
    model_available: bool
    tool_calling: str  # "native" | "structured" | "unknown" (the model's Strategy)
    error: str | None = None
    #: Why the model is offered tools that way (Strategy.reason).
    tool_calling_reason: str = ""
    #: Whether the model has native tool calling at all (None: the server does not say).
    native_tools: bool | None = None
    #: What serves the model, in words ("Ollama", "the OpenAI-compatible server").
    server: str = "Ollama"


@dataclass(frozen=True)
class ModelInfo:
    """A model Ollama has, whether it can call tools natively and whether it sees images
    (None: Ollama does not say)."""

    name: str
    tools: bool | None
    vision: bool | None = None

    def describe(self) -> str:
        """What it can do, in words."""
        tools = {True: "native tool calling",
                 False: "no native tool calling (a JSON prompt chooses the tools)",
                 None: "tool calling not reported"}[self.tools]
        vision = {True: "; vision: sees images", False: "; no vision", None: ""}[self.vision]
        return tools + vision


class ReplyCut(LLMError):
    """A reply went past its bound (:class:`ReplyLimits`) and was cut off; what had streamed
    stays shown, and the message says which bound and how to change it."""


@dataclass(frozen=True)
class ReplyLimits:
    """The bound of one streamed reply: a server that streams forever is cut off here."""

    seconds: float = 600.0
    tokens: int = 4096

    @classmethod
    def of(cls, settings: Settings) -> ReplyLimits:
        return cls(settings.llm_max_reply_seconds, settings.llm_max_reply_tokens)


class ToolsUnsupported(LLMError):
    """The model rejects native tool calling (Ollama answers 400 "... does not support tools")."""


class PerModel:
    """A server's client of one model: :meth:`with_model` gives the same server's client of
    another, one per model (kept and shared), so what a model can do is known per model."""

    settings: Any
    model: str

    def _share(self, clients: dict[str, Any] | None) -> None:
        """Join the server's clients (a new table for the first)."""
        self._clients = {} if clients is None else clients
        self._clients.setdefault(self.model, self)

    def with_model(self, model: str) -> Any:
        """The client of ``model`` on the same server (the same one every time)."""
        with _CLIENTS_LOCK:
            client = self._clients.get(model)
            if client is None:
                client = type(self)(self.settings, model, _clients=self._clients)
            return client


class ChatLLM(Protocol):
    """What the agent needs from a chat model (Ollama here, scripted ones in tests)."""

    #: The model's name.
    model: str
    #: What serves it, in words (shown by /model and doctor).
    server: str
    #: Whether the model has native tool calling at all (None: not known yet).
    native_tools: bool | None

    def tool_calling(self) -> Strategy:
        """How the model is offered tools: natively, or by a structured decision (decided once
        per model, from where its chat template writes the tools)."""
        ...

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             format: dict[str, Any] | None = None, on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        """One model reply (text and/or tool calls), streamed to ``on_token``; stops early
        when ``cancel`` is set. ``format``: a JSON schema the reply must follow (Ollama's
        structured outputs). Raises :class:`LLMError` (or :class:`ToolsUnsupported`)."""
        ...

    def status(self) -> LLMStatus: ...

    def warm_up(self, system: Callable[[bool], str] | None = None,
                tools: Sequence[dict[str, Any]] | None = None) -> str | None:
        """Check the server and load the model; one sentence if something is wrong. With
        ``system`` (the system prompt for native tool calling or not) the model also reads the
        fixed start of every prompt once (natively with ``tools``)."""
        ...

    def with_model(self, model: str) -> ChatLLM:
        """The same server's client of another model."""
        ...

    def models(self) -> list[ModelInfo]:
        """The models the server has; :class:`LLMError` when it cannot be asked."""
        ...


def make_llm(settings: Settings) -> ChatLLM:
    """The client of the server ASSISTANT_LLM_API names (its library is imported on first use)."""
    if settings.llm_api == "openai":
        from assistant.llm.openai import OpenAILLM

        return OpenAILLM(settings)
    from assistant.llm.ollama import OllamaLLM

    return OllamaLLM(settings)


def collect_stream(chunks: Iterator[AIMessageChunk], *, limits: ReplyLimits,
                   on_token: Callable[[str], None] | None = None,
                   cancel: threading.Event | None = None) -> AIMessageChunk | None:
    """A streamed reply added up (text, tool-call deltas, token counts), its text passed to
    ``on_token`` as it comes; stops when ``cancel`` is set. Raises :class:`ReplyCut` once the
    reply streams past ``limits`` (each streamed piece counts as a token; the time runs from the
    first piece: the wait for it, prompt evaluation included, is ASSISTANT_LLM_TIMEOUT's). The
    stream is closed on the way out, so the server stops generating."""
    full: AIMessageChunk | None = None
    started: float | None = None
    pieces = 0
    try:
        for chunk in chunks:
            started = time.monotonic() if started is None else started
            text = message_text(chunk.content)
            pieces += bool(text or chunk.tool_call_chunks)
            if pieces > limits.tokens:
                raise ReplyCut(f"The reply was cut off after {limits.tokens} tokens "
                               f"(ASSISTANT_LLM_MAX_REPLY_TOKENS).")
            full = chunk if full is None else full + chunk
            if text and on_token is not None:
                on_token(text)
            if cancel is not None and cancel.is_set():
                break
            if time.monotonic() - started > limits.seconds:
                raise ReplyCut(f"The reply was cut off after {limits.seconds:g} s "
                               f"(ASSISTANT_LLM_MAX_REPLY_SECONDS).")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return full


def as_reply(full: AIMessageChunk | None) -> AIMessage:
    """A streamed reply as the message the agent reads (the server's token counts kept)."""
    if full is None:
        return AIMessage(content="")
    return AIMessage(content=message_text(full.content), tool_calls=full.tool_calls,
                     usage_metadata=full.usage_metadata)


def error_text(body: str, limit: int = 200) -> str:
    """A server's error body as one short line: an HTML page (a proxy's 502 page) by its title
    or first words, never its markup."""
    text = body.strip()
    if re.match(r"(?is)\s*(<!doctype|<html|<head|<body|<\?xml|<h1|<title)", text):
        title = re.search(r"(?is)<title[^>]*>(.*?)</title>", text)
        text = title.group(1) if title else re.sub(r"(?s)<(script|style).*?</\1>|<[^>]+>", " ", text)
        text = html.unescape(text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def message_text(content: Any) -> str:
    """Message content as plain text (content may be a list of parts)."""
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)
