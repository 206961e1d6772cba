"""The turn loop: memory → attachments through their tools → LLM ⇄ tools → reply.

Routing does not depend on the model's whims: every attachment of a turn is first analysed
by its matching tool (and a photo also by object detection when the user asks what or where
things are). Those results go into the conversation as tool calls and results; then the model
may call further tools, for a bounded number of rounds, and writes the answer. Without a
language model (down, not pulled, too slow, or ``use_llm=False``) the same tool results are
rendered from a template, clearly marked as such.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from assistant import prompts
from assistant.attachments import AttachmentStore
from assistant.config import Settings
from assistant.llm import ChatLLM, LLMError, LLMStatus, ToolsUnsupported
from assistant.memory import Memory, estimate_tokens, fit_history
from assistant.turns import Reply, Turn
from tools.base import Progress, ToolContext, ToolError, ToolResult
from tools.registry import ToolRegistry

log = logging.getLogger(__name__)

#: Tokens kept free in the context window for the model's answer.
ANSWER_RESERVE_TOKENS = 1024
#: Longest tool result (characters of JSON) put into the conversation.
MAX_TOOL_RESULT_CHARS = 4000
#: The note a reply carries when the tools answered without the language model.
NO_LLM_NOTE = "no-LLM mode: tool results only"
#: The tool a photo also goes to when the user asks what or where things are.
DETECT_TOOL = "detect"
#: Words (English and Russian stems) that ask what or where things are, or to find/count objects.
_DETECT_WORDS = re.compile(
    r"\b(what|whats|where|which|find|count|how many|detect|locate|spot|objects?|things?|anything)\b"
    r"|(?<!\w)(что|где|какие|найд|найт|посчита|подсчита|сколько|объект|обнаруж|предмет|"
    r"изображ|есть ли|покажи)", re.IGNORECASE)
#: JSON inside an optional ```json fence.
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def wants_detection(text: str) -> bool:
    """Does the user's text ask what or where things are (or to find/count objects)?"""
    return bool(_DETECT_WORDS.search(text))


class Agent:
    """One assistant shared by all conversations of an adapter; :meth:`respond` is thread-safe
    (turns of one conversation run one at a time, different conversations concurrently)."""

    def __init__(self, tools: ToolRegistry, memory: Memory, llm: ChatLLM | None, *,
                 output_root: Path, num_ctx: int = 8192, max_tool_rounds: int = 4,
                 max_file_bytes: int | None = None, status_host: str = "", status_model: str = "") -> None:
        self.tools = tools
        self.memory = memory
        self.llm = llm
        self.output_root = Path(output_root)
        self.num_ctx = num_ctx
        self.max_tool_rounds = max_tool_rounds
        self.max_file_bytes = max_file_bytes
        self._status_host, self._status_model = status_host, status_model
        self._stores: dict[str, AttachmentStore] = {}
        self._turn_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._told_no_tools: set[str] = set()
        self.schemas = tools.schemas()  # the tools never change; their schemas are built once
        self.schema_tokens = len(json.dumps(self.schemas, ensure_ascii=False)) // 4

    # -- the fixed interface -------------------------------------------------------------

    def attachments(self, conversation_id: str) -> AttachmentStore:
        """The conversation's attachments: adapters register files here."""
        with self._lock:
            store = self._stores.get(conversation_id)
            if store is None:
                store = self._stores[conversation_id] = AttachmentStore(self.max_file_bytes)
            return store

    def reset(self, conversation_id: str) -> None:
        """Forget the conversation's memory and attachments."""
        with self._lock:
            self._stores.pop(conversation_id, None)
            self._told_no_tools.discard(conversation_id)
        self.memory.clear(conversation_id)

    def warm_up(self) -> str | None:
        """Check and load the language model; one sentence if something is wrong. Never raises."""
        if self.llm is None:
            return None
        try:
            return self.llm.warm_up()
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop the adapter
            log.exception("warm-up failed")
            return f"Could not check the language model: {exc}"

    def llm_status(self) -> LLMStatus:
        if self.llm is None:
            return LLMStatus(self._status_host, self._status_model, reachable=False,
                             model_available=False, tool_calling="unknown",
                             error="The language model is switched off (no-LLM mode).")
        try:
            return self.llm.status()
        except Exception as exc:  # noqa: BLE001
            return LLMStatus(self._status_host, self._status_model, False, False, "unknown", str(exc))

    def respond(self, turn: Turn, *, on_token: Callable[[str], None] | None = None,
                on_progress: Progress | None = None,
                cancel: threading.Event | None = None) -> Reply:
        """Answer one turn. Blocking; never raises for problems a person can act on.

        ``on_token`` receives the model's text as it streams; ``Reply.text`` is always the
        complete answer (adapters re-render it when the turn ends)."""
        with self._turn_lock(turn.conversation_id):
            run = _TurnRun(self, turn, on_token, on_progress, cancel)
            try:
                reply = run.execute()
            except Exception as exc:  # noqa: BLE001 - last resort: a reply, not a crash
                log.exception("turn failed")
                reply = Reply(text=f"Something went wrong while answering: {exc}",
                              notes=["internal error; see the log"], llm_used=False)
            self.memory.append(turn.conversation_id, run.messages_to_store(reply))
            return reply

    # -- helpers used by a turn ----------------------------------------------------------

    def output_dir(self, conversation_id: str) -> Path:
        safe = re.sub(r"[^\w.-]", "_", conversation_id)[:80] or "default"
        path = self.output_root / safe
        path.mkdir(parents=True, exist_ok=True)
        return path

    def tell_no_tools_once(self, conversation_id: str) -> bool:
        with self._lock:
            if conversation_id in self._told_no_tools:
                return False
            self._told_no_tools.add(conversation_id)
            return True

    def _turn_lock(self, conversation_id: str) -> threading.Lock:
        with self._lock:
            return self._turn_locks.setdefault(conversation_id, threading.Lock())


