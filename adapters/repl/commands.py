"""The command loop (:class:`Repl`): messages become turns; /attach, /reset, /tools, /model,
/voice, /help and /quit act on the conversation."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.repl.paths import VOICE_NOTE_SUFFIXES, is_path_not_command, parse_paths
from adapters.repl.starter import AgentUnavailable
from assistant.errors import LLMError, StorageError, ToolError
from assistant.session import Session
from assistant.voice import VoiceConfig

if TYPE_CHECKING:
    from adapters.repl.plain import PlainUI
    from adapters.repl.starter import AgentStarter
    from assistant.attachments import Attachment
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
                agent = self.starter.agent()
                self.ui.show_tools(agent, agent.unavailable_tools(self.conversation_id))
            elif command == "/model":
                self.model(rest.strip())
            elif command == "/voice":
                self.voice_mode(rest.strip().lower())
            elif command == "/help":
                self.ui.say(HELP)
            elif is_path_not_command(command):
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
                self.ui.show_models(agent.models(), status.model, status.server)
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

