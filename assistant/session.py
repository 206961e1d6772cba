"""What every channel needs around :meth:`Agent.respond`, whatever the channel is.

- **Order**: the turns and commands of one conversation are handled one at a time, in the
  order they came (:meth:`Session.ordered` for event loops, :meth:`Session.ordered_sync` for
  threads: one line per conversation for both). A conversation stays busy until its turn has
  finished and stored itself, even when the caller stopped waiting for it (Ctrl-C).
- **Worker thread with cancel**: :meth:`Session.respond` (awaitable) and
  :meth:`Session.respond_sync` run the agent in a thread of its own; :meth:`Session.cancel`
  stops the turn in progress at the agent's next step; :meth:`Session.stop` stops them all and
  waits for them (before the process leaves).
- **Heavy-job queue**: turns that may analyse media (the turn or its conversation has
  attachments) share a bounded number of slots; the others wait in line, in order, and know
  their place.
- **What to show while a turn works**: a :class:`TurnView` collects the streamed answer, the
  tools' progress and the place in the queue from the worker thread; a channel reads it when a
  :class:`Throttle` says it may show it again.
- **Reply splitting**: :func:`split_text` cuts a text below a channel's message limit.

A channel (``adapters/``) is then only its own input and output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from assistant.turns import CANCELLED, Reply, Turn

if TYPE_CHECKING:
    from assistant.agent import Agent

log = logging.getLogger(__name__)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# What a person sees while a turn works

@dataclass(frozen=True)
class ViewState:
    """A moment of a running turn, as a channel shows it."""

    text: str = ""  # the answer streamed so far
    progress: tuple[float, str] | None = None  # a tool's latest progress, until more text streams
    queued: int | None = None  # the place in the heavy-job queue while the turn waits
    results: tuple[str, ...] = ()  # the result lines of the tools that ran so far
    heard: tuple[str, ...] = ()  # the transcripts among them
    version: int = 0  # grows with every change

    def status_line(self) -> str | None:
        """One line for the queue or the progress (None when there is neither)."""
        if self.queued is not None:
            return (f"⏳ Another file is being analysed; yours is number {self.queued} in the queue. "
                    "I'll start as soon as it's your turn.")
        if self.progress is not None:
            fraction, message = self.progress
            return f"⏳ {message.strip() or 'Working'}… {min(max(fraction, 0.0), 1.0):.0%}"
        return None


class TurnView:
    """What a running turn has to show: fed from the worker thread (the agent's ``on_token`` and
    ``on_progress``, the queue), read by the channel through :attr:`state`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = ViewState()

    @property
    def state(self) -> ViewState:
        with self._lock:
            return self._state

    def token(self, text: str) -> None:
        """More of the answer (clears the progress line: the model speaks again)."""
        with self._lock:
            self._state = replace(self._state, text=self._state.text + text, progress=None,
                                  version=self._state.version + 1)

    def progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._state = replace(self._state, progress=(fraction, message), version=self._state.version + 1)

    def found(self, results: list[str], heard: list[str]) -> None:
        """The result lines (and transcripts) of the tools that ran so far: shown before the
        model answers."""
        with self._lock:
            self._state = replace(self._state, results=tuple(results), heard=tuple(heard), progress=None,
                                  version=self._state.version + 1)

    def queued(self, place: int | None) -> None:
        """The place in the heavy-job queue (None once the turn has a slot)."""
        with self._lock:
            self._state = replace(self._state, queued=place, version=self._state.version + 1)


class Throttle:
    """When a changing view may be shown again: at most once per ``interval`` seconds, the same
    view again after ``refresh`` seconds (something that expires, like a Telegram draft), and
    nothing during a :meth:`pause` (after a flood limit)."""

    def __init__(self, interval: float, refresh: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.refresh, self.clock = interval, refresh, clock
        self._next = -math.inf  # no update before this time
        self._stale = math.inf  # the shown view is to be shown again at this time

    def due(self, changed: bool) -> bool:
        now = self.clock()
        return now >= self._next and (changed or now >= self._stale)

    def shown(self) -> None:
        now = self.clock()
        self._next = now + self.interval
        self._stale = now + self.refresh if self.refresh is not None else math.inf

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, self.clock() + seconds)


# ---------------------------------------------------------------------------------------------
# The heavy-job queue