class _TurnRun:
    """The state of one turn while it runs."""

    def __init__(self, agent: Agent, turn: Turn, on_token: Callable[[str], None] | None,
                 on_progress: Progress | None, cancel: threading.Event | None) -> None:
        self.agent, self.turn, self.on_token, self.cancel = agent, turn, on_token, cancel
        self.ctx = ToolContext(attachments=agent.attachments(turn.conversation_id),
                               output_dir=agent.output_dir(turn.conversation_id), progress=on_progress)
        self.user = HumanMessage(content=_user_text(turn))
        self.messages: list[BaseMessage] = [self.user]  # this turn's messages, stored in memory
        self.results: list[tuple[str, ToolResult | str]] = []  # (what was analysed, result or error)
        self.media: list[Path] = []
        self.notes: list[str] = []
        self.history = agent.memory.turns(turn.conversation_id)  # earlier turns, before this one

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def execute(self) -> Reply:
        self.run_calls(self.routed_calls())
        llm = self.agent.llm
        if llm is None:
            return self.tool_only_reply(None)
        if self.cancelled:
            return self.cancelled_reply("")
        try:
            return self.converse(llm)
        except LLMError as exc:
            return self.tool_only_reply(str(exc))

    # -- routing and tools ---------------------------------------------------------------

    def routed_calls(self) -> list[dict[str, Any]]:
        """The calls every attachment gets regardless of the model."""
        calls = []
        for attachment in self.turn.attachments:
            tool = self.agent.tools.tool_for_kind(attachment.kind)
            if tool is not None:
                calls.append(_call(tool.name, {"attachment_id": attachment.id}))
            if (attachment.kind == "image" and DETECT_TOOL in self.agent.tools
                    and wants_detection(self.turn.text)):
                calls.append(_call(DETECT_TOOL, {"attachment_id": attachment.id}))
        return calls

    def run_calls(self, calls: Sequence[dict[str, Any]]) -> None:
        """Run tool calls; record them and their results (errors included) in the turn."""
        if not calls:
            return
        self.messages.append(AIMessage(content="", tool_calls=list(calls)))
        for call in calls:
            if self.cancelled:
                content = json.dumps({"error": "cancelled by the user before this tool ran"})
            else:
                content = self.run_call(call)
            self.messages.append(ToolMessage(content=content, tool_call_id=call["id"], name=call["name"]))

    def run_call(self, call: dict[str, Any]) -> str:
        subject = _subject(call)
        try:
            result = self.agent.tools.get(call["name"]).call(call["args"], self.ctx)
        except ToolError as exc:
            self.results.append((subject, str(exc)))
            return json.dumps({"error": str(exc)}, ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - a tool's bug is reported, not raised
            log.exception("tool %s failed", call["name"])
            message = f"{call['name']} failed unexpectedly: {exc.__class__.__name__}: {exc}"
            self.results.append((subject, message))
            return json.dumps({"error": message}, ensure_ascii=False)
        self.results.append((subject, result))
        self.media.extend(Path(path) for path in result.outputs)
        return _compact_json(result.to_json())

    # -- the model -----------------------------------------------------------------------

    def converse(self, llm: ChatLLM) -> Reply:
        texts: list[str] = []
        limit = self.agent.max_tool_rounds
        for round_number in range(limit + 1):
            native = llm.native_tools is not False
            offer_tools = round_number < limit
            stream = _Streamer(self.on_token)
            try:
                answer = llm.chat(self.prompt(native, offer_tools), on_token=stream.feed, cancel=self.cancel,
                                  tools=self.agent.schemas if native and offer_tools else None)
            except ToolsUnsupported as exc:
                if self.agent.tell_no_tools_once(self.turn.conversation_id):
                    self.notes.append(str(exc))
                answer = llm.chat(self.prompt(False, offer_tools), on_token=stream.feed, cancel=self.cancel)
            calls, problem = self.tool_calls_in(answer)
            if not calls and problem is None:
                stream.flush()
            text = "" if calls or problem else _plain(answer.content)
            if text:
                texts.append(text)
            if self.cancelled:
                self.messages.append(AIMessage(content=text))
                return self.cancelled_reply("\n\n".join(texts))
            if not offer_tools or (not calls and problem is None):
                self.messages.append(AIMessage(content=text))
                break
            if problem is not None:
                self.messages.append(AIMessage(content=_plain(answer.content)))
                self.messages.append(HumanMessage(content=f"[Tool request rejected: {problem}] "
                                                          f"Reply with a valid tool call or answer the user."))
                continue
            self.run_calls(calls)
        if not texts:
            texts.append(f"(No answer: the model kept asking for tools after {limit} rounds "
                         f"(ASSISTANT_MAX_TOOL_ROUNDS).)")
            self.notes.append("tool-round limit reached")
        return Reply(text="\n\n".join(texts), media=self.media, notes=self.notes, llm_used=True)

    def prompt(self, native: bool, offer_tools: bool) -> list[BaseMessage]:
        """System prompt, the history that fits the context budget, and this turn so far."""
        system = prompts.load("system")
        if not native and offer_tools:
            system += "\n\n" + prompts.load("tool_selection").replace("{tools}", self.tool_list())
        turn = self.messages if native else _as_plain_messages(self.messages)
        if not offer_tools:
            turn = [*turn, HumanMessage(content="[No more tool calls are possible in this turn: "
                                                "answer the user now with what you have.]")]
        fixed = [SystemMessage(content=system), *turn]
        budget = self.agent.num_ctx - ANSWER_RESERVE_TOKENS - estimate_tokens(fixed)
        if native and offer_tools:
            budget -= self.agent.schema_tokens
        history = fit_history(self.history, max(budget, 0))
        if not native:
            history = _as_plain_messages(history)
        return [fixed[0], *history, *turn]

    def tool_list(self) -> str:
        return "\n".join(f"- {schema['function']['name']}: {schema['function']['description']}\n"
                         f"  arguments: {json.dumps(schema['function']['parameters'], ensure_ascii=False)}"
                         for schema in self.agent.schemas)

    def tool_calls_in(self, answer: AIMessage) -> tuple[list[dict[str, Any]], str | None]:
        """Native tool calls, or calls written as JSON in the text (the fallback, and models that
        print the call instead of making it). Returns (calls, problem with a JSON request)."""
        if answer.tool_calls:
            return [_call(c["name"], c.get("args") or {}) for c in answer.tool_calls], None
        return parse_json_calls(_plain(answer.content), self.agent.tools)

    # -- replies without the model -------------------------------------------------------

    def tool_only_reply(self, reason: str | None) -> Reply:
        """The no-LLM mode: each attachment's tool results from a template."""
        if reason is None:
            reason = "(no-LLM mode: the assistant runs without Ollama.)"
        if self.results:
            results = "\n".join(_render_result(subject, result) for subject, result in self.results)
        elif self.turn.attachments:
            results = "No tool can analyse " + ", ".join(a.describe() for a in self.turn.attachments) + "."
        else:
            results = ("Without the language model I can only analyse attachments: "
                       "send a photo, an audio recording or a video.")
        text = prompts.load("no_llm").replace("{reason}", reason).replace("{results}", results)
        self.messages.append(AIMessage(content=text))
        return Reply(text=text, media=self.media, notes=[*self.notes, NO_LLM_NOTE], llm_used=False)

    def cancelled_reply(self, text: str) -> Reply:
        return Reply(text=(text + "\n\n" if text else "") + "_(cancelled)_", media=self.media,
                     notes=[*self.notes, "cancelled"], llm_used=self.agent.llm is not None)

    def messages_to_store(self, reply: Reply) -> list[BaseMessage]:
        """This turn for memory: everything asked and found, ending with the answer given."""
        if not isinstance(self.messages[-1], AIMessage) or self.messages[-1].tool_calls:
            return [*self.messages, AIMessage(content=reply.text)]
        return self.messages


class _Streamer:
    """Passes the model's text on as it streams, but holds back text that starts like JSON
    (a tool request written as text) until it is known to be an answer."""

    def __init__(self, on_token: Callable[[str], None] | None) -> None:
        self.on_token = on_token
        self.held: list[str] = []
        self.holding: bool | None = None  # None until the first non-blank character

    def feed(self, token: str) -> None:
        if self.on_token is None:
            return
        if self.holding is None:
            self.held.append(token)
            start = "".join(self.held).lstrip()
            if not start:
                return
            self.holding = start[0] in "{`"
            if not self.holding:
                self.flush()
            return
        if self.holding:
            self.held.append(token)
        else:
            self.on_token(token)

    def flush(self) -> None:
        if self.on_token is not None and self.held:
            self.on_token("".join(self.held))
        self.held.clear()


def parse_json_calls(text: str, tools: ToolRegistry) -> tuple[list[dict[str, Any]], str | None]:
    """Tool calls written as JSON text, validated strictly.

    Accepts ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`` or a single
    ``{"name"|"tool": ..., "arguments"|"parameters": {...}}``. Text that is not a JSON object is
    an answer: ``([], None)``. A JSON object that is not a valid request gives ``([], problem)``.
    """
    stripped = text.strip()
    fenced = _FENCED.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    if not stripped.startswith("{"):
        return [], None
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(data, dict):
        return [], None
    requests = data.get("tool_calls", [data]) if "tool_calls" in data else [data]
    if not isinstance(requests, list) or not requests:
        return [], "tool_calls must be a non-empty list"
    calls = []
    for request in requests:
        if not isinstance(request, dict):
            return [], "each tool call must be a JSON object"
        name = request.get("name", request.get("tool"))
        arguments = request.get("arguments", request.get("parameters", {}))
        if not isinstance(name, str) or name not in tools:
            return [], f"unknown tool {name!r}; available: {', '.join(tools.names)}"
        if not isinstance(arguments, dict):
            return [], f"arguments of {name} must be a JSON object"
        calls.append(_call(name, arguments))
    return calls, None


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": dict(args), "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def _user_text(turn: Turn) -> str:
    text = turn.text.strip()
    if turn.attachments:
        listed = ", ".join(attachment.describe() for attachment in turn.attachments)
        text = f"{text}\n\nAttachments: {listed}" if text else f"Attachments: {listed}"
    return text


def _subject(call: dict[str, Any]) -> str:
    target = call["args"].get("attachment_id")
    return f"{call['name']} on {target}" if target else call["name"]


def _render_result(subject: str, result: ToolResult | str) -> str:
    if isinstance(result, str):
        return f"- **{subject}**: error – {result}"
    return f"- **{subject}**: {result.summary()}"


def _compact_json(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= MAX_TOOL_RESULT_CHARS:
        return text
    return text[:MAX_TOOL_RESULT_CHARS] + " …(truncated)"


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


def _as_plain_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Tool calls and results as ordinary text, for models without native tool calling."""
    plain: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            request = {"tool_calls": [{"name": c["name"], "arguments": c["args"]} for c in message.tool_calls]}
            plain.append(AIMessage(content=json.dumps(request, ensure_ascii=False)))
        elif isinstance(message, ToolMessage):
            plain.append(HumanMessage(content=f"[Tool result of {message.name}]: {message.content}"))
        else:
            plain.append(message)
    return plain


def build_agent(settings: Settings, *, use_llm: bool = True) -> Agent:
    """The agent with every tool, Ollama (unless ``use_llm`` is False) and SQLite memory."""
    from assistant.runtime import build_tools

    llm: ChatLLM | None = None
    if use_llm:
        from assistant.llm import OllamaLLM

        llm = OllamaLLM(settings)
    db_path = settings.db_path or Settings.from_env({}).db_path
    assert db_path is not None  # from_env always sets it
    return Agent(build_tools(settings), Memory(db_path), llm,
                 output_root=db_path.parent / "outputs", num_ctx=settings.llm_num_ctx,
                 max_tool_rounds=settings.max_tool_rounds,
                 max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
                 status_host=settings.ollama_host, status_model=settings.llm_model)
