"""The errors (and the one "first line of an exception" helper) adapters see from the core.

Adapters use these, not ``tools.base``: a :class:`ToolError`'s message is meant for people.
"""

from __future__ import annotations

from tools.base import ToolError, short_reason

__all__ = ["ToolError", "short_reason"]
