"""Llama 3 served by Ollama, through ``langchain-ollama``'s ChatOllama.

Chat (streaming, native tool calling) goes through :class:`ChatOllama`; status checks
(is Ollama up, is the model pulled, can it call tools) through the ``ollama`` client.
Every failure a person can fix becomes an :class:`LLMError` whose message says how.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from assistant.config import Settings
from assistant.llm.base import (DECISION_TOKENS, STATUS_TIMEOUT, ChatLLM, LLMError, LLMStatus, ModelInfo,
                                ToolsUnsupported, message_text)

#: Guards making a model's client (OllamaLLM.with_model).
_CLIENTS_LOCK = threading.Lock()


class OllamaLLM:
    """One Ollama model through ChatOllama, with an explicit context window and keep-alive.

    :meth:`with_model` gives the client of another model on the same server; there is one
    client per model, so what a model can do (native tool calling) is known per model."""

    def __init__(self, settings: Settings, model: str | None = None, *,
                 _clients: dict[str, OllamaLLM] | None = None) -> None:
        self.settings = settings
        self.host = settings.ollama_host
        self.model = model or settings.llm_model
        self.num_ctx = settings.llm_num_ctx
        self.timeout = settings.llm_timeout
        self.keep_alive = settings.llm_keep_alive
        self.native_tools: bool | None = None
        self._chat_models: dict[bool, Any] = {}  # by "structured": decisions are kept short
        self._lock = threading.Lock()
        #: Every model's client on this server, by model name (shared by all of them).
        self._clients = {} if _clients is None else _clients
        self._clients.setdefault(self.model, self)

    def with_model(self, model: str) -> OllamaLLM:
        """The client of ``model`` on the same Ollama (the same one every time)."""
        with _CLIENTS_LOCK:
            client = self._clients.get(model)
            if client is None:
                client = OllamaLLM(self.settings, model, _clients=self._clients)
            return client

    def models(self) -> list[ModelInfo]:
        """The models Ollama has, each with whether it can call tools (learnt per model);
        :class:`LLMError` when Ollama cannot be asked."""
        import ollama

        client = ollama.Client(host=self.host, timeout=STATUS_TIMEOUT)
        try:
            names = sorted(str(item.model) for item in client.list().models if item.model)
            infos = []
            for name in names:
                capabilities = client.show(name).capabilities
                tools = None if capabilities is None else "tools" in capabilities
                if tools is not None:
                    self.with_model(name).native_tools = tools
                infos.append(ModelInfo(name, tools))
        except Exception as exc:  # noqa: BLE001
            raise self.explain(exc) from exc
        return infos

    def _chat(self, structured: bool = False) -> Any:
        """The ChatOllama (for structured replies: one that stops after :data:`DECISION_TOKENS`),
        made on first use: importing langchain-ollama takes seconds (it pulls in langsmith),
        which must not delay an adapter's start."""
        with self._lock:
            if structured not in self._chat_models:
                from langchain_ollama import ChatOllama

                self._chat_models[structured] = ChatOllama(
                    model=self.model, base_url=self.host, num_ctx=self.num_ctx,
                    num_predict=DECISION_TOKENS if structured else None,
                    keep_alive=self.keep_alive, client_kwargs={"timeout": self.timeout})
            return self._chat_models[structured]

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             format: dict[str, Any] | None = None, on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        runnable = self._chat(structured=format is not None)
        if tools:
            runnable = runnable.bind_tools(list(tools))
        options = {"format": format} if format else {}
        full: AIMessageChunk | None = None
        try:
            for chunk in runnable.stream(list(messages), **options):
                full = chunk if full is None else full + chunk
                text = message_text(chunk.content)
                if text and on_token is not None:
                    on_token(text)
                if cancel is not None and cancel.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message with a fix
            error = self.explain(exc)
            if isinstance(error, ToolsUnsupported):
                self.native_tools = False
            raise error from exc
        if full is None:
            return AIMessage(content="")
        if tools:
            self.native_tools = True
        return AIMessage(content=message_text(full.content), tool_calls=full.tool_calls,
                         usage_metadata=full.usage_metadata)  # the server's token counts

    def status(self) -> LLMStatus:
        """Ask Ollama whether it is up, has the model, and whether the model can call tools."""
        import ollama

        client = ollama.Client(host=self.host, timeout=STATUS_TIMEOUT)
        status = LLMStatus(self.host, self.model, reachable=False, model_available=False,
                           tool_calling=self._tool_mode())
        try:
            client.list()
            status.reachable = True
            capabilities = client.show(self.model).capabilities
        except Exception as exc:  # noqa: BLE001
            status.error = str(self.explain(exc))
            return status
        status.model_available = True
        if capabilities is not None:  # Ollama before 0.6.4 does not report capabilities
            self.native_tools = "tools" in capabilities
            status.tool_calling = self._tool_mode()
        return status

    def warm_up(self) -> str | None:
        """Check Ollama and load the model (kept for ``keep_alive``); one sentence if something is wrong.

        Also makes the ChatOllama, so that an adapter warming up in the background has the
        first reply's imports done too."""
        import ollama

        self._chat()
        status = self.status()
        if status.error:
            return status.error
        try:
            # An empty chat loads the model without generating anything.
            ollama.Client(host=self.host, timeout=self.timeout).chat(
                model=self.model, messages=[], keep_alive=self.keep_alive)
        except Exception as exc:  # noqa: BLE001
            return str(self.explain(exc))
        if self.native_tools is False:
            return self.no_tools_note()
        return None

    def no_tools_note(self) -> str:
        return (f"The model {self.model} does not support native tool calling, so tools are chosen "
                f"by a JSON prompt instead (less reliable); for native tool calling use a model such "
                f"as llama3.1:8b (`ollama pull llama3.1:8b`, then /model llama3.1:8b or "
                f"ASSISTANT_LLM_MODEL=llama3.1:8b).")

    def explain(self, exc: BaseException) -> LLMError:
        """A client exception as an :class:`LLMError` that says what to do."""
        import httpx
        import ollama

        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, (ConnectionError, httpx.ConnectError)):
            return LLMError(f"Ollama is not reachable at {self.host} – start it with `ollama serve` "
                            f"(or set OLLAMA_HOST).")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return LLMError(f"The language model stopped answering (the connection to Ollama at "
                            f"{self.host} broke off) – try again.")
        if isinstance(exc, httpx.TimeoutException):
            return LLMError(f"Ollama did not answer within {self.timeout:g} s (ASSISTANT_LLM_TIMEOUT) – "
                            f"the model may still be loading or the machine is busy; try again.")
        if isinstance(exc, ollama.ResponseError):
            message = str(exc.error)
            if "does not support tools" in message:
                return ToolsUnsupported(self.no_tools_note())
            if exc.status_code == 404 or "not found" in message:
                other = "set ASSISTANT_LLM_MODEL" if self.model == self.settings.llm_model else "/model switches"
                return LLMError(f"The model {self.model} is not available in Ollama – run "
                                f"`ollama pull {self.model}` (or {other}).")
            return LLMError(f"Ollama answered with an error: {message}")
        return LLMError(f"Ollama failed: {exc.__class__.__name__}: {exc}")

    def _tool_mode(self) -> str:
        return {True: "native", False: "json-fallback", None: "unknown"}[self.native_tools]
