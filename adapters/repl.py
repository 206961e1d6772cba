"""`assistant chat`: the terminal REPL.

On a terminal: a prompt with history (prompt_toolkit), replies streamed live and rendered
as Markdown (rich), a progress bar while a tool works on long media, Ctrl-C cancels the
reply in progress. With standard input not a terminal: one line in, plain text out
(errors and notices on standard error), so it can be scripted.

The agent is built and the language model warmed up in a background thread: the first
prompt never waits for langchain, torch or tensorflow to import.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from assistant.errors import LLMError, StorageError, ToolError
from assistant.session import Session, TurnView
from assistant.turns import interrupted_notice
from assistant.voice import VoiceConfig

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.attachments import Attachment
    from assistant.config import Settings
    from assistant.llm import LLMStatus, ModelInfo
    from assistant.turns import Reply, Turn
    from assistant.voice import VoiceReplies

COMMANDS = ("/attach", "/reset", "/tools", "/model", "/voice", "/help", "/quit", "/exit")

WELCOME = "Local assistant. Type a message, /attach PATH to add files, /help for commands, /quit to leave."

HELP = """\
Type a message and press Enter; the assistant answers with its tools.
  /attach PATH...  attach photos, audio, video or text files to your next message
                   (a message that is only file paths sends those files at once)
  /reset           forget this conversation
  /tools           list the tools and where their models come from
  /model [NAME]    the conversation's language model and the models Ollama has;
                   with NAME, switch this conversation to that model
  /voice [on|off]  speak the replies too: each saved as an .ogg voice note (kept)
  /help            this help
  /quit            leave (also /exit or Ctrl-D)
Paths may be quoted and may start with ~. A .oga or .opus file is a voice note: what you
say in it is your message. Ctrl-C cancels the reply in progress."""


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


#: Longest message still tried as file paths (a few paths of at most PATH_MAX bytes each).
MAX_PATHS_MESSAGE = 16 * 1024
#: Files that are voice notes when attached (what Telegram and WhatsApp voice notes are):
#: their words are the user's message.
VOICE_NOTE_SUFFIXES = (".oga", ".opus")


def parse_paths(line: str) -> list[str] | None:
    """The paths of a message that consists only of existing files, else None.

    Accepts a bare path with spaces, quoted paths and ``~``. Any text is safe to pass.
    """
    if len(line) > MAX_PATHS_MESSAGE:
        return None
    if is_existing_file(line):
        return [line]
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if words and all(is_existing_file(word) for word in words):
        return words
    return None


def is_existing_file(text: str) -> bool:
    """Does ``text`` name an existing file? False (never an error) for text that cannot be a
    path: too long for the file system, a NUL byte, an unreadable folder."""
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: ~user that does not exist
        return False


def _is_path_not_command(word: str) -> bool:
    """Is a first word starting with ``/`` an absolute path (``/home/me/cat.jpg``) rather than
    a command (``/attach``)? A command has no second ``/``."""
    return "/" in word[1:]


class Repl:
    """The command loop, independent of how lines are read and replies shown."""

    def __init__(self, ui: PlainUI, starter: AgentStarter, conversation_id: str,
                 voice: VoiceConfig | None = None) -> None:
        self.ui = ui
        self.starter = starter
        self.conversation_id = conversation_id
        self.voice_config = voice
        self._voice: VoiceReplies | None = None
        self.pending: list[Attachment] = []
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        """The session around the agent (made once the agent is built)."""
        if self._session is None:
            self._session = Session(self.starter.agent())
        return self._session

    def loop(self) -> int:
        self.ui.notice(WELCOME)
        try:
            while True:
                line = self.ui.read(len(self.pending))
                if line is None:
                    return 0
                line = line.strip()
                if not line:
                    continue
                try:
                    if not self.handle(line):
                        return 0
                except AgentUnavailable as exc:
                    self.ui.error(str(exc))
                    return 1
                except (ToolError, StorageError) as exc:
                    self.ui.error(str(exc))
                except KeyboardInterrupt:  # Ctrl-C: the reply in progress stops, the REPL goes on
                    self.ui.cancelled()
        finally:
            self.stop()

    def stop(self) -> None:
        """Before leaving: let a cancelled reply that is still ending store itself (a tool
        stops at its next step). A second Ctrl-C leaves at once, without the interpreter's
        shutdown, which aborts while a worker thread is inside native code (torch, PyAV); the
        turn is then told as interrupted at the next start."""
        if self._session is None or not self._session.busy:
            return
        self.ui.notice("Stopping the reply in progress… (Ctrl-C again leaves at once)")
        try:
            self._session.stop()
        except KeyboardInterrupt:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)

    def handle(self, line: str) -> bool:
        """Act on one line; False to leave."""
        command, _, rest = line.partition(" ")
        if command not in COMMANDS:
            paths = parse_paths(line)
            if paths is not None:
                self.send("", self.register(paths))
                return True
        if line.startswith("/"):
            if command in ("/quit", "/exit"):
                return False
            if command == "/attach":
                self.attach(rest)
            elif command == "/reset":
                with self.session.ordered_sync(self.conversation_id):  # after a cancelled turn
                    self.session.agent.reset(self.conversation_id)
                self.pending = []
                self.ui.notice("Conversation reset: its memory and attachments are forgotten.")
            elif command == "/tools":
                self.ui.show_tools(self.starter.agent())
            elif command == "/model":
                self.model(rest.strip())
            elif command == "/voice":
                self.voice_mode(rest.strip().lower())
            elif command == "/help":
                self.ui.say(HELP)
            elif _is_path_not_command(command):
                raise ToolError(f"{command}: no such file.")
            else:
                raise ToolError(f"Unknown command {command}; /help lists the commands.")
            return True
        self.send(line, [])
        return True

    def model(self, name: str) -> None:
        """/model: the conversation's model and Ollama's models; /model NAME switches."""
        if not self.starter.use_llm:
            self.ui.say("The language model is off (--no-llm): attachments go straight to their "
                        "tools and results are shown from templates.")
            return
        agent = self.starter.agent()
        if name:
            try:
                chosen = agent.set_model(self.conversation_id, name)
            except LLMError as exc:
                self.ui.error(str(exc))
                return
            self.ui.notice(f"This conversation now uses {chosen.name}: {chosen.describe()}.")
            return
        status = agent.llm_status(self.conversation_id)
        self.ui.show_status(status)
        if status.reachable:
            try:
                self.ui.show_models(agent.models(), status.model)
            except LLMError as exc:
                self.ui.error(str(exc))

    @property
    def voice(self) -> VoiceReplies:
        """Voice replies (the REPL's default: off)."""
        if self._voice is None:
            from assistant.voice import VoiceReplies

            self._voice = VoiceReplies(self.voice_config or VoiceConfig(), self.starter.agent().memory, "off")
        return self._voice

    def voice_mode(self, choice: str) -> None:
        """/voice: whether replies are spoken; /voice on|off chooses (kept for the conversation)."""
        if choice:
            if choice not in ("on", "off"):
                raise ToolError("Usage: /voice on|off")
            self.voice.set_mode(self.conversation_id, "always" if choice == "on" else "off")
        spoken = self.voice.mode(self.conversation_id) != "off"
        self.ui.notice("Voice replies are on: each reply is also spoken and saved as an .ogg file."
                       if spoken else "Voice replies are off (/voice on speaks them).")

    def speak(self, turn: Turn, reply: Reply) -> None:
        """The reply spoken and saved beside the conversation's annotated outputs (after the text)."""
        from assistant.voice import VoiceError

        if not self.voice.wanted(turn, reply):
            return
        try:
            spoken = self.voice.speak(reply)
        except VoiceError as exc:
            self.ui.error(f"no voice reply: {exc}")
            return
        path = self.starter.agent().output_dir(self.conversation_id) / f"voice-{time.time_ns()}.ogg"
        path.write_bytes(spoken.audio)
        self.ui.show_voice(path, spoken.seconds, spoken.cut)

    def attach(self, rest: str) -> None:
        try:
            words = shlex.split(rest)
        except ValueError as exc:
            raise ToolError(f"Cannot read the paths ({exc}); quote paths that contain spaces.") from None
        if not words:
            raise ToolError("Usage: /attach PATH... (the files go with your next message).")
        attachments = []
        for word in words:
            try:
                attachments.extend(self.register([word]))
            except (ToolError, StorageError) as exc:
                self.ui.error(str(exc))
        if attachments:
            self.pending.extend(attachments)
            listed = ", ".join(item.describe() for item in attachments)
            self.ui.notice(f"Attached {listed}; {'it goes' if len(attachments) == 1 else 'they go'} "
                           "with your next message.")

    def register(self, paths: list[str]) -> list[Attachment]:
        store = self.starter.agent().attachments(self.conversation_id)
        return [store.register(path, voice=Path(path).suffix.lower() in VOICE_NOTE_SUFFIXES)
                for path in paths]

    def send(self, text: str, attachments: list[Attachment]) -> None:
        """One turn in a worker thread (Ctrl-C cancels it; the next turn of the conversation
        waits until the cancelled one has stored itself)."""
        from assistant.turns import Turn

        session = self.session
        if not self.starter.warmed:
            self.ui.waiting(self.starter.wait_warm)
        turn = Turn(self.conversation_id, text, self.pending + attachments)
        self.pending = []
        with session.ordered_sync(self.conversation_id):
            reply = self.ui.answer(lambda view: session.respond_sync(turn, view))
        self.speak(turn, reply)


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

    def show_tools(self, agent: Agent) -> None:
        for tool in agent.tools:
            state = "loaded" if tool.loaded else "not loaded yet"
            self.say(f"{tool.name}: {tool.headline()} "
                     f"(model: {tool.source()}; {state})")

    def show_status(self, status: LLMStatus) -> None:
        for label, value in status_lines(status):
            self.say(f"{label}: {value}")

    def show_models(self, models: list[ModelInfo], current: str) -> None:
        self.say("Models in Ollama (/model NAME switches this conversation's model):")
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
    lines = [("Ollama", f"{status.host} – {'reachable' if status.reachable else 'not reachable'}"),
             ("Model", f"{status.model} – " + ("available" if status.model_available
                                               else "not available")),
             ("Tool calling", status.tool_calling + (f" – {status.tool_calling_reason}"
                                                     if status.tool_calling_reason else ""))]
    if status.error:
        lines.append(("Problem", status.error))
    return lines


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

    def show_tools(self, agent: Agent) -> None:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="bold")
        for column in ("tool", "what it does", "model", ""):
            table.add_column(column)
        for tool in agent.tools:
            table.add_row(tool.name, tool.headline(), tool.source(),
                          "[green]loaded[/]" if tool.loaded else "[dim]loads on first use[/]")
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`assistant chat`: the REPL until /quit or end of input."""
    starter = AgentStarter(settings, use_llm=not args.no_llm)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    ui: PlainUI = RichUI() if interactive else PlainUI(sys.stdin, sys.stdout, sys.stderr, json_mode=args.json)
    tell = ui.notify if interactive else ui.notice
    starter.on_warm.append(tell)

    def tell_interrupted(agent: Agent) -> None:
        for text in agent.memory.recover_interrupted(args.conversation):
            tell(interrupted_notice(text))

    starter.on_built.append(tell_interrupted)
    starter.start()
    voice, _ = VoiceConfig.read(os.environ, settings.models_dir)  # checked at start (cli)
    return Repl(ui, starter, args.conversation, voice).loop()
