"""A chat model that replays a script, and small fake tools, for agent tests without Ollama
or real models.

Each step of the script is an :class:`AIMessage` (returned, its text streamed word by word),
an exception (raised), or a callable taking the messages and returning one of those. ``pace``,
if given, is called with the text streamed so far before each further word (a test can hold
the stream there until a channel has shown that text).
Every call is recorded in :attr:`ScriptedLLM.calls` so tests can inspect what the model saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from pydantic import BaseModel, PrivateAttr

from assistant.llm import LLMStatus, ModelInfo, Strategy
from tools.base import Label, TextTrigger, Tool, ToolContext, ToolResult
from tools.detection import PhotoDetectionTool
from tools.registry import ToolRegistry
from tools.sentiment import SentimentTool


@dataclass
class Call:
    messages: list[BaseMessage]
    tools: list[dict[str, Any]] | None
    format: dict[str, Any] | None = None


def say(text: str) -> AIMessage:
    return AIMessage(content=text)


def call_tools(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    """A reply with native tool calls: ``call_tools(("image", {"attachment_id": "att_1"}))``."""
    return AIMessage(content="", tool_calls=[
        {"name": name, "args": args, "id": f"scripted_{i}", "type": "tool_call"}
        for i, (name, args) in enumerate(calls)])


Step = AIMessage | BaseException | Callable[[list[BaseMessage]], AIMessage]


class ScriptedLLM:
    model = "scripted"

    def __init__(self, script: Sequence[Step] = (), *, native_tools: bool | None = True,
                 repeat_last: bool = False, pace: Callable[[str], None] | None = None) -> None:
        self.script = list(script)
        self.pace = pace
        self.cancel: threading.Event | None = None  # the cancel event of the latest call
        self.native_tools = native_tools
        self.repeat_last = repeat_last
        self.calls: list[Call] = []
        self.warmed = False

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             format: dict[str, Any] | None = None, on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        self.calls.append(Call(list(messages), list(tools) if tools else None, format))
        self.cancel = cancel
        if not self.script:
            raise AssertionError("the scripted model was called more often than scripted")
        step = self.script[0] if self.repeat_last and len(self.script) == 1 else self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        answer = step if isinstance(step, AIMessage) else step(list(messages))
        if on_token is not None and isinstance(answer.content, str):
            streamed = ""
            for word in answer.content.split(" "):
                if self.pace is not None and streamed:
                    self.pace(streamed)
                if cancel is not None and cancel.is_set():
                    break
                on_token(word + " ")
                streamed += word + " "
        return answer

    def tool_calling(self) -> Strategy:
        """Native unless the model is known to have no native tools (``native_tools=False``)."""
        if self.native_tools is False:
            return Strategy(False, "the scripted model has no native tool calling")
        return Strategy(True, "the scripted model calls tools natively")

    def status(self) -> LLMStatus:
        strategy = self.tool_calling()
        return LLMStatus("scripted", "scripted", True, True, strategy.name, tool_calling_reason=strategy.reason,
                         native_tools=self.native_tools)

    def warm_up(self, system: Callable[[bool], str] | None = None,
                tools: Sequence[dict[str, Any]] | None = None) -> str | None:
        self.warmed = True
        return None

    def with_model(self, model: str) -> ScriptedLLM:
        return self

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.model, self.native_tools)]


class AttachmentParams(BaseModel):
    attachment_id: str


class TextParams(BaseModel):
    text: str


class FakeResult(ToolResult):
    """A fake tool's result: its label, and the cues its tool was told to give."""

    _cues: dict[str, float] = PrivateAttr(default_factory=dict)

    def cues(self) -> dict[str, float]:
        return dict(self._cues)


class FakeTool(Tool[Any]):
    """Answers a fixed label; records its calls; attachment tools resolve the id first.

    A text tool (``text=True``) judges text, and text documents by their contents."""

    name = "fake"
    description = "Fake tool."
    Params = AttachmentParams

    def __init__(self, name: str, kinds: frozenset[str], label: str, *, writes_output: bool = False,
                 routes: frozenset[str] | None = None, trigger: TextTrigger | None = None,
                 text: bool = False, cues: dict[str, float] | None = None) -> None:
        super().__init__()
        self.cues = cues or {}
        self.name, self.kinds, self.label, self.writes_output = name, kinds, label, writes_output  # type: ignore[misc]
        self.routes = kinds if routes is None else routes  # type: ignore[misc]
        self.trigger = trigger  # type: ignore[misc]
        self.description = f"Fake {name} tool."  # type: ignore[misc]
        self.Params = TextParams if text else AttachmentParams  # type: ignore[misc]
        self.calls: list[dict[str, Any]] = []

    def routed_arguments(self, attachment_id: str, attachments: Any) -> dict[str, Any]:
        if self.Params is TextParams:
            return {"text": attachments.path_of(attachment_id, self.kinds).read_text(encoding="utf-8")}
        return super().routed_arguments(attachment_id, attachments)

    def text_arguments(self, text: str) -> dict[str, Any] | None:  # type: ignore[override]
        return SentimentTool.text_arguments(text) if self.Params is TextParams else None

    def asked_for(self, text: str) -> bool:  # type: ignore[override]
        if self.Params is TextParams:
            return SentimentTool.asked_for(text)
        return self.trigger is not None and self.trigger.asked(text)

    def source(self) -> str:
        return "fake"

    def _load(self) -> object:
        return object()

    def run(self, params: BaseModel, ctx: ToolContext) -> ToolResult:
        self.calls.append(params.model_dump())
        outputs = []
        if isinstance(params, AttachmentParams):
            ctx.attachments.path_of(params.attachment_id, self.kinds)
            if self.writes_output:
                out = ctx.output_dir / f"{params.attachment_id}_annotated.jpg"
                out.write_bytes(b"annotated")
                outputs.append(str(out))
        result = FakeResult(tool=self.name, labels=[Label(label=self.label, score=0.87)], outputs=outputs)
        result._cues = self.cues
        return result


class BrokenTool(FakeTool):
    def run(self, params: BaseModel, ctx: ToolContext) -> ToolResult:
        raise RuntimeError("boom")


def fake_tools() -> ToolRegistry:
    """Fakes of the five real tools (same names, kinds and attachment parameter)."""
    return ToolRegistry([
        FakeTool("sentiment", frozenset({"text"}), "positive", text=True),
        FakeTool("audio", frozenset({"audio"}), "Siren"),
        FakeTool("image", frozenset({"image"}), "tabby"),
        FakeTool("detect", frozenset({"image"}), "cat", writes_output=True, routes=frozenset(),
                 trigger=PhotoDetectionTool.trigger),
        FakeTool("video", frozenset({"video"}), "car", writes_output=True),
    ])
