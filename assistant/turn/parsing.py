"""Tool calls read out of a model's text, however it writes them, and the words left for the person.

Native calls come typed from the model client; a model without them writes calls as JSON in
its text: fenced or not, several objects, text around them, ``<tool_call>`` tags. Only JSON
objects count as calls (a tool named in prose is never run). One small reader per way of
writing a call (:data:`READERS`); call- or result-shaped JSON never reaches the person.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from assistant.turn import quirks
from assistant.turn.state import Call
from tools.base import Label, ToolResult
from tools.registry import ToolRegistry, tool_classes

#: ``<tool_call>…</tool_call>`` blocks (Qwen, Hermes and others), an unclosed one at the end included.
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
#: A call the model began and never finished, at the end of its text (``{"name":``).
_DANGLING_CALL = re.compile(r'(```\w*\s*)?(<tool_call>\s*)?\{\s*"(name|tool|tool_name|function|tool_calls)"\s*:[^}]*$')
#: Keys of a call object: its tool's name and its arguments.
_NAME_KEYS = ("name", "tool", "function", "tool_name")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
#: Keys of a call's syntax.
_CALL_KEYS = ("tool_calls", "arguments", "parameters", "function_call")
#: Keys a result object has that no call has (besides the result types' own fields).
_RESULT_WORDS = {"result", "results", "output", "error", "scores", "tool_result"}


@dataclass
class Answer:
    """A model's text, read: the calls it asked for, its words for the person, and what was wrong."""

    calls: list[Call] = field(default_factory=list)
    words: str = ""
    #: Problems with call-shaped JSON (unknown tool, bad arguments), for the model.
    problems: list[str] = field(default_factory=list)


def read_answer(text: str, tools: ToolRegistry) -> Answer:
    """Split a model's text into tool calls (validated against ``tools``) and words.

    Call-shaped objects with an unknown tool or bad arguments are problems, not calls;
    result-shaped objects (a model imitating tool output) are dropped. Other JSON (that the
    person may have asked for) stays in the words.
    """
    answer = Answer()
    kept: list[str] = []
    position = 0
    for start, end, data in _json_objects(text):
        requests = _requests(data)
        if requests is None and not _is_result(data):
            continue  # other JSON
        kept.append(text[position:start])
        position = end
        for request in requests or []:
            call, problem = _validate(request, tools)
            if call is not None:
                answer.calls.append(call)
            elif problem is not None:
                answer.problems.append(problem)
    kept.append(text[position:])
    words = _DANGLING_CALL.sub("", "".join(kept))
    words = _fragment_lines().sub("", words)
    words = re.sub(r"</?tool_call>|```(?:json)?\s*```", "", words)  # tags and fences left empty
    answer.words = re.sub(r"\n{3,}", "\n\n", words).strip()
    return answer


# -- one reader per way of writing calls: each gives the requests in an object, or None -----

def _tool_calls_list(data: dict[str, Any]) -> list[Any] | None:
    """``{"tool_calls": [{…}, …]}`` (the decision format, and models imitating OpenAI's reply)."""
    if "tool_calls" not in data:
        return None
    requests = data["tool_calls"]
    return requests if isinstance(requests, list) else [requests]


def _function_call(data: dict[str, Any]) -> list[Any] | None:
    """``{"function_call": {…}}`` (OpenAI's older format)."""
    return [data["function_call"]] if "function_call" in data else None


def _flat_call(data: dict[str, Any]) -> list[Any] | None:
    """``{"name": …, "arguments": {…}}`` and its spellings (``tool``, ``parameters``, …)."""
    named = any(key in data for key in _NAME_KEYS) and any(key in data for key in _ARGUMENT_KEYS)
    return [data] if named else None


def _function_object(data: dict[str, Any]) -> list[Any] | None:
    """``{"function": {"name": …, "arguments": "…"}}`` (OpenAI's tool call)."""
    return [data] if isinstance(data.get("function"), dict) else None


#: The readers, in the order they are tried.
READERS: tuple[Callable[[dict[str, Any]], list[Any] | None], ...] = (
    _tool_calls_list, _function_call, _flat_call, _function_object)


def _requests(data: Any) -> list[Any] | None:
    """The call requests in a JSON value (None: it is not call-shaped)."""
    if not isinstance(data, dict):
        return None
    if "_unreadable" in data:  # a tagged call that is not valid JSON
        return [None]
    return next((found for reader in READERS if (found := reader(data)) is not None), None)


def _is_result(data: Any) -> bool:
    """Whether a JSON value looks like a tool's result (a model imitating tool output)."""
    return isinstance(data, dict) and bool(result_vocabulary() & set(data))


@cache
def result_vocabulary() -> frozenset[str]:
    """The keys that mark a tool's result as the model reads it, from the result types: the
    fields of labels (``label``, ``score``), every result type's lists (``labels``, ``outputs``,
    ``events``, ``detections``…) and times (``duration_s``); plus general ones and keys models
    were seen to invent."""
    tool_classes()  # every tool module imported: all result types are defined
    found = set(Label.model_fields)
    types: list[type[ToolResult]] = [ToolResult]
    while types:
        kind = types.pop()
        types.extend(kind.__subclasses__())
        found |= {name for name, info in kind.model_fields.items()
                  if typing.get_origin(info.annotation) is list or name.endswith("_s")}
    return frozenset(found | _RESULT_WORDS | quirks.INVENTED_RESULT_KEYS)


@cache
def _fragment_lines() -> re.Pattern[str]:
    """A line with a piece of call or result syntax that is not valid JSON (``{"tool_calls": [}]}``)."""
    keys = "|".join(sorted(map(re.escape, {*_CALL_KEYS, *result_vocabulary()} - _RESULT_WORDS)))
    return re.compile(rf'^.*"({keys})"\s*:.*$\n?', re.MULTILINE)


def _json_objects(text: str) -> list[tuple[int, int, Any]]:
    """Every top-level JSON object in ``text`` as (start, end, value), left to right."""
    decoder = json.JSONDecoder()
    found = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("{", index + 1)
            continue
        found.append((index, end, value))
        index = text.find("{", end)
    for match in _TAGGED.finditer(text):  # a tagged call that is not valid JSON is still a call
        if not any(start >= match.start() and end <= match.end() for start, end, _ in found):
            found.append((match.start(), match.end(), {"_unreadable": match.group(1)}))
    return sorted(found, key=lambda item: item[0])


def _validate(request: Any, tools: ToolRegistry) -> tuple[Call | None, str | None]:
    if not isinstance(request, dict):
        return None, "each tool call must be a JSON object with a name and arguments"
    if isinstance(request.get("function"), dict):  # OpenAI style: {"function": {"name", "arguments"}}
        request = request["function"]
    name = next((request[key] for key in _NAME_KEYS if isinstance(request.get(key), str)), None)
    arguments = next((request[key] for key in _ARGUMENT_KEYS if key in request), {})
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if name not in tools:
        return None, f"unknown tool {name!r}; available: {', '.join(tools.names)}"
    if not isinstance(arguments, dict):
        return None, f"arguments of {name} must be a JSON object"
    return Call(name, arguments), None
