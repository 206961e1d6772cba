"""Routing: the calls a turn gets whatever the model decides, as the tools declare them.

Every attachment goes to the tools that take every such attachment (a photo's class first,
in milliseconds), then to those its text asks for (object detection); a quoted passage goes
to the tool the message asks about it; a routed result may ask for a follow-up (speech after
the audio tool heard someone talking). Voice notes' words become the user's message.
"""

from __future__ import annotations

from typing import Any

from assistant.attachments import Attachment
from assistant.turn.state import Call, CallRecord, TurnState
from tools.base import Tool, ToolError
from tools.registry import ToolRegistry


def routed_calls(tools: ToolRegistry, state: TurnState) -> list[CallRecord]:
    """The calls every attachment gets regardless of the model (but not those of a tool
    unavailable with the language model in use: vision without a vision model), and those the
    user's message asks for on a passage it quotes."""
    records = []
    for attachment in state.turn.attachments:
        for tool in tools.routed(attachment.kind, state.turn.text, state.ctx.llm_model):
            records += _routed_call(tool, attachment, state)
    for tool, arguments in tools.for_text(state.turn.text):
        records.append(state.record(CallRecord(Call(tool.name, arguments), tool.name,
                                               f"{tool.name} on the quoted text", routed=True)))
    return records


def follow_up_calls(tools: ToolRegistry, state: TurnState) -> list[CallRecord]:
    """The calls routed results ask for (speech when the audio tool heard someone talking)."""
    made = [record for record in state.records if record.attachment is not None and record.call is not None]
    done = {(record.tool, record.attachment.id) for record in made if record.attachment is not None}
    records = []
    for record in made:
        if record.result is None or record.attachment is None:
            continue
        for tool in tools.follow_ups(record.attachment.kind, record.result):
            if (tool.name, record.attachment.id) not in done:
                done.add((tool.name, record.attachment.id))
                records += _routed_call(tool, record.attachment, state)
    return records


def spoken_words(state: TurnState) -> dict[str, str]:
    """What was said in this turn's voice notes, by attachment id."""
    return {record.attachment.id: words for record in state.records
            if record.attachment is not None and record.attachment.kind == "voice"
            and record.result is not None and (words := record.result.transcript())}


def _routed_call(tool: Tool[Any], attachment: Attachment, state: TurnState) -> list[CallRecord]:
    """The call of ``tool`` on ``attachment`` (none, and the error recorded, if it cannot be made)."""
    subject = f"{tool.name} on {attachment.id}"
    try:
        arguments = tool.routed_arguments(attachment.id, state.ctx.attachments)
    except ToolError as exc:
        state.record(CallRecord(None, tool.name, subject, routed=True, attachment=attachment, outcome=str(exc)))
        return []
    return [state.record(CallRecord(Call(tool.name, arguments), tool.name, subject, routed=True,
                                    attachment=attachment))]