class HeavyQueue:
    """A bounded number of heavy turns at a time; the others wait in arrival order and are
    told their place as the line moves."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._free = max(1, slots)
        self._line: deque[object] = deque()

    def acquire(self, cancel: threading.Event, on_place: Callable[[int | None], None]) -> bool:
        """Wait for a slot (telling ``on_place`` the place in line while waiting, then None);
        False when ``cancel`` is set first."""
        me = object()
        told: int | None = None
        with self._cond:
            self._line.append(me)
            try:
                while (ahead := self._line.index(me)) >= self._free:
                    if cancel.is_set():
                        return False
                    if ahead + 1 - self._free != told:
                        told = ahead + 1 - self._free
                        on_place(told)
                    self._cond.wait(0.2)  # and look at ``cancel`` again
                self._free -= 1
            finally:
                self._line.remove(me)
                self._cond.notify_all()
        if told is not None:
            on_place(None)
        return True

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# The session

class Job:
    """One turn in its worker thread: :attr:`cancel` stops it at the agent's next step;
    :attr:`reply` is resolved with the :class:`Reply` (or the exception of a broken agent)."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.cancel = threading.Event()
        self.reply: Future[Reply] = Future()
        # Never cancelled: a caller may stop waiting, the turn still ends (and is stored).
        self.reply.set_running_or_notify_cancel()


