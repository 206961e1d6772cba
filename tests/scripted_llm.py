"""A chat model that replays a script, for agent tests without Ollama.

Each step of the script is an :class:`AIMessage` (returned, its text streamed word by word),
an exception (raised), or a callable taking the messages and returning one of those.
Every call is recorded in :attr:`ScriptedLLM.calls` so tests can inspect what the model saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from assistant.llm import LLMStatus


@dataclass
class Call:
    messages: list[BaseMessage]
    tools: list[dict[str, Any]] | None


def say(text: str) -> AIMessage:
    return AIMessage(content=text)


def call_tools(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    """A reply with native tool calls: ``call_tools(("image", {"attachment_id": "att_1"}))``."""
    return AIMessage(content="", tool_calls=[
        {"name": name, "args": args, "id": f"scripted_{i}", "type": "tool_call"}
        for i, (name, args) in enumerate(calls)])


Step = AIMessage | BaseException | Callable[[list[BaseMessage]], AIMessage]


class ScriptedLLM:
    def __init__(self, script: Sequence[Step] = (), *, native_tools: bool | None = True,
                 repeat_last: bool = False) -> None:
        self.script = list(script)
        self.native_tools = native_tools
        self.repeat_last = repeat_last
        self.calls: list[Call] = []
        self.warmed = False

    def chat(self, messages: Sequence[BaseMessage], *, tools: Sequence[dict[str, Any]] | None = None,
             on_token: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> AIMessage:
        self.calls.append(Call(list(messages), list(tools) if tools else None))
        if not self.script:
            raise AssertionError("the scripted model was called more often than scripted")
        step = self.script[0] if self.repeat_last and len(self.script) == 1 else self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        answer = step if isinstance(step, AIMessage) else step(list(messages))
        if on_token is not None and isinstance(answer.content, str):
            for word in answer.content.split(" "):
                if cancel is not None and cancel.is_set():
                    break
                on_token(word + " ")
        return answer

    def status(self) -> LLMStatus:
        mode = {True: "native", False: "json-fallback", None: "unknown"}[self.native_tools]
        return LLMStatus("scripted", "scripted", True, True, mode)

    def warm_up(self) -> str | None:
        self.warmed = True
        return None
