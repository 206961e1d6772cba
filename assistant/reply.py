"""The reply contract: what a language model writes becomes tool calls and clean words, and
anything the model cannot be trusted with is rendered here from the real tool results.

- :func:`read_answer` finds tool calls however a model writes them (native calls are handled
  by the agent; here: JSON in the text, fenced or not, several objects, text around them,
  ``<tool_call>`` tags) and separates the words meant for the person from call- or
  result-shaped JSON, which never reaches the person.
- :func:`is_usable` says whether the remaining words are an answer (not empty, not markup,
  not a repeat of an earlier reply or an echo of the instructions).
- :func:`render_fallback` is the one renderer of replies made without the model's words:
  the no-LLM mode, a model that is down, times out, fails mid-stream or gives no usable answer.
- :func:`result_line` is the compact, grounded line per tool that ran, from its ``ToolResult``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant import prompts
from tools.base import ATTACHMENT_ARGUMENT, ToolResult
from tools.registry import ToolRegistry

#: What a tool produced, or the error message it gave.
Outcome = ToolResult | str

#: ``<tool_call>…</tool_call>`` blocks (Qwen, Hermes and others), an unclosed one at the end included.
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
#: Markup a reply may consist of without saying anything: tags, fences, special tokens.
_MARKUP = re.compile(r"<\|?/?[\w.:-]*\|?>|```\w*|[\s`*_#>\[\](){}|,.:;\"'-]+")
#: How a line of JSON (or of a broken piece of it) starts.
_STRUCTURE_OPENERS = '{}[],"'
#: A reply at least this long (in normalised words) that repeats an earlier reply word for
#: word is no answer to a new message.
REPEAT_MIN_CHARS = 40
#: This many consecutive words of an instruction to the model in a reply make it an echo.
ECHO_WORDS = 5
#: The fewest words of the user's message that a reply may not open with (a parroted question).
PARROT_MIN_WORDS = 3
#: A line with a piece of call or result syntax that is not valid JSON (``{"tool_calls": [}]}``).
_CALL_FRAGMENT = re.compile(r'^.*"(tool_calls|arguments|parameters|function_call|labels|outputs|events|'
                            r'detections|duration_s|event_type|event_data|score|label)"\s*:.*$\n?', re.MULTILINE)
#: A call the model began and never finished, at the end of its text (``{"name":``).
_DANGLING_CALL = re.compile(r'(```\w*\s*)?(<tool_call>\s*)?\{\s*"(name|tool|tool_name|function|tool_calls)"\s*:[^}]*$')
#: Keys of a tool call object and of a tool result object.
_NAME_KEYS = ("name", "tool", "function", "tool_name")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
_RESULT_KEYS = {"labels", "outputs", "result", "results", "output", "error", "detections", "events",
                "label", "score", "scores", "tool_result"}


@dataclass
class Answer:
    """A model's text, read: the calls it asked for, its words for the person, and what was wrong."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    words: str = ""
    #: Problems with call-shaped JSON (unknown tool, bad arguments), for the model.
    problems: list[str] = field(default_factory=list)
    #: Whether the text held call- or result-shaped JSON (removed from ``words``).
    had_structures: bool = False


