"""The tool decision of a model offered tools by a structured decision (no native tool calling,
or a template that writes the tools into the last user message): a JSON object its server's
structured outputs enforce, offering only the calls that could add something; and which of a
model's own calls could not add anything (:func:`needless`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from assistant.attachments import Attachment
from assistant.turn.checks import normalised
from tools.base import ATTACHMENT_ARGUMENT
from tools.registry import ToolRegistry

#: Attachments a tool decision may name (the conversation's latest).
DECISION_ATTACHMENTS = 32
#: The most calls one decision may make.
MAX_DECIDED_CALLS = 4


def needless(call_name: str, args: Mapping[str, Any], tools: ToolRegistry, asked: str,
             earlier: Iterable[BaseMessage]) -> bool:
    """Whether a call the model made cannot add anything, so it is not run (a model offered
    tools natively calls one on "thanks"): a tool on an attachment it analysed in an
    ``earlier`` turn (the result is in the conversation), or a tool of the text alone on the
    user's own message ``asked`` when that message does not ask what it measures."""
    target = args.get(ATTACHMENT_ARGUMENT)
    if isinstance(target, str):
        return any(call["name"] == call_name and call["args"].get(ATTACHMENT_ARGUMENT) == target
                   for message in earlier if isinstance(message, AIMessage) for call in message.tool_calls)
    text = next((value for value in args.values() if isinstance(value, str)), None)
    return (text is not None and normalised(text) == normalised(asked)
            and not tools.get(call_name).asked_for(asked))


def offers(tools: ToolRegistry, schemas: Sequence[dict[str, Any]], text: str,
           messages: Iterable[BaseMessage], attachments: Sequence[Attachment]) -> dict[str, list[str]]:
    """The calls that could add something now, as tool name → the attachment ids it may take
    (empty: a tool of the text alone): a tool on those of the conversation's latest
    :data:`DECISION_ATTACHMENTS` ``attachments`` of its kinds it has not tried yet in
    ``messages`` (a tool that runs when asked, only when the message ``text`` asks), and a
    tool of the text alone when the message asks what it measures; only tools of ``schemas``
    (those that run with the model: vision without a vision model is not among them). Nothing
    to offer: the model answers at once (a weak model offered a tool takes it, even for "hi")."""
    done = {(call["name"], call["args"].get(ATTACHMENT_ARGUMENT)) for message in messages
            if isinstance(message, AIMessage) for call in message.tool_calls
            if isinstance(call["args"].get(ATTACHMENT_ARGUMENT), str)}
    recent = list(attachments)[-DECISION_ATTACHMENTS:]
    found: dict[str, list[str]] = {}
    for schema in schemas:
        tool = tools.get(schema["function"]["name"])
        if ATTACHMENT_ARGUMENT not in schema["function"]["parameters"].get("properties", {}):
            if tool.asked_for(text):
                found[tool.name] = []
        elif tool.trigger is None or tool.asked_for(text):
            ids = [a.id for a in recent if a.kind in tool.kinds and (tool.name, a.id) not in done]
            if ids:
                found[tool.name] = ids
    return found


def decision_schema(schemas: Sequence[dict[str, Any]], offers: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The JSON schema of a tool decision: the calls to make, or none to answer. Each call is
    one of the ``offers`` (tool name → the attachment ids its ``attachment_id`` may be;
    ``schemas``: the tools' function schemas) with that tool's own arguments, so constrained
    decoding cannot wander off into a free-form object nor name a file that does not exist.
    ``offers`` is not empty (with nothing to offer there is no decision)."""
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
            "properties": {"tool_calls": {"type": "array", "items": {"anyOf": calls},
                                          "maxItems": MAX_DECIDED_CALLS}}}
