"""Running a turn's tool calls: each once (a repeat is refused and the model told), every
outcome recorded and saved as it comes, results compacted into what the model reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from assistant.turn.parsing import Answer
from assistant.turn.state import CallRecord, TurnState
from tools.base import BadCall, ToolError, ToolResult
from tools.registry import ToolRegistry

log = logging.getLogger(__name__)

#: Longest tool result (characters of JSON) put into the conversation.
MAX_TOOL_RESULT_CHARS = 4000

#: Receives a turn's result lines and the transcripts among them, each time a tool has run.
ResultsCallback = Callable[[list[str], list[str]], None]


class ToolRunner:
    """Runs the calls of one turn with its tools and its :class:`ToolContext`."""

    def __init__(self, tools: ToolRegistry, state: TurnState, on_results: ResultsCallback | None) -> None:
        self.tools, self.state, self.on_results = tools, state, on_results

    def run(self, records: Sequence[CallRecord]) -> None:
        """Run calls; their outcomes (errors included) go into the turn, each saved as it comes
        (a crash keeps it) and its result line passed on once its tool is done."""
        records = [record for record in records if record.call is not None]
        if not records:
            return
        state = self.state
        state.messages.append(AIMessage(content="", tool_calls=[r.call.as_tool_call() for r in records if r.call]))
        for record in records:
            assert record.call is not None
            before = len(state.finished)
            if state.cancelled:
                content = json.dumps({"error": "cancelled by the user before this tool ran"})
            else:
                content = self.run_one(record)
            state.messages.append(ToolMessage(content=content, tool_call_id=record.call.id, name=record.tool))
            state.save()
            if self.on_results is not None and len(state.finished) > before:
                heard, results = state.result_lines()
                self.on_results(results, heard)

    def run_one(self, record: CallRecord) -> str:
        """Run one call; what the model reads of its outcome."""
        assert record.call is not None
        name = record.tool
        try:
            result = self.tools.get(name).call(record.call.args, self.state.ctx)
        except BadCall as exc:
            if record.routed:  # not the model's mistake: the person sees it
                self.state.finish(record, str(exc))
            else:  # the model's mistake: the model is told; the person sees no "result" of it
                log.info("model's call of %s rejected: %s", name, exc)
            return json.dumps({"error": str(exc)}, ensure_ascii=False)
        except ToolError as exc:
            self.state.finish(record, str(exc))
            return json.dumps({"error": str(exc)}, ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - a tool's bug is reported, not raised
            log.exception("tool %s failed", name)
            message = f"{name} failed unexpectedly: {exc.__class__.__name__}: {exc}"
            self.state.finish(record, message)
            return json.dumps({"error": message}, ensure_ascii=False)
        self.state.finish(record, result)
        return compact_json(result_for_model(result))

    def run_requested(self, answer: Answer) -> bool:
        """Run the new calls the model asked for; tell it about repeats and rejected ones.
        True when the model may call tools again."""
        ran = self.state.ran()
        fresh: list[CallRecord] = []
        repeated = []
        for call in answer.calls:
            key = call.key()
            if key in ran or any(record.call is not None and record.call.key() == key for record in fresh):
                repeated.append(call)
            else:
                fresh.append(self.state.record(CallRecord(call, call.name, call.subject())))
        self.run(fresh)
        if answer.problems:
            self.state.messages.append(HumanMessage(
                content=f"[Tool request rejected: {'; '.join(answer.problems)}] "
                        "Reply with a valid tool call or answer the user."))
        if repeated:
            names = ", ".join(sorted({call.name for call in repeated}))
            self.state.messages.append(HumanMessage(
                content=f"[{names}: already run in this turn with these arguments; the result is above.]"))
        return not repeated


def result_for_model(result: ToolResult) -> dict[str, Any]:
    """A result as the model reads it: output files by name only (the reply carries their
    paths for the channel), so no file system path ever reaches the model."""
    data = result.to_json()
    data["outputs"] = [Path(path).name for path in result.outputs]
    return data


def compact_json(data: dict[str, Any]) -> str:
    """``data`` as compact JSON, cut at :data:`MAX_TOOL_RESULT_CHARS`."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= MAX_TOOL_RESULT_CHARS:
        return text
    return text[:MAX_TOOL_RESULT_CHARS] + " …(truncated)"
