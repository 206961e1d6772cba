"""The errors (and the one "first line of an exception" helper) adapters see from the core.

Adapters use these, not ``tools.base`` or ``assistant.llm``: their messages are meant for people.
"""

from __future__ import annotations

from tools.base import ToolError, short_reason

__all__ = ["LLMError", "StorageError", "ToolError", "short_reason"]


class LLMError(Exception):
    """The language model cannot answer (or do what was asked); the message says why and how
    to fix it."""


class StorageError(Exception):
    """The conversation database cannot be read or written (damaged, disk full, read-only,
    held by another process): the message names the file, says what is wrong and what to do;
    :attr:`brief` says what is wrong without the file (what a chat may show)."""

    def __init__(self, path: object, problem: str, todo: str) -> None:
        super().__init__(f"The conversation database {path} {problem}; {todo}.")
        self.path, self.problem, self.todo = path, problem, todo

    @property
    def brief(self) -> str:
        return f"the conversation database {self.problem}"
