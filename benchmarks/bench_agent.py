"""Agent overhead per turn outside the LLM and the models (target: ≤ 10 ms).

A scripted chat model answers instantly and a no-op tool returns at once, so what is timed is
the agent itself: routing, prompt and history assembly with the context budget, tool-call
bookkeeping, JSON of results, and the SQLite memory (read and write) — with a conversation
that already has 50 turns in memory.
"""

from __future__ import annotations

from common import emit, median_ms, scratch_dir
from pydantic import BaseModel

from assistant.agent import Agent
from assistant.memory import Memory
from assistant.turns import Turn
from tests.scripted_llm import ScriptedLLM, call_tools, say
from tools.base import Label, Tool, ToolContext, ToolResult
from tools.registry import ToolRegistry

HISTORY_TURNS = 50


class NoopParams(BaseModel):
    attachment_id: str | None = None
    text: str | None = None


class NoopTool(Tool):
    Params = NoopParams

    def __init__(self, name: str, kinds: frozenset[str]) -> None:
        super().__init__()
        self.name, self.kinds, self.description = name, kinds, f"No-op {name}."  # type: ignore[misc]

    def source(self) -> str:
        return "none"

    def _load(self) -> object:
        return object()

    def run(self, params: BaseModel, ctx: ToolContext) -> ToolResult:
        return ToolResult(tool=self.name, labels=[Label(label="x", score=0.5), Label(label="y", score=0.3)])


def main() -> None:
    work = scratch_dir("agent")
    tools = ToolRegistry([NoopTool("sentiment", frozenset()), NoopTool("image", frozenset({"image"})),
                          NoopTool("detect", frozenset({"image"})), NoopTool("audio", frozenset({"audio"}))])
    llm = ScriptedLLM()
    agent = Agent(tools, Memory(work / "memory.sqlite3"), llm, output_root=work / "outputs")
    photo = work / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff not decoded by the no-op tool")
    image = agent.attachments("bench").register(photo, kind="image")
    for i in range(HISTORY_TURNS):
        llm.script.append(say(f"answer {i} " + "word " * 40))
        agent.respond(Turn("bench", f"question {i} " + "word " * 40))

    def plain() -> None:
        llm.script.append(say("A short answer."))
        agent.respond(Turn("bench", "hello there"))

    def one_tool() -> None:
        llm.script += [call_tools(("sentiment", {"text": "great"})), say("Positive.")]
        agent.respond(Turn("bench", "how does 'great' sound?"))

    def photo_turn() -> None:  # routed image + detect, then one more tool round
        llm.script += [call_tools(("sentiment", {"text": "where is it"})), say("A thing.")]
        agent.respond(Turn("bench", "what is where in this photo?", [image]))

    emit("agent",
         history_turns=HISTORY_TURNS,
         turn_no_tool_ms=median_ms(plain, repeat=30, warmup=3),
         turn_one_tool_ms=median_ms(one_tool, repeat=30, warmup=3),
         turn_photo_routed_plus_tool_ms=median_ms(photo_turn, repeat=30, warmup=3),
         target_ms=10)


if __name__ == "__main__":
    main()
