"""The session layer: order per conversation, worker threads with cancel, the heavy-job queue,
the live view and its throttle, reply splitting (a stub agent; no channel)."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from assistant.session import HeavyQueue, Session, Throttle, TurnView, split_text
from assistant.turns import CANCELLED, Reply, Turn
from tools.registry import ToolRegistry


class StubAgent:
    """``respond`` runs ``answer(turn, on_token, on_progress, cancel)`` and records the order."""

    def __init__(self, answer: Callable[..., Reply] | None = None) -> None:
        self.answer = answer or (lambda turn, on_token, on_progress, cancel: Reply(text=turn.text))
        self.started: list[str] = []
        self.finished: list[str] = []
        self._stores: dict[str, AttachmentStore] = {}
        self.tools = ToolRegistry([])  # the heavy-job queue is as wide as its capacity

    def attachments(self, conversation_id: str) -> AttachmentStore:
        return self._stores.setdefault(conversation_id, AttachmentStore())

    def respond(self, turn: Turn, *, on_token=None, on_progress=None, on_results=None, cancel=None) -> Reply:
        self.started.append(turn.text)
        try:
            return self.answer(turn, on_token, on_progress, cancel)
        finally:
            self.finished.append(turn.text)


def test_one_conversation_in_arrival_order_others_alongside() -> None:
    release = threading.Event()

    def answer(turn, on_token, on_progress, cancel) -> Reply:
        if turn.text == "first":
            release.wait(10)
        return Reply(text=f"re: {turn.text}")

    agent = StubAgent(answer)
    session = Session(agent)

    async def one(conversation: str, text: str) -> str:
        async with session.ordered(conversation):
            return (await session.respond(Turn(conversation, text))).text

    async def main() -> list[str]:
        tasks = [asyncio.create_task(one("a", text)) for text in ("first", "second", "third")]
        while agent.started != ["first"]:
            await asyncio.sleep(0.01)
        other = await one("b", "elsewhere")  # not held up by conversation a
        assert agent.started == ["first", "elsewhere"]
        release.set()
        return [other, *await asyncio.gather(*tasks)]

    assert asyncio.run(main()) == ["re: elsewhere", "re: first", "re: second", "re: third"]
    assert agent.started == ["first", "elsewhere", "second", "third"]
    assert session._tails == {} and session._jobs == {}  # nothing kept for idle conversations


def test_an_abandoned_turn_finishes_before_the_next_one_starts() -> None:
    """A caller that stops waiting (Ctrl-C) cancels its turn; the conversation's next turn
    starts only once the cancelled one has finished (and stored itself)."""
    started = threading.Event()

    def answer(turn, on_token, on_progress, cancel) -> Reply:
        if turn.text == "long":
            started.set()
            cancel.wait(10)
            return Reply(text=CANCELLED)
        return Reply(text="next")

    agent = StubAgent(answer)
    session = Session(agent)
    job_done: list[bool] = []

    with pytest.raises(KeyboardInterrupt):
        with session.ordered_sync("c"):
            job = session.start(Turn("c", "long"), TurnView())
            started.wait(10)
            raise KeyboardInterrupt  # the caller gives up; the turn is still running
    assert session.cancel("c") and not session.cancel("c")  # cancelling once is enough
    with session.ordered_sync("c"):
        job_done.append(job.reply.done())
        assert session.respond_sync(Turn("c", "after")).text == "next"
    assert job_done == [True] and agent.finished == ["long", "after"]


def test_respond_sync_cancels_its_turn_when_interrupted() -> None:
    started = threading.Event()
    seen: list[bool] = []

    def answer(turn, on_token, on_progress, cancel) -> Reply:
        started.set()
        seen.append(cancel.wait(10))
        return Reply(text=CANCELLED)

    session = Session(StubAgent(answer))
    threading.Thread(target=lambda: started.wait(10) and _thread.interrupt_main()).start()  # Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        with session.ordered_sync("c"):
            session.respond_sync(Turn("c", "hi"))
    with session.ordered_sync("c"):  # after the cancelled turn has finished
        assert seen == [True]


def test_cancel_without_a_turn_in_progress() -> None:
    assert Session(StubAgent()).cancel("nobody") is False


def test_view_collects_tokens_progress_and_the_queue() -> None:
    def answer(turn, on_token, on_progress, cancel) -> Reply:
        on_progress(0.5, "Analysing frames")
        states.append(view.state)
        view.found(["speech · “two cars”", "video · car 91%"], ["speech · “two cars”"])
        states.append(view.state)
        on_token("Two ")
        on_token("cars.")
        return Reply(text="Two cars.")

    states = []
    view = TurnView()
    session = Session(StubAgent(answer))
    with session.ordered_sync("c"):
        session.respond_sync(Turn("c", "count"), view)
    assert states[0].status_line() == "⏳ Analysing frames… 50%"
    assert states[1].results == ("speech · “two cars”", "video · car 91%") and states[1].progress is None
    assert states[1].heard == ("speech · “two cars”",) and states[1].version > states[0].version
    assert view.state.text == "Two cars." and view.state.progress is None  # the model speaks again
    assert view.state.version > states[0].version


def test_heavy_turns_wait_in_line_and_know_their_place(tmp_path: Path) -> None:
    release = threading.Event()
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8\xff fake jpeg")

    def answer(turn, on_token, on_progress, cancel) -> Reply:
        if turn.conversation_id == "a":
            release.wait(10)
        return Reply(text="done")

    agent = StubAgent(answer)
    session = Session(agent, heavy_jobs=1)
    turns = {name: Turn(name, "look", [agent.attachments(name).register(photo, kind="image")])
             for name in ("a", "b", "c")}
    views = {name: TurnView() for name in turns}
    text_only = Turn("d", "hello")  # a conversation without files does not queue

    async def one(name: str) -> str:
        async with session.ordered(name):
            return (await session.respond(turns[name], views[name])).text

    async def main() -> None:
        first = asyncio.create_task(one("a"))
        while agent.started != ["look"]:
            await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(one("b"))]
        while views["b"].state.queued != 1:
            await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(one("c")))
        while views["c"].state.queued != 2:
            await asyncio.sleep(0.01)
        async with session.ordered("d"):
            assert (await session.respond(text_only)).text == "done"
        release.set()
        assert await asyncio.gather(first, *waiting) == ["done"] * 3

    asyncio.run(main())
    assert views["b"].state.queued is None and views["c"].state.queued is None  # cleared on start


def test_a_queued_turn_cancelled_before_its_slot_never_runs() -> None:
    queue = HeavyQueue(1)
    never = threading.Event()
    assert queue.acquire(never, lambda place: None)  # the only slot is taken
    cancel = threading.Event()
    places: list[int | None] = []

    def on_place(place: int | None) -> None:
        places.append(place)
        cancel.set()

    assert queue.acquire(cancel, on_place) is False
    assert places == [1]
    queue.release()
    assert queue.acquire(never, lambda place: None)  # the line is empty again


def test_an_agent_that_raises_reaches_the_caller() -> None:
    def answer(turn, on_token, on_progress, cancel) -> Reply:
        raise RuntimeError("broken")

    session = Session(StubAgent(answer))
    with pytest.raises(RuntimeError, match="broken"):
        with session.ordered_sync("c"):
            session.respond_sync(Turn("c", "hi"))
    with session.ordered_sync("c"):  # the conversation is free again
        pass
    assert session._tails == {} and session._jobs == {}


def test_throttle_interval_refresh_and_pause() -> None:
    now = [0.0]
    throttle = Throttle(1.0, refresh=20.0, clock=lambda: now[0])
    assert throttle.due(changed=True)
    throttle.shown()
    now[0] = 0.5
    assert not throttle.due(changed=True)  # too soon
    now[0] = 1.0
    assert throttle.due(changed=True) and not throttle.due(changed=False)
    now[0] = 20.0
    assert throttle.due(changed=False)  # shown again before it expires
    throttle.shown()
    throttle.pause(5.0)
    now[0] = 22.0
    assert not throttle.due(changed=True)
    now[0] = 25.0
    assert throttle.due(changed=True)


def test_split_text_cuts_lines_then_words() -> None:
    line = "x" * 30
    assert split_text("\n".join([line] * 4), 70) == [f"{line}\n{line}", f"{line}\n{line}"]
    assert split_text("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]
    assert split_text("a" * 10, 4) == ["aaaa", "aaaa", "aa"]
    assert split_text("   ", 10) == []


def test_the_heavy_queue_is_as_wide_as_the_tools_capacity(tmp_path: Path) -> None:
    """ASSISTANT_HEAVY_JOBS (the tools' capacity: a tools service with room for two) lets two
    turns with media work at once; the third waits first in line."""
    release = threading.Event()
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8\xff fake jpeg")

    def answer(turn, on_token, on_progress, cancel) -> Reply:
        release.wait(10)
        return Reply(text="done")

    agent = StubAgent(answer)
    agent.tools.capacity = 2
    session = Session(agent)
    views = {name: TurnView() for name in "abc"}
    turns = {name: Turn(name, "look", [agent.attachments(name).register(photo, kind="image")])
             for name in "abc"}
    jobs = {name: session.start(turns[name], views[name]) for name in "ab"}
    while len(agent.started) < 2:  # both at work at once
        time.sleep(0.01)
    jobs["c"] = session.start(turns["c"], views["c"])
    while views["c"].state.queued != 1:
        time.sleep(0.01)
    assert len(agent.started) == 2
    release.set()
    assert [jobs[name].reply.result(10).text for name in "abc"] == ["done"] * 3
