"""The turn loop: memory → attachments through their tools → LLM ⇄ tools → reply.

Routing does not depend on the model's whims: every attachment of a turn is first analysed
by its matching tool (and a photo also by object detection when the user asks what or where
things are). Those results go into the conversation as tool calls and results; then the model
may call further tools, for a bounded number of rounds, and writes the answer. Without a
language model (down, not pulled, too slow, or ``use_llm=False``) the same tool results are
rendered from a template, clearly marked as such.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from assistant import prompts
from assistant import reply as contract
from assistant.attachments import Attachment, AttachmentStore
from assistant.config import Settings
from assistant.errors import StorageError
from assistant.llm import ChatLLM, LLMError, LLMStatus, ModelInfo, ToolsUnsupported, message_text
from assistant.memory import Memory, estimate_tokens, fit_history
from assistant.recent import RecentSet
from assistant.turns import CANCELLED, Reply, Turn
from tools.base import ATTACHMENT_ARGUMENT, BadCall, Progress, Tool, ToolContext, ToolError, ToolResult, short_reason
from tools.media import read_text_document
from tools.registry import ToolRegistry

log = logging.getLogger(__name__)

#: Tokens kept free in the context window for the model's answer.
ANSWER_RESERVE_TOKENS = 1024
#: Tokens left for what a turn adds after its first request (tool results, instructions), so
#: that its later requests send the same history.
TURN_RESERVE_TOKENS = 256
#: The most the server's token count of a prompt is taken to exceed the estimate by.
MAX_TOKEN_RATIO = 4.0
#: Longest tool result (characters of JSON) put into the conversation.
MAX_TOOL_RESULT_CHARS = 4000
#: The note a reply carries when the tools answered without the language model.
NO_LLM_NOTE = "no-LLM mode: tool results only"
#: Longest text document (characters) put into the user's message for the model to read.
MAX_DOCUMENT_CHARS = 8000
#: Characters of a judged text quoted in the model's note of a text tool's result.
SUBJECT_QUOTE_CHARS = 60
#: Attachments a tool decision may name (the conversation's latest).
DECISION_ATTACHMENTS = 32
#: Conversations (with their model) remembered as told that the model has no native tools.
TOLD_NO_TOOLS = 1024

#: Receives a turn's result lines and the transcripts among them, each time a tool has run.
ResultsCallback = Callable[[list[str], list[str]], None]


class Agent:
    """One assistant shared by all conversations of an adapter. Turns of different
    conversations may run concurrently; those of one conversation come one at a time, in order
    (:class:`assistant.session.Session` sees to that for every channel)."""

    def __init__(self, tools: ToolRegistry, memory: Memory, llm: ChatLLM | None, *,
                 output_root: Path, num_ctx: int = 8192, max_tool_rounds: int = 4,
                 max_file_bytes: int | None = None, status_host: str = "", status_model: str = "",
                 attachment_root: Path | None = None, attachment_bytes: int | None = None) -> None:
        self.tools = tools
        self.memory = memory
        self.llm = llm
        self.output_root = Path(output_root)
        #: Where received files are kept, one folder per conversation (default: beside the outputs).
        self.attachment_root = Path(attachment_root or self.output_root.parent / "attachments")
        self.attachment_bytes = attachment_bytes
        self.num_ctx = num_ctx
        self.max_tool_rounds = max_tool_rounds
        self.max_file_bytes = max_file_bytes
        self._status_host, self._status_model = status_host, status_model
        self._lock = threading.Lock()
        self._told_no_tools: RecentSet[tuple[str, str]] = RecentSet(TOLD_NO_TOOLS)
        self._token_ratios: dict[str, float] = {}  # by model: server-counted / estimated prompt tokens
        self.schemas = tools.schemas()  # the tools never change; their schemas are built once
        self.schema_tokens = len(json.dumps(self.schemas, ensure_ascii=False)) // 4

    # -- the fixed interface -------------------------------------------------------------

    def attachments(self, conversation_id: str) -> AttachmentStore:
        """The conversation's attachments (kept in memory's database): adapters register files
        here, and put the files they receive at :meth:`AttachmentStore.new_path`."""
        return AttachmentStore(self.max_file_bytes, memory=self.memory, conversation_id=conversation_id,
                               folder=self.attachment_dir(conversation_id),
                               folder_bytes=self.attachment_bytes)

    def reset(self, conversation_id: str) -> None:
        """Forget the conversation's memory and attachments (and delete the files it received).
        Its model stays."""
        with self._lock:
            self._told_no_tools.discard((conversation_id, self.model_of(conversation_id)))
        self.memory.clear(conversation_id)
        shutil.rmtree(self.attachment_dir(conversation_id), ignore_errors=True)
        shutil.rmtree(self.output_root / _folder(conversation_id), ignore_errors=True)

    def warm_up(self) -> str | None:
        """Check and load the language model; one sentence if something is wrong. Never raises."""
        if self.llm is None:
            return None
        try:
            return self.llm.warm_up()
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop the adapter
            log.exception("warm-up failed")
            return f"Could not check the language model: {exc}"

    def llm_status(self, conversation_id: str | None = None) -> LLMStatus:
        """The language model's status: the conversation's model (the default without one)."""
        llm = self.llm_for(conversation_id) if conversation_id is not None else self.llm
        if llm is None:
            return LLMStatus(self._status_host, self._status_model, reachable=False,
                             model_available=False, tool_calling="unknown",
                             error="The language model is switched off (no-LLM mode).")
        try:
            return llm.status()
        except Exception as exc:  # noqa: BLE001
            return LLMStatus(self._status_host, llm.model, False, False, "unknown", str(exc))

    # -- the model of each conversation --------------------------------------------------

    def model_of(self, conversation_id: str) -> str:
        """The conversation's model: the one chosen with :meth:`set_model`, else the default."""
        default = self.llm.model if self.llm is not None else self._status_model
        return self.memory.conversation_model(conversation_id) or default

    def llm_for(self, conversation_id: str) -> ChatLLM | None:
        """The client of the conversation's model (None in no-LLM mode)."""
        if self.llm is None:
            return None
        chosen = self.memory.conversation_model(conversation_id)
        return self.llm.with_model(chosen) if chosen and chosen != self.llm.model else self.llm

    def models(self) -> list[ModelInfo]:
        """The models the language model's server has; :class:`LLMError` if it cannot say."""
        if self.llm is None:
            raise LLMError("The language model is switched off (no-LLM mode).")
        return self.llm.models()

    def set_model(self, conversation_id: str, name: str) -> ModelInfo:
        """Switch the conversation to the server's model ``name`` (``llama3`` is
        ``llama3:latest``, as in Ollama), kept across restarts; returns that model.
        :class:`LLMError` saying why for a model the server does not have."""
        name = name.strip()
        models = self.models()
        match = next((model for model in models if model.name in (name, f"{name}:latest")), None)
        if match is None:
            listed = ", ".join(model.name for model in models) or "none"
            raise LLMError(f"There is no model {name!r} in Ollama (it has: {listed}); "
                           f"`ollama pull {name}` fetches it.")
        assert self.llm is not None  # models() said so
        default = match.name == self.llm.model
        self.memory.set_conversation_model(conversation_id, None if default else match.name)
        return match

    def respond(self, turn: Turn, *, on_token: Callable[[str], None] | None = None,
                on_progress: Progress | None = None, on_results: ResultsCallback | None = None,
                cancel: threading.Event | None = None) -> Reply:
        """Answer one turn. Blocking; never raises for problems a person can act on.

        ``on_token`` receives the model's text as it streams; ``Reply.text`` is always the
        complete answer (adapters re-render it when the turn ends). ``on_results`` receives
        the turn's result lines and transcripts so far (as :attr:`Reply.results` and
        :attr:`Reply.heard`) each time a tool has run, so a channel can show what was measured
        before the model has said a word."""
        run: _TurnRun | None = None
        try:  # building the run creates the output folder and reads memory: inside too
            run = _TurnRun(self, turn, on_token, on_progress, on_results, cancel)
            reply = run.execute()
        except Exception as exc:  # noqa: BLE001 - last resort: a reply, not a crash
            said = isinstance(exc, StorageError)  # the log has which file and what to do
            log.error("turn failed: %s", exc, exc_info=not said)
            reason = f"{exc.brief}; see the log" if isinstance(exc, StorageError) else short_reason(exc)
            reply = Reply(text=f"Something went wrong while answering: {reason}",
                          media=run.media if run is not None else [],
                          notes=["internal error; see the log"], llm_used=False)
        if run is not None:
            try:
                self.memory.finish_turn(turn.conversation_id, run.turn_id,
                                        run.messages_to_store(reply))
            except Exception as exc:  # noqa: BLE001 - the person still gets the answer
                log.error("could not store the turn: %s", exc, exc_info=not isinstance(exc, StorageError))
                reply.notes.append("this turn could not be stored; see the log")
        return reply

    # -- helpers used by a turn ----------------------------------------------------------

    def output_dir(self, conversation_id: str) -> Path:
        path = self.output_root / _folder(conversation_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def system_prompt(self, native: bool) -> str:
        """The system prompt: the same in every request (for a model without native tools it
        lists the tools itself, in the decision and in the answer alike)."""
        system = prompts.render("system", routing=self.tools.routing_sentence())
        if native:
            return system
        tools = "\n".join(f"- {s['function']['name']}: {s['function']['description']}\n"
                          f"  {json.dumps(s['function']['parameters'], ensure_ascii=False)}"
                          for s in self.schemas)
        return system + "\n\n" + prompts.render("tool_selection", tools=tools)

    def token_ratio(self, model: str) -> float:
        """How many tokens ``model``'s server counts per estimated token (at least 1)."""
        return self._token_ratios.get(model, 1.0)

    def calibrate(self, model: str, counted: int, estimated: int) -> None:
        """Learn from a prompt the server counted ``counted`` tokens of (Ollama's
        ``prompt_eval_count``; with its prompt cache it may count only the new part, so this
        only ever raises the ratio): without it a model whose tokenizer needs more tokens
        than estimated (Cyrillic text, JSON) gets prompts the server silently cuts, which
        also defeats its prompt cache."""
        ratio = min(counted / max(estimated, 1), MAX_TOKEN_RATIO)
        if ratio > self.token_ratio(model):
            self._token_ratios[model] = ratio

    def tell_no_tools_once(self, conversation_id: str, model: str) -> bool:
        """True the first time this conversation meets ``model`` without native tools."""
        with self._lock:
            return self._told_no_tools.add((conversation_id, model))

    def attachment_dir(self, conversation_id: str) -> Path:
        """The folder of the files the conversation received (one per conversation id)."""
        return self.attachment_root / _folder(conversation_id)


class _TurnRun:
    """The state of one turn while it runs."""

    def __init__(self, agent: Agent, turn: Turn, on_token: Callable[[str], None] | None,
                 on_progress: Progress | None, on_results: ResultsCallback | None,
                 cancel: threading.Event | None) -> None:
        self.agent, self.turn, self.on_token, self.cancel = agent, turn, on_token, cancel
        self.on_results = on_results
        self.ctx = ToolContext(attachments=agent.attachments(turn.conversation_id),
                               output_dir=agent.output_dir(turn.conversation_id), progress=on_progress,
                               cancel=cancel)
        self.user = HumanMessage(content=_user_text(turn, self.ctx.attachments))
        self.messages: list[BaseMessage] = [self.user]  # this turn's messages, stored in memory
        #: (tool, what was analysed, result or error) of every tool that ran in this turn.
        self.outcomes: list[tuple[str, str, contract.Outcome]] = []
        self.ran: set[str] = set()  # keys of the calls run in this turn (identical ones run once)
        self.media: list[Path] = []
        self.subjects: dict[str, str] = {}  # call id -> what a routed call analyses
        self.routed_on: dict[str, tuple[str, Attachment]] = {}  # routed call id -> (tool, attachment)
        self.routed: set[str] = set()  # the ids of every routed call (attachments and quoted text)
        self.found: dict[str, ToolResult] = {}  # call id -> its result
        self.asked = turn.text  # what the user asked in words (a voice note's, once transcribed)
        self.notes: list[str] = []
        self.history = agent.memory.turns(turn.conversation_id)  # earlier turns, before this one
        self._history: dict[bool, list[BaseMessage]] = {}  # what of it this turn's prompts send, by "native"
        self.earlier_replies = [str(m.content) for stored in self.history for m in stored.messages
                                if isinstance(m, AIMessage) and not m.tool_calls]
        self.turn_id = agent.memory.begin_turn(turn.conversation_id, self.messages)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def execute(self) -> Reply:
        self.run_calls(self.routed_calls())
        self.run_calls(self.follow_up_calls())
        self.take_spoken_words()
        if self.cancelled:
            return self.cancelled_reply("")
        llm = self.agent.llm_for(self.turn.conversation_id)
        if llm is None:
            return self.tool_only_reply(None)
        return self.converse(llm)

    # -- routing and tools ---------------------------------------------------------------

    def routed_calls(self) -> list[dict[str, Any]]:
        """The calls every attachment gets regardless of the model, and those the user's
        message asks for on a passage it quotes (declared by the tools)."""
        calls = []
        for attachment in self.turn.attachments:
            for tool in self.agent.tools.routed(attachment.kind, self.turn.text):
                calls += self.routed_call(tool, attachment)
        for tool, arguments in self.agent.tools.for_text(self.turn.text):
            call = contract.make_call(tool.name, arguments)
            self.subjects[call["id"]] = f"{tool.name} on the quoted text"
            self.routed.add(call["id"])
            calls.append(call)
        return calls

    def follow_up_calls(self) -> list[dict[str, Any]]:
        """The calls routed results ask for (speech when the audio tool heard someone talking)."""
        calls = []
        done = {(name, attachment.id) for name, attachment in self.routed_on.values()}
        for call_id, (_, attachment) in list(self.routed_on.items()):
            result = self.found.get(call_id)
            if result is None:
                continue
            for tool in self.agent.tools.follow_ups(attachment.kind, result):
                if (tool.name, attachment.id) not in done:
                    done.add((tool.name, attachment.id))
                    calls += self.routed_call(tool, attachment)
        return calls

    def routed_call(self, tool: Tool[Any], attachment: Attachment) -> list[dict[str, Any]]:
        """The call of ``tool`` on ``attachment`` (none, and the error recorded, if it cannot be made)."""
        subject = f"{tool.name} on {attachment.id}"
        try:
            arguments = tool.routed_arguments(attachment.id, self.ctx.attachments)
        except ToolError as exc:
            self.outcomes.append((tool.name, subject, str(exc)))
            return []
        call = contract.make_call(tool.name, arguments)
        self.subjects[call["id"]] = subject
        self.routed_on[call["id"]] = (tool.name, attachment)
        self.routed.add(call["id"])
        return [call]

    def take_spoken_words(self) -> None:
        """What was said in this turn's voice notes enters the user's message: the user's own
        words (answered as if typed), or, forwarded, someone else's words quoted."""
        spoken = {}
        for call_id, (_, attachment) in self.routed_on.items():
            words = self.found[call_id].transcript() if call_id in self.found else None
            if words and attachment.kind == "voice":
                spoken[attachment.id] = words
        if spoken and not self.turn.text.strip():  # a voice note without a caption asks in its words
            self.asked = " ".join(spoken.values())
        if spoken:
            self.user = HumanMessage(content=_user_text(self.turn, self.ctx.attachments, spoken))
            self.messages[0] = self.user
            self.agent.memory.save_turn(self.turn_id, self.messages_to_store(None))

    def run_calls(self, calls: Sequence[dict[str, Any]]) -> None:
        """Run tool calls; record them and their results (errors included) in the turn."""
        if not calls:
            return
        self.messages.append(AIMessage(content="", tool_calls=list(calls)))
        for call in calls:
            before = len(self.outcomes)
            self.ran.add(contract.call_key(call))
            if self.cancelled:
                content = json.dumps({"error": "cancelled by the user before this tool ran"})
            else:
                content = self.run_call(call)
            self.messages.append(ToolMessage(content=content, tool_call_id=call["id"], name=call["name"]))
            self.agent.memory.save_turn(self.turn_id, self.messages_to_store(None))  # a crash keeps it
            if self.on_results is not None and len(self.outcomes) > before:  # each line once its tool is done
                heard, results = self.result_lines()
                self.on_results(results, heard)

    def run_call(self, call: dict[str, Any]) -> str:
        name, subject = call["name"], self.subjects.get(call["id"]) or _subject(call)
        try:
            result = self.agent.tools.get(name).call(call["args"], self.ctx)
        except BadCall as exc:
            if call["id"] in self.routed:  # not the model's mistake: the person sees it
                self.outcomes.append((name, subject, str(exc)))
            else:  # the model's mistake: the model is told; the person sees no "result" of it
                log.info("model's call of %s rejected: %s", name, exc)
            return json.dumps({"error": str(exc)}, ensure_ascii=False)
        except ToolError as exc:
            self.outcomes.append((name, subject, str(exc)))
            return json.dumps({"error": str(exc)}, ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - a tool's bug is reported, not raised
            log.exception("tool %s failed", name)
            message = f"{name} failed unexpectedly: {exc.__class__.__name__}: {exc}"
            self.outcomes.append((name, subject, message))
            return json.dumps({"error": message}, ensure_ascii=False)
        self.outcomes.append((name, subject, result))
        self.found[call["id"]] = result
        self.media.extend(Path(path) for path in result.outputs)
        return _compact_json(_for_model(result))

    # -- the model -----------------------------------------------------------------------

    def converse(self, llm: ChatLLM) -> Reply:
        """Ask the model, run the calls it makes, until it answers in words (the reply contract:
        no repeated calls, bounded rounds, nothing raw shown, a grounded reply in every case)."""
        said: list[str] = []  # the model's words for the person, in order
        rounds, retried, offer_tools = 0, False, True
        while True:
            stream = _Streamer(self.on_token, self.earlier_replies, self.asked)
            try:
                answer = self.ask(llm, offer_tools, stream)
            except LLMError as exc:
                spoken = [*said, stream.shown] if stream.shown.strip() else said
                if not spoken:
                    return self.tool_only_reply(str(exc))
                return self.fallback_reply(contract.STOPPED, said=spoken, note=str(exc))
            if self.cancelled:
                return self.cancelled_reply("\n\n".join([*said, stream.shown.strip()]).strip())
            read = self.read(answer)
            usable = self.usable(read.words)
            stream.finish(read.words if usable else "")
            if offer_tools and (read.calls or read.problems):
                rounds += 1
                if usable:
                    said.append(read.words)
                offer_tools = self.run_requested(read) and rounds < self.agent.max_tool_rounds
                if not offer_tools:
                    self.instruct("answer")
                continue
            if usable:
                said.append(read.words)
                break
            if not retried:  # empty, markup, call- or result-shaped: once more, in plain words
                retried, offer_tools = True, False
                self.instruct("plain_answer")
                continue
            if said:
                break
            return self.fallback_reply(contract.ROUNDS if rounds >= self.agent.max_tool_rounds else contract.UNUSABLE,
                                       note="the model gave no usable answer")
        text = "\n\n".join(said)
        self.messages.append(AIMessage(content=text))
        return self.make_reply(text, llm_used=True)

    def usable(self, words: str) -> bool:
        """Whether the model's words are an answer to show (:func:`contract.is_usable`, against
        the conversation's earlier replies and this turn's instructions)."""
        told = [str(m.content) for m in self.messages[1:] if isinstance(m, HumanMessage)]
        return contract.is_usable(words, earlier=self.earlier_replies,
                                  instructions=[*told, prompts.load("tool_decision")],
                                  asked=self.asked, json_asked="json" in self.turn.text.lower())

    def ask(self, llm: ChatLLM, offer_tools: bool, stream: _Streamer) -> AIMessage:
        """One answer of the model. Every request of a turn has the same system prompt and
        tools (so the model's prompt cache holds); a model without native tools first makes
        a structured decision (JSON schema enforced by Ollama), then answers in plain text.
        When tools were already routed (the turn's attachments, a quoted passage) or no call
        could add something (:meth:`decision_schema`), that model answers at once (its words
        stream without waiting for a decision; a call it writes still runs)."""
        if llm.native_tools is not False:
            try:
                return self.request(llm, self.prompt(llm, native=True), native=True, tools=self.agent.schemas,
                                    on_token=stream.feed)
            except ToolsUnsupported as exc:
                if self.agent.tell_no_tools_once(self.turn.conversation_id, llm.model):
                    self.notes.append(str(exc))
        messages = self.prompt(llm, native=False)
        schema = self.decision_schema() if offer_tools and not self.routed else None
        if schema is not None:
            decision = self.request(llm, [*messages, HumanMessage(content=prompts.load("tool_decision"))],
                                    native=False, format=schema)
            read = self.read(decision)
            if read.calls or read.problems:
                return decision
        return self.request(llm, messages, native=False, on_token=stream.feed)

    def request(self, llm: ChatLLM, messages: list[BaseMessage], *, native: bool, **options: Any) -> AIMessage:
        """One request to the model; what the server counted of its prompt calibrates the
        agent's token estimate for that model."""
        answer = llm.chat(messages, cancel=self.cancel, **options)
        counted = (answer.usage_metadata or {}).get("input_tokens")
        if counted:
            self.agent.calibrate(llm.model, counted, self.estimate(messages, native))
        return answer

    def estimate(self, messages: Sequence[BaseMessage], native: bool) -> int:
        """The estimated tokens of a prompt (with the tool schemas that go with native calls)."""
        return estimate_tokens(messages) + (self.agent.schema_tokens if native else 0)

    def read(self, answer: AIMessage) -> contract.Answer:
        """The answer's calls (native ones, then any written in the text) and its words."""
        read = contract.read_answer(message_text(answer.content), self.agent.tools)
        native = [contract.make_call(c["name"], c.get("args") or {}) for c in answer.tool_calls
                  if c["name"] in self.agent.tools]
        read.problems += [f"unknown tool {c['name']!r}; available: {', '.join(self.agent.tools.names)}"
                          for c in answer.tool_calls if c["name"] not in self.agent.tools]
        read.calls = native + read.calls
        return read

    def run_requested(self, read: contract.Answer) -> bool:
        """Run the new calls of a request; tell the model about repeats and rejected ones.
        True when the model may call tools again."""
        fresh, repeated = [], []
        for call in read.calls:
            key = contract.call_key(call)
            if key in self.ran or any(contract.call_key(c) == key for c in fresh):
                repeated.append(call)
            else:
                fresh.append(call)
        self.run_calls(fresh)
        if read.problems:
            self.messages.append(HumanMessage(content=f"[Tool request rejected: {'; '.join(read.problems)}] "
                                                      "Reply with a valid tool call or answer the user."))
        if repeated:
            names = ", ".join(sorted({call["name"] for call in repeated}))
            self.messages.append(HumanMessage(content=f"[{names}: already run in this turn with these "
                                                      "arguments; the result is above.]"))
        return not repeated

    def decision_schema(self) -> dict[str, Any] | None:
        """The schema of a tool decision now, offering only the calls that could add something
        (None: nothing to decide, so the model answers at once; a weak model offered a tool
        takes it, even for "hi"): a tool on those of the conversation's latest
        :data:`DECISION_ATTACHMENTS` attachments of its kinds it has not tried yet (a tool
        that runs when asked, only when the message asks), and a tool of the text alone when
        the message asks what it measures."""
        text = self.turn.text
        messages = [*(m for stored in self.history for m in stored.messages), *self.messages]
        done = {(call["name"], call["args"].get(ATTACHMENT_ARGUMENT)) for message in messages
                if isinstance(message, AIMessage) for call in message.tool_calls
                if isinstance(call["args"].get(ATTACHMENT_ARGUMENT), str)}
        recent = list(self.agent.attachments(self.turn.conversation_id))[-DECISION_ATTACHMENTS:]
        offers: dict[str, list[str]] = {}
        for schema in self.agent.schemas:
            tool = self.agent.tools.get(schema["function"]["name"])
            if ATTACHMENT_ARGUMENT not in schema["function"]["parameters"].get("properties", {}):
                if tool.asked_for(text):
                    offers[tool.name] = []
            elif tool.trigger is None or tool.asked_for(text):
                ids = [a.id for a in recent if a.kind in tool.kinds and (tool.name, a.id) not in done]
                if ids:
                    offers[tool.name] = ids
        return contract.decision_schema(self.agent.schemas, offers) if offers else None

    def instruct(self, name: str) -> None:
        """An instruction to the model at the end of the turn (never stored in memory)."""
        self.messages.append(HumanMessage(content=prompts.load(name).strip()))

    def prompt(self, llm: ChatLLM, native: bool) -> list[BaseMessage]:
        """System prompt, the history that fits the context window, and this turn so far.

        The history is chosen at the turn's first request, leaving :data:`TURN_RESERVE_TOKENS`
        for what the turn adds (tool results, instructions), and kept for its later requests
        (the same prefix, so the server's prompt cache holds) unless the prompt outgrows the
        window. Sizes are estimates scaled by what the server counted of earlier prompts.
        A fallback reply in the history reads as a short note (models imitate its layout)."""
        system = SystemMessage(content=self.agent.system_prompt(native))
        turn = self.messages if native else _as_plain_messages(self.messages)
        room = self.agent.num_ctx / self.agent.token_ratio(llm.model) - ANSWER_RESERVE_TOKENS
        fixed = self.estimate([system, *turn], native)
        history = self._history.get(native)
        if history is None or fixed + estimate_tokens(history) > room:
            history = [_for_the_model(m) for m in
                       fit_history(self.history, max(int(room - fixed - TURN_RESERVE_TOKENS), 0))]
            if not native:
                history = _as_plain_messages(history)
            self._history[native] = history
        return [system, *history, *turn]

    # -- replies built from the tool results ---------------------------------------------

    def result_lines(self) -> tuple[list[str], list[str]]:
        """The grounded result lines of the tools that ran so far: the transcripts, and all of
        them (the transcripts first)."""
        heard = [outcome.result_line() for _, _, outcome in self.outcomes
                 if isinstance(outcome, ToolResult) and outcome.transcript()]
        others = [contract.result_line(outcome, tool) for tool, _, outcome in self.outcomes
                  if not (isinstance(outcome, ToolResult) and outcome.transcript())]
        return heard, [*heard, *others]

    def make_reply(self, text: str, *, llm_used: bool, notes: Sequence[str] = ()) -> Reply:
        """The reply with the grounded result line of every tool that ran."""
        heard, results = self.result_lines()
        return Reply(text=text, media=self.media, notes=[*self.notes, *notes], llm_used=llm_used,
                     results=results, heard=heard)

    def fallback_reply(self, reason: str, *, said: Sequence[str] = (), note: str | None = None,
                       llm_used: bool = True) -> Reply:
        """A reply from the one fallback renderer: what was said, ``reason``, the tool results."""
        if self.turn.attachments and not self.outcomes:
            nothing = "No tool can analyse " + ", ".join(a.describe() for a in self.turn.attachments) + "."
        elif llm_used:
            nothing = contract.NOTHING_RAN
        else:
            nothing = ("Without the language model I can only analyse attachments: "
                       "send a photo, an audio recording or a video.")
        text = contract.render_fallback(reason, [(subject, outcome) for _, subject, outcome in self.outcomes],
                                     said="\n\n".join(said), nothing_ran=nothing)
        self.messages.append(AIMessage(content=text))
        return self.make_reply(text, llm_used=llm_used, notes=[note] if note else [])

    def tool_only_reply(self, reason: str | None) -> Reply:
        """The no-LLM mode (or a model that cannot be reached): the tool results alone."""
        return self.fallback_reply(reason or contract.NO_LLM, note=NO_LLM_NOTE, llm_used=False)

    def cancelled_reply(self, text: str) -> Reply:
        return self.make_reply((text + "\n\n" if text else "") + CANCELLED,
                               llm_used=self.agent.llm is not None, notes=["cancelled"])

    def messages_to_store(self, reply: Reply | None) -> list[BaseMessage]:
        """This turn for memory (so far, when ``reply`` is None): the user's message, the calls
        and their results, and the answer the person saw (a replacement stays a replacement; the model's raw text and the
        instructions of this turn are not kept, so they are never copied later)."""
        kept = [m for m in self.messages[1:]
                if isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls)]
        return [self.user, *kept] if reply is None else [self.user, *kept, AIMessage(content=reply.text)]


class _Streamer:
    """Passes the model's words on as they stream, holding back from the first character that
    may start a tool call or markup (``{``, a backtick, ``<``) until the answer is read, while
    the words so far repeat the start of one of the conversation's ``earlier`` replies (a small
    model answering with its last answer again) or of the user's message ``asked``, and for good
    once they open with that whole message (:func:`contract.parrots`); :meth:`finish` then shows
    the rest of the clean words."""

    _SUSPECT = "{`<["

    def __init__(self, on_token: Callable[[str], None] | None, earlier: Sequence[str] = (),
                 asked: str = "") -> None:
        self.on_token = on_token
        self.shown = ""  # what the person has seen of this answer
        self.holding = False
        self.pending = ""  # words that so far repeat the start of an earlier reply or of the question
        self.asked = contract.normalised(asked)
        self.watched = [text for text in map(contract.normalised, earlier) if len(text) >= contract.REPEAT_MIN_CHARS]
        if len(self.asked.split()) >= contract.PARROT_MIN_WORDS:
            self.watched.append(self.asked)

    def feed(self, token: str) -> None:
        if self.holding:
            return
        cut = min((i for i in (token.find(c) for c in self._SUSPECT) if i != -1), default=-1)
        if cut == -1:
            self.emit(token)
        else:
            self.emit(token[:cut])
            self.holding = True

    def emit(self, text: str) -> None:
        if self.watched:
            self.pending += text
            so_far = contract.normalised(self.shown + self.pending)
            if contract.parrots(so_far, self.asked):  # not an answer: nothing more is shown
                self.holding, self.pending, self.watched = True, "", []
                return
            if any(watched.startswith(so_far) for watched in self.watched):
                return
            self.watched = []  # it says something new: no need to look any more
            text, self.pending = self.pending, ""
        if text and self.on_token is not None:
            self.on_token(text)
        self.shown += text

    def finish(self, words: str) -> None:
        """Show what is left of the clean ``words`` after what was already shown."""
        self.watched, self.pending = [], ""  # the words were judged: what is held back is in them
        if words.startswith(self.shown.strip()) and self.shown.strip():
            self.emit(words[len(self.shown.strip()):])
        elif not self.shown.strip():
            self.emit(words)
        # otherwise the shown start was not an answer after all: the adapter re-renders Reply.text


def _user_text(turn: Turn, attachments: AttachmentStore, spoken: dict[str, str] | None = None) -> str:
    """The user's text, what was said in their voice notes (``spoken``, by attachment id), the
    attachments listed by id, and the text documents' contents (each within
    :data:`MAX_DOCUMENT_CHARS`) so the model can read them."""
    text = turn.text.strip()
    for attachment in turn.attachments:
        words = (spoken or {}).get(attachment.id)
        if not words:
            continue
        if attachment.forwarded_from is not None:
            quoted = f"Forwarded voice note {attachment.id} from {attachment.forwarded_from} says: \u201c{words}\u201d"
            text = f"{text}\n\n{quoted}" if text else quoted
        elif text:
            text += f"\n\n(In my voice note {attachment.id} I said: \u201c{words}\u201d)"
        else:
            text = words  # a voice note without a caption is answered as if it had been typed
    if turn.attachments:
        listed = ", ".join(attachment.describe() for attachment in turn.attachments)
        text = f"{text}\n\nAttachments: {listed}" if text else f"Attachments: {listed}"
    for attachment in turn.attachments:
        if attachment.kind != "text":
            continue
        content = read_text_document(attachment.path, MAX_DOCUMENT_CHARS + 1) or ""
        cut = len(content) > MAX_DOCUMENT_CHARS
        text += (f"\n\n[Text of {attachment.id} ({attachment.name})"
                 f"{', first ' + str(MAX_DOCUMENT_CHARS) + ' characters' if cut else ''}]:\n"
                 f"{content[:MAX_DOCUMENT_CHARS]}")
    return text


def _folder(conversation_id: str) -> str:
    """A conversation's folder name: readable, and unique (``a:b`` and ``a_b`` differ)."""
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:10]
    readable = re.sub(r"[^\w.-]", "_", conversation_id)[:60] or "default"
    return f"{readable}-{digest}"


