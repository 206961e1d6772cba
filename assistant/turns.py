"""What flows between an adapter and the agent: a user's turn in, a reply out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from assistant.attachments import Attachment


#: How a reply ends when the person cancelled it (Markdown).
CANCELLED = "_(cancelled)_"


@dataclass
class Turn:
    """One user message: text (may be empty) and the attachments registered for it."""

    conversation_id: str
    text: str = ""
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Reply:
    """The assistant's answer: text (Markdown), media to show (annotated photos/videos),
    notes for the adapter (for example that the no-LLM mode answered), and the grounded result
    line of every tool that ran (``audio · Siren 76% · …``, made from the tools' results, not
    by the model), which each adapter shows in its own way."""

    text: str
    media: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    llm_used: bool = True
    results: list[str] = field(default_factory=list)
    #: The result lines that are transcripts (what was heard in a voice note), also in ``results``
    #: (first): a channel may show them before the answer.
    heard: list[str] = field(default_factory=list)


def interrupted_notice(text: str) -> str:
    """What a person is told about their turn that a crash interrupted."""
    words = " ".join(text.split())
    short = words[:60] + ("…" if len(words) > 60 else "")
    return (f"Your previous message (\"{short}\") was interrupted before it was answered; "
            "what its tools had found is kept in this conversation.")
