"""Workarounds for what small or template-bound models do, named as such, in one place.

Each was measured with a real model (the tests say which). Elsewhere, by design:

- a model without native tools decides on calls through a JSON schema its server enforces
  (:mod:`assistant.turn.decision`), offered only the calls that could add something: a weak
  model offered a tool takes it, even for "hi";
- a reply that fails a check (:mod:`assistant.turn.checks`) is asked again once, in plain words,
  with ``prompts/plain_answer.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from assistant.turn.fallback import as_history_note
from assistant.turn.state import Call

#: Keys of no tool's result that qwen2.5 wrote when it imitated the audio tool's output.
INVENTED_RESULT_KEYS = frozenset({"event_type", "event_data"})


def without_fallbacks(message: BaseMessage) -> BaseMessage:
    """A message of the history as the model reads it: a fallback reply as a short note
    (models imitate its layout and pass stale results off as an answer)."""
    if isinstance(message, AIMessage) and not message.tool_calls:
        text = as_history_note(str(message.content))
        if text != message.content:
            return AIMessage(content=text)
    return message


def as_plain_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Tool results as notes of what ran on what, for models without native tool calling. The
    calls themselves are left out: a small model copies an assistant's JSON into its answers."""
    calls = {call["id"]: Call.of(call) for message in messages if isinstance(message, AIMessage)
             for call in message.tool_calls}
    plain: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            if message.content:
                plain.append(AIMessage(content=message.content))
        elif isinstance(message, ToolMessage):
            call = calls.get(message.tool_call_id)
            subject = call.subject(quote=True) if call is not None else message.name
            plain.append(HumanMessage(content=f"[Tool result of {subject}]: {message.content}"))
        else:
            plain.append(message)
    return plain