def _subject(call: dict[str, Any], *, quote: bool = False) -> str:
    """What a call analysed: ``audio on att_1``; with ``quote``, a text tool's call also says
    the start of the text it judged (``sentiment on “Great film, I loved…”``)."""
    target = call["args"].get("attachment_id")
    if target:
        return f"{call['name']} on {target}"
    text = call["args"].get("text")
    if quote and isinstance(text, str) and text.strip():
        words = " ".join(text.split())
        return f"{call['name']} on \u201c{words[:SUBJECT_QUOTE_CHARS]}{'…' if len(words) > SUBJECT_QUOTE_CHARS else ''}\u201d"
    return call["name"]


def _for_model(result: ToolResult) -> dict[str, Any]:
    """The result as the model sees it: output files by name only (the reply carries their
    paths for the adapter), so no file system path ever reaches the model."""
    data = result.to_json()
    data["outputs"] = [Path(path).name for path in result.outputs]
    return data


def _compact_json(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= MAX_TOOL_RESULT_CHARS:
        return text
    return text[:MAX_TOOL_RESULT_CHARS] + " …(truncated)"


def _for_the_model(message: BaseMessage) -> BaseMessage:
    """A message of the history as the model reads it (a fallback reply as a short note)."""
    if isinstance(message, AIMessage) and not message.tool_calls:
        text = contract.for_the_model(str(message.content))
        if text != message.content:
            return AIMessage(content=text)
    return message


def _as_plain_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Tool results as notes of what ran on what, for models without native tool calling. The
    calls themselves are left out: a small model copies an assistant's JSON into its answers."""
    calls = {call["id"]: call for message in messages if isinstance(message, AIMessage)
             for call in message.tool_calls}
    plain: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            if message.content:
                plain.append(AIMessage(content=message.content))
        elif isinstance(message, ToolMessage):
            call = calls.get(message.tool_call_id)
            subject = _subject(call, quote=True) if call is not None else message.name
            plain.append(HumanMessage(content=f"[Tool result of {subject}]: {message.content}"))
        else:
            plain.append(message)
    return plain


def build_agent(settings: Settings, *, use_llm: bool = True) -> Agent:
    """The agent with every tool, Ollama (unless ``use_llm`` is False) and SQLite memory."""
    from assistant.runtime import build_tools

    llm: ChatLLM | None = None
    if use_llm:
        from assistant.llm.ollama import OllamaLLM

        llm = OllamaLLM(settings)
    db_path = settings.db_path or Settings.from_env({}).db_path
    assert db_path is not None  # from_env always sets it
    return Agent(build_tools(settings), Memory(db_path), llm,
                 output_root=db_path.parent / "outputs", num_ctx=settings.llm_num_ctx,
                 max_tool_rounds=settings.max_tool_rounds,
                 max_file_bytes=settings.max_file_bytes,
                 status_host=settings.ollama_host, status_model=settings.llm_model,
                 attachment_root=db_path.parent / "attachments",
                 attachment_bytes=settings.attachments_bytes)
