"""The tools, found in the ``tools`` package, and everything derived from their declarations.

No list to edit: every module of the package is imported (cheaply: heavy libraries load with
a model, never at import) and each concrete :class:`~tools.base.Tool` subclass defined in it
is a tool. Settings, ``models fetch``, ``doctor``, ``analyze --tool`` choices, routing, the
tools list and the routing sentence of the system prompt all come from here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from functools import cache
from typing import Any, TypeVar

from tools.base import (AnalyzeOption, ModelServer, ModelSource, ModelSpec, Tool, ToolConfig, ToolError,
                        ToolResult)
from tools.settings import Setting

#: Packages searched for tool modules (tests may add one).
TOOL_PACKAGES = ["tools"]

T = TypeVar("T")


def tool_classes() -> list[type[Tool[Any]]]:
    """Every tool class declared in the tool packages, in module then definition order."""
    return list(_discover(tuple(TOOL_PACKAGES)))


@cache
def _discover(packages: tuple[str, ...]) -> tuple[type[Tool[Any]], ...]:
    found: dict[str, type[Tool[Any]]] = {}
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda item: item.name):
            module = importlib.import_module(f"{package_name}.{info.name}")
            members = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                       if issubclass(obj, Tool) and obj.__module__ == module.__name__
                       and not inspect.isabstract(obj) and not obj.__name__.startswith("_")]
            for cls in sorted(members, key=lambda obj: inspect.getsourcelines(obj)[1]):
                if cls.name in found:
                    raise TypeError(f"two tools are named {cls.name!r}: "
                                    f"{found[cls.name].__module__} and {module.__name__}")
                found[cls.name] = cls
    return tuple(found.values())


def tool_names() -> list[str]:
    """The names of every tool (``analyze --tool`` choices, ``/tools``)."""
    return [cls.name for cls in tool_classes()]


def model_specs() -> list[ModelSpec]:
    """Each distinct model the tools use (tools may share one), for fetch, doctor, settings."""
    return _each_once((cls.model for cls in tool_classes() if cls.model is not None),
                      lambda spec: spec.variable)


def users_of(spec: ModelSpec) -> list[str]:
    """The names of the tools that use ``spec``'s model."""
    return [cls.name for cls in tool_classes() if cls.model is not None
            and cls.model.variable == spec.variable]


def tool_settings() -> list[Setting]:
    """Every tool's own settings (each variable once)."""
    return _each_once((setting for cls in tool_classes() for setting in cls.settings),
                      lambda setting: setting.variable)


def analyze_options() -> list[AnalyzeOption]:
    """Every tool's ``assistant analyze`` flags (each flag once)."""
    return _each_once((option for cls in tool_classes() for option in cls.analyze_options),
                      lambda option: option.flag)


def _each_once(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """``items`` in order, keeping the first of those that share a ``key`` (tools may share
    a model, a setting or a flag)."""
    first: dict[str, T] = {}
    for item in items:
        first.setdefault(key(item), item)
    return list(first.values())


class ToolRegistry:
    """The built tools an agent or the CLI can call, by name."""

    def __init__(self, tools: Iterable[Tool[Any]], capacity: int = 1) -> None:
        self._tools = {tool.name: tool for tool in tools}
        #: How many turns with media these tools take at a time (the heavy-job queue's width).
        self.capacity = capacity

    @classmethod
    def build(cls, sources: Mapping[str, ModelSource], values: Mapping[str, Any],
              device: str | None, model_server: ModelServer | None = None) -> ToolRegistry:
        """Every discovered tool, built from its model's source (by the model's variable), the
        settings' values (by variable) and the model server (Ollama) for tools whose model runs
        there. Nothing heavy is imported or loaded here."""
        shared: dict[str, Any] = {}
        tools = []
        for tool_class in tool_classes():
            source = sources.get(tool_class.model.variable) if tool_class.model else None
            tools.append(tool_class.create(ToolConfig(source, device, values, shared, model_server)))
        return cls(tools)

    def get(self, name: str) -> Tool[Any]:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"Unknown tool {name!r}; available: {', '.join(self._tools)}.")
        return tool

    def routed(self, kind: str, text: str, llm_model: str | None = None) -> list[Tool[Any]]:
        """The tools an attachment of ``kind`` goes to by itself, given the user's ``text`` and
        the language model in use (a tool unavailable with it is left out): those that take
        every such attachment first (a photo's class, in milliseconds), then those the text
        asks for (its object detection, seconds on a CPU), then the slow ones (a vision model)."""
        every = [tool for tool in self._tools.values() if kind in tool.routes]
        asked = [tool for tool in self._tools.values() if kind not in tool.routes
                 and tool.trigger is not None and tool.trigger.wants(kind, text)]
        chosen = [tool for tool in every + asked if tool.unavailable(llm_model) is None]
        return sorted(chosen, key=lambda tool: tool.slow)  # stable: the order above otherwise

    def unavailable(self, llm_model: str | None) -> dict[str, str]:
        """The tools that cannot run where the language model in use is ``llm_model``, each with
        the sentence that says how to enable it."""
        reasons = {tool.name: tool.unavailable(llm_model) for tool in self._tools.values()}
        return {name: reason for name, reason in reasons.items() if reason is not None}

    def for_text(self, text: str) -> list[tuple[Tool[Any], dict[str, Any]]]:
        """The tools the user's message asks to run on a passage it quotes, with their arguments."""
        calls = [(tool, tool.text_arguments(text)) for tool in self._tools.values()]
        return [(tool, arguments) for tool, arguments in calls if arguments is not None]

    def follow_ups(self, kind: str, result: ToolResult) -> list[Tool[Any]]:
        """The tools that also run on an attachment of ``kind`` after a routed tool's ``result``."""
        return [tool for tool in self._tools.values()
                if kind in tool.kinds and tool.name != result.tool and tool.follows(kind, result)]

    def routing_sentence(self, off: Collection[str] = ()) -> str:
        """How attachments are routed, by kind, for the system prompt
        (``image: image, detect when asked; video: video``), the tools named in ``off`` left out
        (unavailable with the language model in use: the model must not think they ran)."""
        tools = [tool for tool in self._tools.values() if tool.name not in off]
        by_kind: dict[str, list[str]] = {}
        for tool in tools:
            for kind in sorted(tool.routes):
                by_kind.setdefault(kind, []).append(tool.name)
        for tool in tools:
            for kind in sorted(tool.trigger.kinds if tool.trigger is not None else ()):
                by_kind.setdefault(kind, []).append(f"{tool.name} when asked")
        return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self._tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __iter__(self) -> Iterator[Tool[Any]]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools
