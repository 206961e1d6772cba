"""The terminal UI: prompt_toolkit input with history and completion, replies streamed live and
rendered as Markdown (rich), a progress bar while a tool works on long media."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from adapters.repl.commands import COMMANDS
from adapters.repl.plain import PlainUI, status_lines
from assistant.session import TurnView

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.llm import LLMStatus
    from assistant.turns import Reply


class RichUI(PlainUI):
    """A terminal: prompt_toolkit input with history, rich rendering, live streaming."""

    def __init__(self) -> None:
        super().__init__(sys.stdin, sys.stdout, sys.stderr)
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from rich.console import Console

        self.console = Console(highlight=False)
        self.session = PromptSession(history=_history(), auto_suggest=AutoSuggestFromHistory(),
                                     completer=_completer(), complete_while_typing=False)
        self._lock = threading.Lock()
        self._prompt_out: TextIO | None = None  # stdout proxy while the prompt is shown
        self._queued: list[str] = []

    def read(self, pending: int) -> str | None:
        from prompt_toolkit.patch_stdout import patch_stdout

        with self._lock:
            queued, self._queued = self._queued, []
        for text in queued:
            self.notice(text)
        prompt = f"you ({pending} file{'s' if pending > 1 else ''})› " if pending else "you› "
        try:
            with patch_stdout(raw=True):
                with self._lock:
                    self._prompt_out = sys.stdout
                try:
                    return self.session.prompt(prompt)
                finally:
                    with self._lock:
                        self._prompt_out = None
        except KeyboardInterrupt:
            return ""
        except EOFError:
            return None

    def notify(self, text: str) -> None:
        """Show ``text`` now, above the prompt if it is displayed; thread-safe."""
        with self._lock:
            if self._prompt_out is None:
                self._queued.append(text)
                return
            from rich.console import Console

            console = Console(file=self._prompt_out, force_terminal=True, highlight=False,
                              width=self.console.width)
            console.print(f"[yellow]{_escape(text)}[/]")
            self._prompt_out.flush()

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    def notice(self, text: str) -> None:
        self.console.print(f"[dim]{_escape(text)}[/]")

    def error(self, text: str) -> None:
        self.console.print(f"[red]{_escape(text)}[/]")

    def cancelled(self) -> None:
        self.console.print("[yellow]cancelled[/]")

    def show_tools(self, agent: Agent, unavailable: dict[str, str]) -> None:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="bold")
        for column in ("tool", "what it does", "model", ""):
            table.add_column(column)
        for tool in agent.tools:
            state = "[green]loaded[/]" if tool.loaded else "[dim]loads on first use[/]"
            if tool.name in unavailable:
                state = f"[yellow]off:[/] {_escape(unavailable[tool.name])}"
            table.add_row(tool.name, tool.headline(), _escape(tool.source()), state)
        self.console.print(table)

    def show_status(self, status: LLMStatus) -> None:
        for label, value in status_lines(status):
            self.console.print(f"[bold]{label}:[/] {_escape(value)}")

    def waiting(self, wait) -> None:
        with self.console.status("[dim]starting the language model…[/]"):
            try:
                wait()
            except KeyboardInterrupt:
                pass  # the first reply waits for the model anyway

    def answer(self, respond: Callable[[TurnView], Reply]) -> Reply:
        from rich.live import Live

        view = TurnView()
        shown = LiveReply(view)
        with Live(shown, console=self.console, refresh_per_second=10,
                  vertical_overflow="visible") as live:
            try:
                reply = respond(view)
            except KeyboardInterrupt:  # the streamed text stays, the spinner goes
                shown.finish(None)
                live.refresh()
                raise
            shown.finish(reply)
            live.refresh()
        for note in reply.notes:
            self.console.print(f"[dim italic]note: {_escape(note)}[/]")
        for path in reply.media:
            self.console.print(f"[cyan]saved:[/] {_escape(str(path))}")
        self.console.print()
        return reply

    def show_voice(self, path: Path, seconds: float, cut: bool) -> None:
        self.console.print(f"[cyan]voice:[/] {_escape(str(path))} [dim]({seconds:.0f} s"
                           f"{'; the rest is in the text' if cut else ''})[/]")


class LiveReply:
    """What the Live display shows during a reply, from the session's view of the turn: a
    spinner, the place in the queue, a progress bar, the streamed text; then the reply."""

    def __init__(self, view: TurnView) -> None:
        from rich.spinner import Spinner

        self.view = view
        self._spinner = Spinner("dots", text=" thinking…", style="dim")
        self._done = False
        self._final: Reply | None = None

    def finish(self, reply: Reply | None) -> None:
        """The turn is over: show the reply's text and result lines (or, cancelled, what had
        streamed)."""
        self._done = True
        if reply is not None:
            self._final = reply

    def __rich_console__(self, console, options):
        from rich.markdown import Markdown
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        state = self.view.state
        text = self._final.text if self._final is not None else state.text
        results = self._final.results if self._final is not None else state.results
        if text:
            yield Markdown(text)
        for line in results:  # what was measured shows as soon as the tools have run
            yield f"[dim]{_escape(line)}[/]"
        if self._done:
            return
        if state.progress is not None:
            fraction, message = state.progress
            row = Table.grid(padding=(0, 1))
            row.add_row(ProgressBar(total=1.0, completed=fraction, width=30),
                        f"{fraction:4.0%}", message)
            yield row
        elif state.queued is not None:
            yield f"[dim]{_escape(state.status_line() or '')}[/]"
        elif not text:
            yield self._spinner


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _history():
    """Input history in the user's data folder (in memory if that is not writable)."""
    from platformdirs import user_data_path
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    folder = user_data_path("local-assistant", appauthor=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "repl_history"
        path.touch()
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()


def _completer():
    """Completes command names, and paths after /attach."""
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)

    class CommandsAndPaths(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if text.startswith("/attach "):
                word = document.get_word_before_cursor(WORD=True)
                yield from paths.get_completions(Document(word, len(word)), complete_event)
            elif text.startswith("/") and " " not in text:
                for command in COMMANDS:
                    if command.startswith(text):
                        yield Completion(command, start_position=-len(text))

    return CommandsAndPaths()

