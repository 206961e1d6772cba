"""What the agent needs of a language model, whichever server answers: the :class:`ChatLLM`
protocol, what a status check says, and the errors a person can act on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.messages import AIMessage, BaseMessage

from assistant.errors import LLMError
from assistant.llm.strategy import Strategy

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


@dataclass(frozen=True)
class ModelInfo:
    """A model Ollama has, and whether it can call tools natively (None: Ollama does not say)."""

    name: str
    tools: bool | None

    def describe(self) -> str:
        """What it can do, in words."""
        return {True: "native tool calling",
                False: "no native tool calling (a JSON prompt chooses the tools)",
                None: "tool calling not reported"}[self.tools]


class ToolsUnsupported(LLMError):
    """The model rejects native tool calling (Ollama answers 400 "... does not support tools")."""


class ChatLLM(Protocol):
    """What the agent needs from a chat model (Ollama here, scripted ones in tests)."""

    #: The model's name.
    model: str
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


def message_text(content: Any) -> str:
    """Message content as plain text (content may be a list of parts)."""
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)