def make_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A LangChain tool call with a fresh id."""
    return {"name": name, "args": dict(args), "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def call_key(call: dict[str, Any]) -> str:
    """Identical calls (same tool, same arguments) have the same key."""
    return call["name"] + json.dumps(call["args"], sort_keys=True, ensure_ascii=False)


def decision_schema(schemas: list[dict[str, Any]], offers: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The JSON schema of a tool decision (Ollama's structured outputs enforce it): the calls
    to make, or none to answer. Each call is one of the ``offers`` (tool name → the attachment
    ids its ``attachment_id`` may be; ``schemas``: the tools' function schemas) with that
    tool's own arguments, so constrained decoding cannot wander off into a free-form object
    nor name a file that does not exist. ``offers`` is not empty (with nothing to offer there
    is no decision)."""
    assert offers, "a decision needs something to offer"
    calls = []
    for schema in schemas:
        name, parameters = schema["function"]["name"], schema["function"]["parameters"]
        if name not in offers:
            continue
        properties = parameters.get("properties", {})
        if ATTACHMENT_ARGUMENT in properties:
            parameters = {**parameters, "properties": {**properties, ATTACHMENT_ARGUMENT: {
                **properties[ATTACHMENT_ARGUMENT], "type": "string", "enum": list(offers[name])}}}
        calls.append({"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                      "properties": {"name": {"type": "string", "enum": [name]}, "arguments": parameters}})
    return {"type": "object", "required": ["tool_calls"], "additionalProperties": False,
            "properties": {"tool_calls": {"type": "array", "items": {"anyOf": calls}, "maxItems": 4}}}


def read_answer(text: str, tools: ToolRegistry) -> Answer:
    """Split a model's text into tool calls (validated against ``tools``) and words.

    Only JSON objects count as calls: a tool named in prose is never run. Call-shaped objects
    with an unknown tool or bad arguments are problems, not calls; result-shaped objects (a
    model imitating tool output) are dropped. Other JSON (that the person may have asked
    for) stays in the words.
    """
    answer = Answer()
    kept: list[str] = []
    position = 0
    for start, end, data in _json_objects(text):
        kind = _classify(data)
        if kind == "other":
            continue
        kept.append(text[position:start])
        position = end
        answer.had_structures = True
        if kind == "calls":
            for request in _requests(data):
                call, problem = _validate(request, tools)
                if call is not None:
                    answer.calls.append(call)
                elif problem is not None:
                    answer.problems.append(problem)
    kept.append(text[position:])
    words = "".join(kept)
    words, cut = _DANGLING_CALL.subn("", words)
    words, broken = _CALL_FRAGMENT.subn("", words)
    broken += cut
    answer.had_structures |= bool(broken)
    words = re.sub(r"</?tool_call>|```(?:json)?\s*```", "", words)  # tags and fences left empty
    answer.words = re.sub(r"\n{3,}", "\n\n", words).strip()
    return answer


def is_usable(words: str, *, earlier: Collection[str] = (), instructions: Sequence[str] = (),
              asked: str = "", json_asked: bool = False) -> bool:
    """Words that say something: not empty, not only markup or punctuation, not only JSON or
    pieces of it (unless ``json_asked``: the person asked for JSON), not a copy of a fallback
    reply from memory or of its note (a model imitating them would pass off stale results), not
    a verbatim repeat of one of the conversation's ``earlier`` replies (of at least
    :data:`REPEAT_MIN_CHARS`: small models answer every later question with their last
    answer), not opening with the user's message ``asked`` (:func:`parrots`), and not an echo
    of the ``instructions`` the model was sent in this turn."""
    said = normalised(words)
    if fallback_start(words) is not None or normalised(FALLBACK_IN_HISTORY) in said:
        return False
    if not _MARKUP.sub("", words).strip():
        return False
    if not json_asked and _is_structure(words):
        return False
    if len(said) >= REPEAT_MIN_CHARS and said in {normalised(reply) for reply in earlier}:
        return False
    if parrots(said, normalised(asked)):
        return False
    return not any(_shares_phrase(said.split(), normalised(instruction).split()) for instruction in instructions)


def parrots(said: str, asked: str) -> bool:
    """Whether the normalised words ``said`` open with the user's normalised message ``asked``
    (of :data:`PARROT_MIN_WORDS` or more; small models repeat the question before rambling)."""
    return len(asked.split()) >= PARROT_MIN_WORDS and (said == asked or said.startswith(asked + " "))


def _is_structure(text: str) -> bool:
    """Whether ``text`` is mostly JSON or pieces of it (valid or not), not prose: most of its
    lines open with a bracket, a quote or a comma or hold under three words outside quotes,
    and some bracket or ``"key":`` is there."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    structural = [line for line in lines if line[0] in _STRUCTURE_OPENERS
                  or len(re.findall(r"\w+", re.sub(r'"[^"\n]*"', "", line))) < 3]
    return bool(lines) and len(structural) >= 0.6 * len(lines) and bool(re.search(r'[{}\[\]]|":|:"', text))


def normalised(text: str) -> str:
    """The words of ``text``, lower-case, one space apart (punctuation and layout dropped)."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _shares_phrase(words: list[str], other: list[str], length: int = ECHO_WORDS) -> bool:
    """Whether ``words`` contain ``length`` consecutive words of ``other``."""
    phrases = {tuple(other[i:i + length]) for i in range(len(other) - length + 1)}
    return any(tuple(words[i:i + length]) in phrases for i in range(len(words) - length + 1))


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
            found.append((match.start(), match.end(), {"tool_calls": [], "_unreadable": match.group(1)}))
    return sorted(found, key=lambda item: item[0])


def _classify(data: Any) -> str:
    """"calls", "result" (imitated tool output), or "other" JSON."""
    if not isinstance(data, dict):
        return "other"
    if "tool_calls" in data or "function_call" in data:
        return "calls"
    if any(key in data for key in _NAME_KEYS) and any(key in data for key in _ARGUMENT_KEYS):
        return "calls"
    if isinstance(data.get("function"), dict):
        return "calls"
    if _RESULT_KEYS & set(data):
        return "result"
    return "other"


def _requests(data: dict[str, Any]) -> list[Any]:
    if "_unreadable" in data:
        return [None]
    if "tool_calls" in data:
        requests = data["tool_calls"]
        return requests if isinstance(requests, list) else [requests]
    if "function_call" in data:
        return [data["function_call"]]
    return [data]


def _validate(request: Any, tools: ToolRegistry) -> tuple[dict[str, Any] | None, str | None]:
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
    return make_call(name, arguments), None


# -- what the person sees without the model's words ---------------------------------------

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


def render_fallback(reason: str, outcomes: list[tuple[str, Outcome]], *, said: str = "",
                    nothing_ran: str = "") -> str:
    """The one renderer of replies built from real tool results instead of the model's words.

    ``reason`` says why the model's words are missing or cut short (one of the reasons above,
    or an error's message); ``said`` is what the model had already said (kept, never thrown away);
    ``nothing_ran`` what to say when no tool ran in the turn.
    """
    reason = reason.strip()
    sentence = reason[-1:] in (".", "!", "?")  # an error's own message, already a sentence
    if outcomes:
        reason += " The tool results are below." if sentence else "; the tool results are below."
        results = "\n".join(_summary_item(subject, outcome) for subject, outcome in outcomes)
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


def for_the_model(reply: str) -> str:
    """A stored reply as the model reads it in the history: a fallback's part replaced by
    :data:`FALLBACK_IN_HISTORY` (what the model had said before it is kept)."""
    start = fallback_start(reply)
    if start is None:
        return reply
    said = reply[:start].strip()
    return f"{said}\n\n{FALLBACK_IN_HISTORY}" if said else FALLBACK_IN_HISTORY


def result_line(outcome: Outcome, tool: str) -> str:
    """The compact, grounded line for one tool that ran (``audio · Siren 76% · …``)."""
    if isinstance(outcome, str):
        return f"{tool} · error: {outcome}"
    return outcome.result_line()


def _summary_item(subject: str, outcome: Outcome) -> str:
    if isinstance(outcome, str):
        return f"- **{subject}**: error – {outcome}"
    return f"- **{subject}**: {outcome.summary()}"
