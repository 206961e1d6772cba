"""The one renderer of replies made without the model's words: the no-LLM mode, a model that is
down, times out, fails mid-stream, keeps asking for tools or gives no usable answer. What the
person reads is built from the real tool results (:class:`~assistant.turn.state.TurnState`),
never from raw model output."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage

from assistant import prompts
from assistant.turn.state import CallRecord, TurnState
from assistant.turns import CANCELLED, Reply

#: Why a reply was rendered here: the sentence the person reads above the tool results.
NO_LLM = "No language model in this session (no-LLM mode)"
STOPPED = "The language model stopped answering"
UNUSABLE = "The language model gave no usable answer"
ROUNDS = "The language model kept asking for tools instead of answering"
_REASONS = (NO_LLM, STOPPED, UNUSABLE, ROUNDS)
#: What the model reads in the history in place of a fallback reply: the fallback's layout
#: is easy to imitate, and a model copying it passes stale results off as an answer.
FALLBACK_IN_HISTORY = "(The tool results above were shown to the user as they are.)"
#: What such a reply says when no tool ran in the turn (unless the caller says better).
NOTHING_RAN = "Nothing was analysed in this turn. Please ask again, in other words."
#: What it says without the language model when no tool ran.
ONLY_ATTACHMENTS = ("Without the language model I can only analyse attachments: "
                    "send a photo, an audio recording or a video.")
#: The note a reply carries when the tools answered without the language model.
NO_LLM_NOTE = "no-LLM mode: tool results only"


def render_fallback(reason: str, records: Sequence[CallRecord], *, said: str = "",
                    nothing_ran: str = "") -> str:
    """The text of a reply built from the tool results of ``records`` instead of the model's words.

    ``reason`` says why the model's words are missing or cut short (one of the reasons above,
    or an error's message); ``said`` is what the model had already said (kept, never thrown away);
    ``nothing_ran`` what to say when no tool ran in the turn.
    """
    reason = reason.strip()
    sentence = reason[-1:] in (".", "!", "?")  # an error's own message, already a sentence
    if records:
        reason += " The tool results are below." if sentence else "; the tool results are below."
        results = "\n".join(_summary_item(record) for record in records)
    else:
        reason += "" if sentence else "."
        results = nothing_ran or NOTHING_RAN
    text = prompts.render("fallback", reason=reason, results=results).strip()
    return f"{said.strip()}\n\n{text}" if said.strip() else text


def fallback_start(text: str) -> int | None:
    """Where the fallback part of a reply begins (None: it has none)."""
    starts = [text.find(reason) for reason in _REASONS if reason in text]
    if not starts:
        return None
    start = min(starts)
    return start - 1 if text[start - 1:start] == "_" else start  # with its italics


def as_history_note(reply: str) -> str:
    """A stored reply as the model reads it in the history: a fallback's part replaced by
    :data:`FALLBACK_IN_HISTORY` (what the model had said before it is kept)."""
    start = fallback_start(reply)
    if start is None:
        return reply
    said = reply[:start].strip()
    return f"{said}\n\n{FALLBACK_IN_HISTORY}" if said else FALLBACK_IN_HISTORY


def fallback_reply(state: TurnState, reason: str, *, said: Sequence[str] = (), notes: Sequence[str] = (),
                   llm_used: bool = True) -> Reply:
    """A turn's reply from the fallback renderer: what was said, ``reason``, the tool results."""
    if state.turn.attachments and not state.finished:
        nothing = "No tool can analyse " + ", ".join(a.describe() for a in state.turn.attachments) + "."
    else:
        nothing = NOTHING_RAN if llm_used else ONLY_ATTACHMENTS
    text = render_fallback(reason, state.finished, said="\n\n".join(said), nothing_ran=nothing)
    state.messages.append(AIMessage(content=text))
    return state.reply(text, llm_used=llm_used, notes=list(notes))


def tool_only_reply(state: TurnState, reason: str | None) -> Reply:
    """The no-LLM mode (or a model that cannot be reached): the tool results alone."""
    return fallback_reply(state, reason or NO_LLM, notes=[NO_LLM_NOTE], llm_used=False)


def cancelled_reply(state: TurnState, text: str, *, llm_used: bool) -> Reply:
    """What was said before the person cancelled, marked as cancelled."""
    return state.reply((text + "\n\n" if text else "") + CANCELLED, llm_used=llm_used, notes=["cancelled"])


def _summary_item(record: CallRecord) -> str:
    if record.result is None:
        return f"- **{record.subject}**: error – {record.outcome}"
    return f"- **{record.subject}**: {record.result.summary()}"