class Session:
    """One agent as every channel uses it: per-conversation order, turns in worker threads
    with cancel, the heavy-job queue."""

    def __init__(self, agent: Agent, *, heavy_jobs: int | None = None) -> None:
        """``heavy_jobs``: turns with media at a time (default: the tools' capacity,
        ASSISTANT_HEAVY_JOBS)."""
        self.agent = agent
        capacity = getattr(agent.tools, "capacity", 1)  # a registry's; 1 for plain tool lists
        self.heavy = HeavyQueue(capacity if heavy_jobs is None else heavy_jobs)
        self._lock = threading.Lock()
        #: Per conversation with someone in line: done when the last one in line has left.
        self._tails: dict[str, Future[None]] = {}
        #: Per conversation: its turn in progress.
        self._jobs: dict[str, Job] = {}

    # -- order ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def ordered(self, conversation_id: str) -> AsyncIterator[None]:
        """``async with``: wait until the conversation's earlier turns and commands are done."""
        before, mine = self._enter(conversation_id)
        try:
            if before is not None:
                await asyncio.wrap_future(before)
        except BaseException:  # cancelled while waiting: the line moves on behind us
            self._leave_after(before, conversation_id, mine)
            raise
        try:
            yield
        finally:
            self._leave(conversation_id, mine)

    @contextlib.contextmanager
    def ordered_sync(self, conversation_id: str) -> Iterator[None]:
        """``with``: the same line as :meth:`ordered`, for a thread (Ctrl-C still interrupts)."""
        before, mine = self._enter(conversation_id)
        try:
            if before is not None:
                wait(before)
        except BaseException:
            self._leave_after(before, conversation_id, mine)
            raise
        try:
            yield
        finally:
            self._leave(conversation_id, mine)

    def _enter(self, conversation_id: str) -> tuple[Future[None] | None, Future[None]]:
        mine: Future[None] = Future()
        mine.set_running_or_notify_cancel()  # see Job.reply
        with self._lock:
            before = self._tails.get(conversation_id)
            self._tails[conversation_id] = mine
        return before, mine

    def _leave_after(self, before: Future[None] | None, conversation_id: str, mine: Future[None]) -> None:
        if before is None:
            self._leave(conversation_id, mine)
        else:
            before.add_done_callback(lambda _: self._leave(conversation_id, mine))

    def _leave(self, conversation_id: str, mine: Future[None]) -> None:
        """Let the next one in: now, or when the conversation's turn has finished (its caller
        may have stopped waiting for it)."""
        with self._lock:
            job = self._jobs.get(conversation_id)
        if job is not None:
            job.reply.add_done_callback(lambda _: self._leave(conversation_id, mine))
            return
        with self._lock:
            if self._tails.get(conversation_id) is mine:
                del self._tails[conversation_id]  # nobody in line: nothing kept for this conversation
        mine.set_result(None)

    # -- turns ----------------------------------------------------------------------------------

    async def respond(self, turn: Turn, view: TurnView | None = None) -> Reply:
        """The agent's reply to ``turn`` from a worker thread; call it inside :meth:`ordered`.
        A cancelled caller cancels the turn, which then finishes on its own."""
        job = self.start(turn, view or TurnView())
        try:
            return await asyncio.wrap_future(job.reply)
        except asyncio.CancelledError:
            job.cancel.set()
            raise

    def respond_sync(self, turn: Turn, view: TurnView | None = None) -> Reply:
        """:meth:`respond` for a thread, inside :meth:`ordered_sync`; an interrupted caller
        (Ctrl-C) cancels the turn and gets the KeyboardInterrupt at once."""
        job = Job(turn)
        try:  # from before the worker starts: a Ctrl-C right after it started still cancels it
            self._launch(job, view or TurnView())
            return wait(job.reply)
        except BaseException:
            job.cancel.set()
            raise

    def start(self, turn: Turn, view: TurnView) -> Job:
        """Start ``turn`` in a worker thread (the conversation's order must be held)."""
        return self._launch(Job(turn), view)

    def _launch(self, job: Job, view: TurnView) -> Job:
        turn = job.turn
        with self._lock:
            if turn.conversation_id in self._jobs:
                raise RuntimeError(f"a turn of {turn.conversation_id} is already running")
            self._jobs[turn.conversation_id] = job
        threading.Thread(target=self._work, args=(job, view), name=f"turn {turn.conversation_id}",
                         daemon=True).start()
        return job

    def cancel(self, conversation_id: str) -> bool:
        """Stop the conversation's turn in progress (it ends "(cancelled)"); False when there is
        none (or it is already being cancelled)."""
        with self._lock:
            job = self._jobs.get(conversation_id)
        if job is None or job.cancel.is_set():
            return False
        job.cancel.set()
        return True

    @property
    def busy(self) -> bool:
        """Whether a turn is in progress (or still ending after a cancel)."""
        with self._lock:
            return bool(self._jobs)

    def stop(self) -> None:
        """Cancel every turn in progress and wait until each has ended and stored itself (at
        its next step: a tool stops at its next progress report). Call before the process
        leaves: a worker thread still inside native code (torch, PyAV) when the interpreter
        shuts down aborts the process and leaves its turn open."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            with contextlib.suppress(Exception):  # a broken agent's error was its caller's
                wait(job.reply)

    def is_heavy(self, turn: Turn) -> bool:
        """Whether the turn may analyse media: its conversation has attachments (this turn's are
        registered already, and the model may call a tool on an earlier one)."""
        return bool(turn.attachments) or len(self.agent.attachments(turn.conversation_id)) > 0

    def _work(self, job: Job, view: TurnView) -> None:
        try:
            reply, error = self._run(job, view), None
        except BaseException as exc:  # noqa: BLE001 - the caller gets it (the agent never raises)
            reply, error = None, exc
        with self._lock:
            del self._jobs[job.turn.conversation_id]
        if error is not None:
            job.reply.set_exception(error)
        else:
            job.reply.set_result(reply)

    def _run(self, job: Job, view: TurnView) -> Reply:
        heavy = self.is_heavy(job.turn)
        if heavy and not self.heavy.acquire(job.cancel, view.queued):
            return Reply(text=CANCELLED, notes=["cancelled"], llm_used=False)
        try:
            return self.agent.respond(job.turn, on_token=view.token, on_progress=view.progress,
                                      on_results=view.found, cancel=job.cancel)
        finally:
            if heavy:
                self.heavy.release()


def wait(future: Future[T]) -> T:
    """The future's result, waited for in short steps so that Ctrl-C is never held up."""
    while True:
        try:
            return future.result(timeout=0.1)
        except TimeoutError:
            continue


# ---------------------------------------------------------------------------------------------
# Replies below a channel's message limit

def split_text(text: str, limit: int, separators: tuple[str, ...] = ("\n\n", "\n", " ")) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at paragraphs, then lines, then
    words (and mid-word only when a word alone is longer)."""
    if len(text) <= limit:
        return [text] if text.strip() else []
    if not separators:
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    separator, finer = separators[0], separators[1:]
    pieces: list[str] = []
    current = ""
    for part in text.split(separator):
        candidate = f"{current}{separator}{part}" if current else part
        if len(candidate) <= limit:
            current = candidate
            continue
        if current.strip():
            pieces.append(current)
        current = ""
        if len(part) <= limit:
            current = part
        else:
            pieces.extend(split_text(part, limit, finer))
    if current.strip():
        pieces.append(current)
    return pieces
