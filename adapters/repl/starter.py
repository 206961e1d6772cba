"""The agent starter: the agent built and its language model warmed up in a background thread,
so the first prompt never waits for langchain, torch or tensorflow to import."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.config import Settings


class AgentUnavailable(Exception):
    """The agent could not be built (the message says why)."""


class AgentStarter:
    """Builds the agent and warms its language model in a background thread."""

    def __init__(self, settings: Settings, use_llm: bool) -> None:
        self._settings, self.use_llm = settings, use_llm
        self._built, self._warm = threading.Event(), threading.Event()
        self._agent: Agent | None = None
        self._error: str | None = None
        self.warm_message: str | None = None
        #: Called with the warm-up message (if any) from the starter thread.
        self.on_warm: list[Callable[[str], None]] = []
        #: Called with the agent once it is built, before any turn can run.
        self.on_built: list[Callable[[Agent], None]] = []

    def start(self) -> None:
        threading.Thread(target=self._work, name="agent-start", daemon=True).start()

    def _work(self) -> None:
        """Build, then warm up; whatever happens, whoever waits for either is let go (with the
        reason when the agent could not be built: a damaged database, a bad setting)."""
        try:
            from assistant.agent import build_agent

            agent = build_agent(self._settings, use_llm=self.use_llm)
            for built in self.on_built:
                built(agent)
            self._agent = agent
        except Exception as exc:  # noqa: BLE001 - shown to the person, who can fix the cause
            self._error = f"Could not start the assistant: {exc}"
        finally:
            self._built.set()
        try:
            if self._agent is not None:
                self.warm_message = self._agent.warm_up()
        finally:
            self._warm.set()
        if self.warm_message:
            for callback in self.on_warm:
                callback(self.warm_message)

    @property
    def warmed(self) -> bool:
        return self._warm.is_set()

    def agent(self) -> Agent:
        """The agent, waiting for it to be built; :class:`AgentUnavailable` if that failed."""
        _wait(self._built)
        if self._agent is None:
            raise AgentUnavailable(self._error or "Could not start the assistant.")
        return self._agent

    def wait_warm(self) -> None:
        _wait(self._warm)


def _wait(event: threading.Event) -> None:
    # Short timeouts keep the main thread responsive to Ctrl-C.
    while not event.wait(0.1):
        pass

