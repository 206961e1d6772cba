"""A model on any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, LiteLLM, SGLang),
through ``langchain-openai``'s ChatOpenAI.

Chat (streaming, native tool calls assembled from their streamed deltas, the structured
decision as a ``response_format`` JSON schema) goes through :class:`ChatOpenAI`; the model
list and status checks through the ``openai`` client. What Ollama has and this API has not is
left to the server: the context window (ASSISTANT_LLM_NUM_CTX only sizes the history sent) and
how long a model stays loaded. Whether a model calls tools is not in ``/v1/models``: it is
learnt from the first request that offers tools. Every failure a person can fix becomes an
:class:`LLMError` whose message says how, made in :meth:`OpenAILLM.explain` alone.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from assistant.config import Settings
from assistant.llm.base import (DECISION_TOKENS, STATUS_TIMEOUT, LLMError, LLMStatus, ModelInfo, PerModel, ReplyLimits,
                                ToolsUnsupported, as_reply, collect_stream, error_text)
from assistant.llm.strategy import Strategy, choose

#: Words of a 400 answer that mean the server (or model) takes no ``tools``: vLLM without
#: --enable-auto-tool-choice, llama.cpp's server without --jinja, models without a tool template.
_NO_TOOLS = ("tool choice", "tool_choice", "tool-call-parser", "tools param", "does not support tools",
             "tool calling", "tools are not supported")


class _JsonSchemaUnsupported(LLMError):
    """The server rejects ``response_format`` of type ``json_schema`` (llama-cpp-python's wants
    ``json_object`` with a ``schema``)."""


class OpenAILLM(PerModel):
    """One model of an OpenAI-compatible server (ASSISTANT_LLM_BASE_URL, ASSISTANT_LLM_API_KEY).

    :meth:`with_model` gives the client of another model on the same server; there is one
    client per model, so what a model can do (native tool calling) is known per model."""

    server = "the OpenAI-compatible server"

    def __init__(self, settings: Settings, model: str | None = None, *,
                 _clients: dict[str, OpenAILLM] | None = None) -> None:
        self.settings = settings
        self.host = settings.llm_base_url
        self.model = model or settings.llm_model
        self.timeout = settings.llm_timeout
        self.limits = ReplyLimits.of(settings)
        self.native_tools: bool | None = None
        self._api_key = settings.llm_api_key or "none"  # servers without keys take any; never shown
        self._chat_models: dict[bool, Any] = {}  # by "structured": decisions are kept short
        self._json_object = False  # True once the server rejected a "json_schema" response_format
        self._lock = threading.Lock()
        self._share(_clients)

    def models(self) -> list[ModelInfo]:
        """The server's models (``/v1/models``); whether each calls tools is known only once a
        request offered it tools (None until then)."""
        try:
            names = sorted(model.id for model in self._client(STATUS_TIMEOUT).models.list())
        except Exception as exc:  # noqa: BLE001
            raise self.explain(exc) from exc
        return [ModelInfo(name, self._clients[name].native_tools if name in self._clients else None)
                for name in names]

    def tool_calling(self) -> Strategy:
        """How the model is offered tools: as ASSISTANT_TOOL_CALLING says, else natively until
        the server refuses tools for it (the OpenAI API reports no template or capabilities)."""
        return choose(self.settings.tool_calling, None,
                      None if self.native_tools is None else ["tools"] if self.native_tools else [])

    def _client(self, timeout: float) -> Any:
        import openai

        return openai.OpenAI(base_url=self.host, api_key=self._api_key, timeout=timeout, max_retries=0)

    def _chat(self, structured: bool = False) -> Any:
        """The ChatOpenAI (for structured replies: one that stops after :data:`DECISION_TOKENS`),
        made on first use (importing langchain-openai takes seconds). No retries: a busy or
        failing server is said so at once, with when to try again."""
        with self._lock:
            if structured not in self._chat_models:
                self._chat_models[structured] = _chat_openai()(
                    model=self.model, base_url=self.host, api_key=self._api_key, timeout=self.timeout,
                    max_retries=0, max_tokens=DECISION_TOKENS if structured else None, stream_usage=True)
            return self._chat_models[structured]

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             format: dict[str, Any] | None = None, on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        runnable = self._chat(structured=format is not None)
        if tools:
            runnable = runnable.bind_tools(list(tools))
        # The schema goes in the request body as it is: given as ``response_format``,
        # langchain-openai streams through the SDK's parsing helper, which fails a decision cut
        # at DECISION_TOKENS instead of returning it.
        options = {"extra_body": {"response_format": self._response_format(format)}} if format else {}
        try:
            full = collect_stream(runnable.stream(list(messages), **options), limits=self.limits,
                                  on_token=on_token, cancel=cancel)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message with a fix
            error = self.explain(exc)
            if isinstance(error, _JsonSchemaUnsupported) and not self._json_object:
                self._json_object = True  # the same request once more, in the older form
                return self.chat(messages, tools=tools, format=format, on_token=on_token, cancel=cancel)
            if isinstance(error, ToolsUnsupported):
                self.native_tools = False
            raise error from exc
        if full is not None and tools:
            self.native_tools = True
        return as_reply(full)

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A JSON schema as ``response_format``: OpenAI's ``json_schema`` form (vLLM, SGLang, LM
        Studio, llama.cpp's llama-server), or, for a server that rejected it (llama-cpp-python's),
        the ``json_object`` form with the schema beside it."""
        if self._json_object:
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "decision", "schema": schema}}

    def status(self) -> LLMStatus:
        """Whether the server answers (with this key) and serves the model. Tool calling is
        "unknown" until a request has offered tools: ``/v1/models`` does not say."""
        status = LLMStatus(self.host, self.model, reachable=False, model_available=False,
                           tool_calling=self._tool_mode(), server=self.server)
        try:
            names = [model.id for model in self._client(STATUS_TIMEOUT).models.list()]
        except Exception as exc:  # noqa: BLE001
            import openai

            status.reachable = isinstance(exc, openai.APIStatusError)  # it answered, with an error
            status.error = str(self.explain(exc))
            return status
        status.reachable = True
        status.model_available = self.model in names
        if not status.model_available:
            status.error = self._missing(", ".join(sorted(names)) or "none")
        return status

    def warm_up(self, system: Callable[[bool], str] | None = None,
                tools: Sequence[dict[str, Any]] | None = None) -> str | None:
        """Check the server and the model; one sentence if something is wrong. Loading the
        model (and reading ``system`` and ``tools`` ahead) is the server's business. Also makes the ChatOpenAI, so that an adapter warming
        up in the background has the first reply's imports done too."""
        self._chat()
        status = self.status()
        if status.error:
            return status.error
        if self.native_tools is False:
            return self.no_tools_note()
        return None

    def no_tools_note(self, why: str = "") -> str:
        said = f" (it said: {why})" if why else ""
        return (f"The server at {self.host} takes no native tool calls for {self.model}{said}, so tools are "
                f"chosen by a JSON prompt instead (less reliable); for native tool calling start the server "
                f"with tool calling on (vLLM: --enable-auto-tool-choice --tool-call-parser llama3_json; "
                f"llama.cpp: --jinja).")

    def _missing(self, served: str) -> str:
        other = "set ASSISTANT_LLM_MODEL" if self.model == self.settings.llm_model else "/model switches"
        return (f"The model {self.model} is not served at {self.host} (it serves: {served}) – "
                f"{other} to one it serves.")

    def explain(self, exc: BaseException) -> LLMError:
        """A client exception as an :class:`LLMError` that says what to do (the sentences of
        :meth:`assistant.llm.ollama.OllamaLLM.explain` where they apply)."""
        import openai

        if isinstance(exc, LLMError):
            return exc
        causes = {type(cause).__name__ for cause in _chain(exc)}  # the SDK's HTTP library is its own business
        if isinstance(exc, openai.APITimeoutError) or causes & {"ReadTimeout", "ConnectTimeout", "TimeoutException"}:
            return LLMError(f"The language model server did not answer within {self.timeout:g} s "
                            f"(ASSISTANT_LLM_TIMEOUT) – the model may still be loading or the machine is busy; "
                            f"try again.")
        if causes & {"RemoteProtocolError", "ReadError"}:
            return LLMError(f"The language model stopped answering (the connection to {self.host} broke off) – "
                            f"try again.")
        if isinstance(exc, (ConnectionError, openai.APIConnectionError)):
            return LLMError(f"The language model server is not reachable at {self.host} – start it "
                            f"(or set ASSISTANT_LLM_BASE_URL).")
        if not isinstance(exc, openai.APIStatusError):
            return LLMError(f"The language model server failed: {exc.__class__.__name__}: {exc}")
        code, raw = exc.status_code, _server_message(exc)
        said = error_text(raw)
        if code in (401, 403):
            return LLMError(f"The language model server at {self.host} refused the API key (HTTP {code}) – "
                            f"set ASSISTANT_LLM_API_KEY to a key it accepts.")
        if code == 404:
            return LLMError(f"The model {self.model} is not available at {self.host} (HTTP 404: {said}) – "
                            f"check ASSISTANT_LLM_MODEL and ASSISTANT_LLM_BASE_URL (it usually ends in /v1).")
        if code == 429:
            wait = exc.response.headers.get("retry-after")
            when = f"in {wait} s" if wait and wait.strip().isdigit() else "in a moment"
            return LLMError(f"The language model server is busy (HTTP 429: too many requests) – try again {when}.")
        if "json_schema" in raw and "response_format" in raw and code in (400, 422, 500):
            return _JsonSchemaUnsupported(f"The language model server at {self.host} takes no JSON schema "
                                          f"(HTTP {code}: {said}).")
        if code == 400 and any(words in said.lower() for words in _NO_TOOLS):
            return ToolsUnsupported(self.no_tools_note(said))
        return LLMError(f"The language model server answered with an error (HTTP {code}): {said}")

    def _tool_mode(self) -> str:
        return {True: "native", False: "structured", None: "unknown"}[self.native_tools]


@functools.cache
def _chat_openai() -> type:
    """ChatOpenAI, with what self-hosted servers read: an assistant message that only calls
    tools has ``"content": ""`` rather than null, and the reply's bound is ``max_tokens`` rather
    than ``max_completion_tokens`` (llama-cpp-python's server rejects the null and ignores the
    newer name; the others take both). Made on first use: importing langchain-openai takes seconds."""
    from langchain_openai import ChatOpenAI

    class _ChatOpenAI(ChatOpenAI):
        def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            for message in payload.get("messages", []):
                if message.get("role") == "assistant" and message.get("content") is None:
                    message["content"] = ""
            if "max_completion_tokens" in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
            return payload

    return _ChatOpenAI


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from, or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _server_message(exc: Any) -> str:
    """What the server said in its error body (``{"error": {"message": ...}}``, ``{"error": ...}``,
    ``{"message": ...}``, ``{"detail": ...}``, or the text itself, an HTML page included)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            inner = inner.get("message") or inner.get("detail") or inner
        body = inner if isinstance(inner, str) else body.get("message") or body.get("detail") or str(inner)
    if not body:
        body = exc.response.text
    return str(body)
