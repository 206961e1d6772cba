"""What the model reads: the system prompt, the user's message, the earlier turns that fit
the context window, and this turn so far; token counts calibrated by what the server counted."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage

from assistant import prompts
from assistant.attachments import AttachmentStore
from assistant.memory import estimate_tokens, fit_history
from assistant.turn import quirks
from assistant.turn.state import TurnState
from assistant.turns import Turn
from tools.media import read_text_document
from tools.registry import ToolRegistry

#: Tokens kept free in the context window for the model's answer.
ANSWER_RESERVE_TOKENS = 1024
#: Tokens left for what a turn adds after its first request (tool results, instructions), so
#: that its later requests send the same history.
TURN_RESERVE_TOKENS = 256
#: The most the server's token count of a prompt is taken to exceed the estimate by.
MAX_TOKEN_RATIO = 4.0
#: Longest text document (characters) put into the user's message for the model to read.
MAX_DOCUMENT_CHARS = 8000


class ToolPrompt:
    """The tools as the model reads them: their schemas (sent with native calls) and the system
    prompt, built once for the tools that can run (the tools never change; those in ``off``,
    unavailable with the language model in use, such as vision without a vision model, are left
    out: the model neither reads their schemas nor is told they ran)."""

    def __init__(self, tools: ToolRegistry, off: Collection[str] = ()) -> None:
        self.tools = tools
        self.off = frozenset(off)
        self.schemas = [schema for schema in tools.schemas() if schema["function"]["name"] not in self.off]
        self.schema_tokens = len(json.dumps(self.schemas, ensure_ascii=False)) // 4

    def system(self, native: bool) -> str:
        """The system prompt: the same in every request (for a model without native tools it
        lists the tools itself, in the decision and in the answer alike)."""
        system = prompts.render("system", routing=self.tools.routing_sentence(self.off))
        if native:
            return system
        tools = "\n".join(f"- {s['function']['name']}: {s['function']['description']}\n"
                          f"  {json.dumps(s['function']['parameters'], ensure_ascii=False)}"
                          for s in self.schemas)
        return system + "\n\n" + prompts.render("tool_selection", tools=tools)

    def estimate(self, messages: Sequence[BaseMessage], native: bool) -> int:
        """The estimated tokens of a prompt (with the tool schemas that go with native calls)."""
        return estimate_tokens(messages) + (self.schema_tokens if native else 0)


class TokenCalibration:
    """How many tokens each model's server counts per estimated token (at least 1)."""

    def __init__(self) -> None:
        self._ratios: dict[str, float] = {}
        self._lock = threading.Lock()

    def ratio(self, model: str) -> float:
        return self._ratios.get(model, 1.0)

    def learn(self, model: str, counted: int, estimated: int) -> None:
        """Learn from a prompt the server counted ``counted`` tokens of (Ollama's
        ``prompt_eval_count``; with its prompt cache it may count only the new part, so this
        only ever raises the ratio): without it a model whose tokenizer needs more tokens
        than estimated (Cyrillic text, JSON) gets prompts the server silently cuts, which
        also defeats its prompt cache."""
        ratio = min(counted / max(estimated, 1), MAX_TOKEN_RATIO)
        with self._lock:
            if ratio > self.ratio(model):
                self._ratios[model] = ratio


class PromptBuilder:
    """A turn's prompts: system prompt, the history that fits the context window, and the turn
    so far (as notes for a model without native tools).

    The history is chosen at the turn's first request, leaving :data:`TURN_RESERVE_TOKENS`
    for what the turn adds (tool results, instructions), and kept for its later requests
    (the same prefix, so the server's prompt cache holds) unless the prompt outgrows the
    window. Sizes are estimates scaled by what the server counted of earlier prompts."""

    def __init__(self, tools: ToolPrompt, calibration: TokenCalibration, num_ctx: int,
                 state: TurnState) -> None:
        self.tools, self.calibration, self.num_ctx, self.state = tools, calibration, num_ctx, state
        self._history: dict[bool, list[BaseMessage]] = {}  # what of it this turn's prompts send, by "native"

    def build(self, model: str, native: bool) -> list[BaseMessage]:
        system = SystemMessage(content=self.tools.system(native))
        turn = self.state.messages if native else quirks.as_plain_messages(self.state.messages)
        room = self.num_ctx / self.calibration.ratio(model) - ANSWER_RESERVE_TOKENS
        fixed = self.tools.estimate([system, *turn], native)
        history = self._history.get(native)
        if history is None or fixed + estimate_tokens(history) > room:
            budget = max(int(room - fixed - TURN_RESERVE_TOKENS), 0)
            history = [quirks.without_fallbacks(m) for m in fit_history(self.state.history, budget)]
            if not native:
                history = quirks.as_plain_messages(history)
            self._history[native] = history
        return [system, *history, *turn]

    def learn(self, model: str, messages: Sequence[BaseMessage], native: bool, answer: Any) -> None:
        """Calibrate the token estimate from what the server counted of ``messages``."""
        counted = (answer.usage_metadata or {}).get("input_tokens")
        if counted:
            self.calibration.learn(model, counted, self.tools.estimate(messages, native))


def user_text(turn: Turn, attachments: AttachmentStore, spoken: dict[str, str] | None = None) -> str:
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
