"""The errors (and the one "first line of an exception" helper) adapters see from the core.

Adapters use these, not ``tools.base`` or ``assistant.llm``: their messages are meant for people.
"""

from __future__ import annotations

from tools.base import ToolError, short_reason

__all__ = ["LLMError", "ToolError", "short_reason"]


class LLMError(Exception):
    """The language model cannot answer (or do what was asked); the message says why and how
    to fix it."""
