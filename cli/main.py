"""`assistant ...`: the command line, the composition root. Parsing, settings validation and
choosing the command; each command lives in its own module and is imported when chosen, so
`--help` never loads torch, tensorflow or transformers. The tool choices and the tools'
`analyze` options come from the tool registry."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from assistant import __version__
from tools.registry import analyze_options, tool_names

EPILOG = """\
examples:
  assistant chat                         talk to the assistant in the terminal
  assistant analyze photo.jpg song.mp3   run the matching tool on each file
  assistant analyze --text "Отличный проект!"
  assistant telegram                     run the Telegram bot (TELEGRAM_BOT_TOKEN)
  assistant doctor                       check Ollama, the models and the device
  assistant serve-tools --host 0.0.0.0   run the tools for other machines (ASSISTANT_TOOLS_TOKEN)
  assistant models fetch --to ./models   download every model for offline use

Configuration is by environment variables (ASSISTANT_*, OLLAMA_HOST, TELEGRAM_*);
see the README for the full table."""


#: Keep the libraries' start-up chatter off the user's terminal (each can be overridden).
_QUIET_LIBRARIES = {"TF_CPP_MIN_LOG_LEVEL": "2", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A chat-first local assistant: a Llama 3 agent (Ollama) that calls tools for "
                    "sentiment, audio tagging, speech, image classification, object detection and "
                    "vision, and can answer with its voice.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze", help="run a tool on files or text, without the language model",
        description="Run the matching tool on each FILE (chosen by the file's content unless "
                    "--tool is given) or on --text. Bad inputs are reported and the others still "
                    "processed; the exit status is 1 if any input failed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  assistant analyze cat.jpg\n  assistant analyze --json clip.ogg street.mp4\n"
               "  assistant analyze --tool detect photo.jpg\n  assistant analyze --text \"Мне понравилось\"")
    analyze.add_argument("files", nargs="*", metavar="FILE", help="photos, audio, video or UTF-8 text files")
    analyze.add_argument("--text", action="append", default=[], metavar="TEXT",
                         help="text for the sentiment tool (repeatable; batched)")
    analyze.add_argument("--tool", choices=tool_names(), help="use this tool for every FILE")
    analyze.add_argument("--json", action="store_true",
                         help="print one JSON object per input per line")
    for option in analyze_options():
        analyze.add_argument(option.flag, dest=option.param, type=option.kind,
                             metavar=option.metavar, help=option.help)
    analyze.add_argument("--output-dir", metavar="DIR",
                         help="where annotated images and videos are written (default: current dir)")

    chat = commands.add_parser("chat", help="talk to the assistant in the terminal (REPL)",
                               description="Chat with the assistant. Type /help inside for commands.")
    chat.add_argument("--conversation", default="terminal", metavar="ID",
                      help="conversation id; its memory survives restarts (default: terminal)")
    chat.add_argument("--no-llm", action="store_true",
                      help="do not use Ollama: attachments go straight to their tools")
    chat.add_argument("--json", action="store_true",
                      help="plain lines in, one JSON object per reply out (text, results, notes, media)")

    telegram = commands.add_parser("telegram", help="run the Telegram bot",
                                   description="Run the Telegram bot with long polling "
                                               "(needs TELEGRAM_BOT_TOKEN).")
    telegram.add_argument("--allow-all", action="store_true",
                          help="serve every Telegram user when ASSISTANT_TELEGRAM_ALLOWED_USERS is unset")

    serve = commands.add_parser(
        "serve-tools", help="serve the tools over HTTP (for ASSISTANT_TOOLS_URL elsewhere)",
        description="Run the tools as a service for assistants on other machines "
                    "(ASSISTANT_TOOLS_URL=http://HOST:PORT there). Without ASSISTANT_TOOLS_TOKEN "
                    "it serves only this machine (loopback).")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument("--tools", metavar="A,B", help="serve only these tools (default: all)")

    commands.add_parser("doctor", help="check Ollama, the models, the device and the database",
                        description="Say what works and what to do about what does not.")

    models = commands.add_parser("models", help="manage the models",
                                 description="Download the default models for offline use.")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    fetch = models_commands.add_parser(
        "fetch", help="download every default model (needs internet)",
        description="Download every default model into the local caches, or with --to into DIR "
                    "in the models-directory layout (then set ASSISTANT_MODELS_DIR=DIR).")
    fetch.add_argument("--to", metavar="DIR", help="write the models into DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    for name, value in _QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    if args.command != "models":  # downloads show progress; loading from disk does not
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from assistant.config import Settings

    settings, problems = Settings.read()
    try:
        if args.command == "doctor":  # shows bad settings as failed checks
            from assistant import doctor

            return doctor.run(args, settings, problems)
        if args.command == "analyze":
            from assistant.analyze import run
        elif args.command == "chat":
            from adapters.repl import run

            problems += voice_problems()
        elif args.command == "serve-tools":
            from adapters.tools_service.serve import run
        elif args.command == "telegram":
            from adapters.telegram import SETTINGS, run

            problems += read_problems(SETTINGS) + voice_problems()
        else:
            from assistant.models import run
        if problems:
            print("assistant: configuration error:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        return run(args, settings)
    except KeyboardInterrupt:
        print("\nassistant: interrupted", file=sys.stderr)
        return 130


def read_problems(settings: object) -> list[str]:
    """The problems of a channel's own settings (it reads them again itself)."""
    from tools.settings import read_settings

    return read_settings(settings, os.environ)[1]  # type: ignore[arg-type]


def voice_problems() -> list[str]:
    """The problems of the voice-reply settings (ASSISTANT_TTS_*), for the commands that speak."""
    from tools.settings import read_settings
    from assistant.voice import SETTINGS

    return read_settings(SETTINGS.values(), os.environ)[1]


if __name__ == "__main__":
    raise SystemExit(main())
