"""The set of tools an agent or the CLI can call, by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tools.base import Tool, ToolError

#: The tool every attachment of a kind is always analysed with.
DEFAULT_TOOL_FOR_KIND = {"image": "image", "audio": "audio", "video": "video"}


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = {tool.name: tool for tool in tools}

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"Unknown tool {name!r}; available: {', '.join(self._tools)}.")
        return tool

    def tool_for_kind(self, kind: str) -> Tool | None:
        name = DEFAULT_TOOL_FOR_KIND.get(kind)
        return self._tools.get(name) if name else None

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self._tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools
