"""The plain UI: lines from standard input, plain text (or one JSON object a reply, --json) on
standard output, notices and errors on standard error; for pipes and scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from assistant.session import TurnView

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.llm import LLMStatus, ModelInfo
    from assistant.turns import Reply


class PlainUI:
    """Lines from standard input; plain replies on standard output, notices on standard error."""

    def __init__(self, stdin: TextIO, stdout: TextIO, stderr: TextIO, *, json_mode: bool = False) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.json_mode = json_mode

    def read(self, pending: int) -> str | None:
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def notice(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.stderr, flush=True)

    def show_tools(self, agent: Agent, unavailable: dict[str, str]) -> None:
        """Each tool, its model and whether it is loaded (or why it cannot run, and how to enable it)."""
        for tool in agent.tools:
            state = "loaded" if tool.loaded else "not loaded yet"
            self.say(f"{tool.name}: {tool.headline()} "
                     f"(model: {tool.source()}; {state})")
            if tool.name in unavailable:
                self.say(f"  off: {unavailable[tool.name]}")

    def show_status(self, status: LLMStatus) -> None:
        for label, value in status_lines(status):
            self.say(f"{label}: {value}")

    def show_models(self, models: list[ModelInfo], current: str, server: str = "Ollama") -> None:
        self.say(f"Models on {server} (/model NAME switches this conversation's model):")
        for model in models:
            self.say(f"  {model.name}{' (in use)' if model.name == current else ''} – {model.describe()}")

    def waiting(self, wait) -> None:
        wait()

    def answer(self, respond: Callable[[TurnView], Reply]) -> Reply:
        """Show the reply ``respond`` gives (it feeds the view while it works)."""
        reply = respond(TurnView())
        self.show_reply(reply)
        return reply

    def show_voice(self, path: Path, seconds: float, cut: bool) -> None:
        """Where the spoken reply was saved."""
        if self.json_mode:
            self.say(json.dumps({"voice": str(path), "seconds": round(seconds, 1), "cut": cut}))
        else:
            self.say(f"voice: {path} ({seconds:.0f} s{'; the rest is in the text' if cut else ''})")

    def cancelled(self) -> None:
        self.notice("cancelled")

    def show_reply(self, reply: Reply) -> None:
        if self.json_mode:  # one JSON object per reply, for scripts, tests and the benchmark
            self.say(json.dumps({"text": reply.text, "results": reply.results, "notes": reply.notes,
                                 "media": [str(path) for path in reply.media], "llm_used": reply.llm_used},
                                ensure_ascii=False))
            return
        for note in reply.notes:
            self.say(f"note: {note}")
        self.say(reply.text)
        for line in reply.results:
            self.say(f"result: {line}")
        for path in reply.media:
            self.say(f"saved: {path}")
        self.say("")


def status_lines(status: LLMStatus) -> list[tuple[str, str]]:
    """The language model's status as (label, value) lines for /model."""
    server = status.server[:1].upper() + status.server[1:]
    lines = [(server, f"{status.host} – {'reachable' if status.reachable else 'not reachable'}"),
             ("Model", f"{status.model} – " + ("available" if status.model_available
                                               else "not available")),
             ("Tool calling", status.tool_calling + (f" – {status.tool_calling_reason}"
                                                     if status.tool_calling_reason else ""))]
    if status.error:
        lines.append(("Problem", status.error))
    return lines

