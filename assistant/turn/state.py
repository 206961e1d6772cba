"""The state of one turn while it runs: its messages, one record per tool call, what the person
is shown. Typed calls (:class:`Call`) flow through the loop; LangChain's dicts only at its edges
(the messages sent to the model and kept in memory)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from assistant.attachments import Attachment
from assistant.memory import StoredTurn
from assistant.turns import Reply, Turn
from tools.base import ATTACHMENT_ARGUMENT, ToolContext, ToolResult

#: Characters of a judged text quoted in the model's note of a text tool's result.
SUBJECT_QUOTE_CHARS = 60

#: What a tool produced, or the error message it gave.
Outcome = ToolResult | str


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Call:
    """One tool call: the tool, its arguments, and the id that pairs it with its result."""

    name: str
    args: dict[str, Any]
    id: str = field(default_factory=_new_id)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Call:
        """A call from a LangChain tool call (a stored or native one)."""
        return cls(raw["name"], dict(raw.get("args") or {}), raw.get("id") or _new_id())

    def key(self) -> str:
        """Identical calls (same tool, same arguments) have the same key."""
        return self.name + json.dumps(self.args, sort_keys=True, ensure_ascii=False)

    def as_tool_call(self) -> dict[str, Any]:
        """The call as LangChain (and so Ollama and memory) writes it."""
        return {"name": self.name, "args": dict(self.args), "id": self.id, "type": "tool_call"}

    def subject(self, *, quote: bool = False) -> str:
        """What the call analysed: ``audio on att_1``; with ``quote``, a text tool's call also
        says the start of the text it judged (``sentiment on “Great film, I loved…”``)."""
        target = self.args.get(ATTACHMENT_ARGUMENT)
        if target:
            return f"{self.name} on {target}"
        text = self.args.get("text")
        if quote and isinstance(text, str) and text.strip():
            words = " ".join(text.split())
            cut = "…" if len(words) > SUBJECT_QUOTE_CHARS else ""
            return f"{self.name} on \u201c{words[:SUBJECT_QUOTE_CHARS]}{cut}\u201d"
        return self.name


@dataclass
class CallRecord:
    """Everything about one tool call of the turn."""

    #: The call (None: a routed call that could not even be made; ``outcome`` says why).
    call: Call | None
    tool: str
    #: What it analyses, as the person reads it under a fallback reply.
    subject: str
    #: Made by routing (the turn's attachments, a quoted passage), not asked for by the model:
    #: its errors are shown to the person, and a model without native tools answers at once.
    routed: bool = False
    #: The attachment a routed call analyses (follow-ups and voice notes are found by it).
    attachment: Attachment | None = None
    #: The result, or the error shown to the person (None: not run, or the model's bad call).
    outcome: Outcome | None = None

    @property
    def result(self) -> ToolResult | None:
        return self.outcome if isinstance(self.outcome, ToolResult) else None


class TurnState:
    """One turn while it runs: the user's message, the messages the turn adds, its calls (in the
    order they were made) and what they found (in the order they finished)."""

    def __init__(self, turn: Turn, ctx: ToolContext, user: str, history: list[StoredTurn],
                 cancel: threading.Event | None, *,
                 save: Callable[[list[BaseMessage]], None] = lambda messages: None) -> None:
        self.turn, self.ctx, self.cancel = turn, ctx, cancel
        self.user = HumanMessage(content=user)
        self.messages: list[BaseMessage] = [self.user]  # this turn's messages, stored in memory
        self.history = history  # earlier turns, before this one
        self.asked = turn.text  # what the user asked in words (a voice note's, once transcribed)
        self.records: list[CallRecord] = []
        self.finished: list[CallRecord] = []  # those with an outcome, in the order they got it
        self.media: list[Path] = []
        self.notes: list[str] = []
        self.earlier_replies = [str(m.content) for stored in history for m in stored.messages
                                if isinstance(m, AIMessage) and not m.tool_calls]
        self._save = save  # stores the turn so far in memory

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    @property
    def routed(self) -> bool:
        """Whether routing made any call in this turn."""
        return any(record.routed and record.call is not None for record in self.records)

    def record(self, record: CallRecord) -> CallRecord:
        """Add ``record`` to the turn (one made with its outcome counts as finished)."""
        self.records.append(record)
        if record.outcome is not None:
            self.finished.append(record)
        return record

    def finish(self, record: CallRecord, outcome: Outcome) -> None:
        """``record``'s call ended in ``outcome`` (a result's files are shown with the reply)."""
        record.outcome = outcome
        self.finished.append(record)
        if isinstance(outcome, ToolResult):
            self.media.extend(Path(path) for path in outcome.outputs)

    def ran(self) -> set[str]:
        """The keys of the calls run in this turn (identical ones run once)."""
        return {record.call.key() for record in self.records if record.call is not None}

    def save(self) -> None:
        """Store the turn so far (a crash keeps it)."""
        self._save(self.to_store(None))

    def set_user(self, text: str) -> None:
        """The user's message, rewritten (with what their voice notes said)."""
        self.user = HumanMessage(content=text)
        self.messages[0] = self.user
        self.save()

    def result_lines(self) -> tuple[list[str], list[str]]:
        """The grounded result lines of the tools that ran so far: the transcripts, and all of
        them (the transcripts first)."""
        heard = [record.result.result_line() for record in self.finished
                 if record.result is not None and record.result.transcript()]
        others = [result_line(record) for record in self.finished
                  if not (record.result is not None and record.result.transcript())]
        return heard, [*heard, *others]

    def reply(self, text: str, *, llm_used: bool, notes: Sequence[str] = ()) -> Reply:
        """The reply with ``text`` and the grounded result line of every tool that ran."""
        heard, results = self.result_lines()
        return Reply(text=text, media=self.media, notes=[*self.notes, *notes], llm_used=llm_used,
                     results=results, heard=heard)

    def to_store(self, reply: Reply | None) -> list[BaseMessage]:
        """This turn for memory (so far, when ``reply`` is None): the user's message, the calls
        and their results, and the answer the person saw (a replacement stays a replacement; the
        model's raw text and the instructions of this turn are not kept, so they are never
        copied later)."""
        kept = [m for m in self.messages[1:]
                if isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls)]
        return [self.user, *kept] if reply is None else [self.user, *kept, AIMessage(content=reply.text)]


def result_line(record: CallRecord) -> str:
    """The compact, grounded line of one tool that ran (``audio · Siren 76% · …``)."""
    if isinstance(record.outcome, ToolResult):
        return record.outcome.result_line()
    return f"{record.tool} · error: {record.outcome}"
