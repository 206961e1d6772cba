"""`assistant chat`: the UI chosen (a terminal or a pipe), the agent started in the background,
then the command loop."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from adapters.repl.commands import Repl
from adapters.repl.plain import PlainUI
from adapters.repl.starter import AgentStarter
from adapters.repl.terminal import RichUI
from assistant.turns import interrupted_notice
from assistant.voice import VoiceConfig

if TYPE_CHECKING:
    from assistant.agent import Agent
    from assistant.config import Settings


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
