"""Llama 3 served by Ollama, through ``langchain-ollama``'s ChatOllama.

Chat (streaming, native tool calling) goes through :class:`ChatOllama`; status checks
(is Ollama up, is the model pulled, can it call tools) through the ``ollama`` client.
Every failure a person can fix becomes an :class:`LLMError` whose message says how.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from assistant.config import Settings, ollama_url
from assistant.llm.base import (DECISION_TOKENS, STATUS_TIMEOUT, LLMError, LLMStatus, ModelInfo, PerModel, ReplyLimits,
                                ToolsUnsupported, as_reply, collect_stream, error_text)
from assistant.llm.strategy import Strategy, choose

_IMPORT_LOCK = threading.Lock()


def import_ollama() -> ModuleType:
    """The ``ollama`` module, imported safely: on import it builds a default client from
    OLLAMA_HOST and raises for a malformed one (``localhost:abc``). Every client here is given
    its host, and a bad OLLAMA_HOST is reported as a bad setting, so the import must not see it."""
    with _IMPORT_LOCK:
        host = os.environ.get("OLLAMA_HOST")
        try:
            if host is not None:
                ollama_url(host)
            return importlib.import_module("ollama")
        except ValueError:  # the bad value is left out while the module is imported
            del os.environ["OLLAMA_HOST"]
            try:
                return importlib.import_module("ollama")
            finally:
                os.environ["OLLAMA_HOST"] = host


class OllamaLLM(PerModel):
    """One Ollama model through ChatOllama, with an explicit context window and keep-alive.

    :meth:`with_model` gives the client of another model on the same server; there is one
    client per model, so what a model can do (native tool calling) is known per model."""

    server = "Ollama"

    def __init__(self, settings: Settings, model: str | None = None, *,
                 _clients: dict[str, OllamaLLM] | None = None) -> None:
        self.settings = settings
        self.host = settings.ollama_host
        self.model = model or settings.llm_model
        self.num_ctx = settings.llm_num_ctx
        self.timeout = settings.llm_timeout
        self.keep_alive = settings.llm_keep_alive
        self.limits = ReplyLimits.of(settings)
        #: Whether the model has native tool calling (Ollama's capabilities; None: not known yet).
        self.native_tools: bool | None = None
        self._strategy: Strategy | None = None  # decided once, from the template and capabilities
        self._chat_models: dict[int | None, Any] = {}  # by num_predict: decisions are kept short
        self._lock = threading.Lock()
        self._share(_clients)

    def models(self) -> list[ModelInfo]:
        """The models Ollama has, each with whether it can call tools (learnt per model);
        :class:`LLMError` when Ollama cannot be asked."""
        ollama = import_ollama()

        client = ollama.Client(host=self.host, timeout=STATUS_TIMEOUT)
        try:
            names = sorted(str(item.model) for item in client.list().models if item.model)
            infos = []
            for name in names:
                model = self.with_model(name)
                shown = client.show(name)
                model.learn(shown)
                capabilities = getattr(shown, "capabilities", None)
                infos.append(ModelInfo(name, model.native_tools,
                                       None if capabilities is None else "vision" in capabilities))
        except Exception as exc:  # noqa: BLE001
            raise self.explain(exc) from exc
        return infos

    def learn(self, shown: Any) -> None:
        """Take in what Ollama's /api/show says of the model (its template and capabilities)."""
        capabilities = getattr(shown, "capabilities", None)
        if capabilities is not None:  # Ollama before 0.6.4 does not report capabilities
            self.native_tools = "tools" in capabilities
        with self._lock:
            if self._strategy is None:
                self._strategy = choose(self.settings.tool_calling, getattr(shown, "template", None),
                                        None if capabilities is None else list(capabilities))

    def tool_calling(self) -> Strategy:
        """How this model is offered tools, decided once from its template and capabilities
        (:mod:`assistant.llm.strategy`); asks Ollama the first time. While Ollama cannot be
        asked: native unless the model is known to lack it (not remembered)."""
        if self._strategy is None:
            ollama = import_ollama()
            try:
                self.learn(ollama.Client(host=self.host, timeout=STATUS_TIMEOUT).show(self.model))
            except Exception:  # noqa: BLE001 - the request that follows reports the problem
                return choose(self.settings.tool_calling, None,
                              None if self.native_tools is None else ["tools"] if self.native_tools else [])
        assert self._strategy is not None  # learn() decided it
        return self._strategy

    def _chat(self, num_predict: int | None = None) -> Any:
        """The ChatOllama that writes at most ``num_predict`` tokens (structured replies stop
        after :data:`DECISION_TOKENS`), made on first use: importing langchain-ollama takes
        seconds (it pulls in langsmith), which must not delay an adapter's start."""
        with self._lock:
            if num_predict not in self._chat_models:
                import_ollama()  # before langchain-ollama imports it
                from langchain_ollama import ChatOllama

                self._chat_models[num_predict] = ChatOllama(
                    model=self.model, base_url=self.host, num_ctx=self.num_ctx, num_predict=num_predict,
                    keep_alive=self.keep_alive, client_kwargs={"timeout": self.timeout})
            return self._chat_models[num_predict]

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             format: dict[str, Any] | None = None, on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        runnable = self._chat(DECISION_TOKENS if format is not None else None)
        if tools:
            runnable = runnable.bind_tools(list(tools))
        options = {"format": format} if format else {}
        try:
            full = collect_stream(runnable.stream(list(messages), **options), limits=self.limits,
                                  on_token=on_token, cancel=cancel)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message with a fix
            error = self.explain(exc)
            if isinstance(error, ToolsUnsupported):
                self.native_tools = False
                self._strategy = Strategy(False, "Ollama rejected tools for it (no native tool calling)")
            raise error from exc
        if full is not None and tools:
            self.native_tools = True
        return as_reply(full)

    def status(self) -> LLMStatus:
        """Ask Ollama whether it is up, has the model, and how the model is offered tools."""
        ollama = import_ollama()

        client = ollama.Client(host=self.host, timeout=STATUS_TIMEOUT)
        status = LLMStatus(self.host, self.model, reachable=False, model_available=False,
                           tool_calling=self._tool_mode())
        try:
            client.list()
            status.reachable = True
            shown = client.show(self.model)
        except Exception as exc:  # noqa: BLE001
            status.error = str(self.explain(exc))
            return status
        status.model_available = True
        self.learn(shown)
        strategy = self.tool_calling()
        status.tool_calling, status.tool_calling_reason = self._tool_mode(), strategy.reason
        status.native_tools = self.native_tools
        return status

    def warm_up(self, system: Callable[[bool], str] | None = None,
                tools: Sequence[dict[str, Any]] | None = None) -> str | None:
        """Check Ollama and load the model (kept for ``keep_alive``); one sentence if something is wrong.

        With ``system`` (the system prompt the agent sends, for native tool calling or not):
        the model also reads the fixed start of every prompt once — the system prompt, and for
        native tool calling the ``tools`` with it — in a request that writes one token, so that
        the first message of a session reads only its own tokens (Ollama keeps the prefix).
        Also makes the ChatOllama, so that an adapter warming up in the background has the
        first reply's imports done too."""
        ollama = import_ollama()

        self._chat()
        status = self.status()
        if status.error:
            return status.error
        try:
            # An empty chat loads the model without generating anything.
            ollama.Client(host=self.host, timeout=self.timeout).chat(
                model=self.model, messages=[], keep_alive=self.keep_alive)
            if system is not None:
                self.read_prefix(system, tools)
        except Exception as exc:  # noqa: BLE001
            return str(self.explain(exc))
        if self.native_tools is False:
            return self.no_tools_note()
        return None

    def read_prefix(self, system: Callable[[bool], str], tools: Sequence[dict[str, Any]] | None) -> int | None:
        """Have the model read the system prompt (and, natively, the tools) once, through the
        same ChatOllama path as every later request so the prompt is the same to the token;
        returns how many prompt tokens Ollama evaluated (``prompt_eval_count``)."""
        native = self.tool_calling().native
        runnable = self._chat(1)
        if native and tools:
            runnable = runnable.bind_tools(list(tools))
        from langchain_core.messages import SystemMessage

        reply = runnable.invoke([SystemMessage(content=system(native))])
        return (reply.usage_metadata or {}).get("input_tokens")

    def no_tools_note(self) -> str:
        return (f"The model {self.model} does not support native tool calling, so tools are chosen "
                f"by a JSON prompt instead (less reliable); for native tool calling use a model such "
                f"as llama3.1:8b (`ollama pull llama3.1:8b`, then /model llama3.1:8b or "
                f"ASSISTANT_LLM_MODEL=llama3.1:8b).")

    def explain(self, exc: BaseException) -> LLMError:
        """A client exception as an :class:`LLMError` that says what to do."""
        import httpx

        ollama = import_ollama()

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
            return LLMError(f"Ollama answered with an error (HTTP {exc.status_code}): {error_text(message)}")
        return LLMError(f"Ollama failed: {exc.__class__.__name__}: {exc}")

    def _tool_mode(self) -> str:
        """``native``, ``structured``, or ``unknown`` while Ollama has not said."""
        return self._strategy.name if self._strategy is not None else "unknown"
