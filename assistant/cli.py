"""`assistant ...`: the command line. Parsing only; each command lives in its own module
and is imported when chosen, so `--help` never loads torch, tensorflow or transformers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from assistant import __version__

TOOL_CHOICES = ("sentiment", "audio", "image", "detect", "video")

EPILOG = """\
examples:
  assistant chat                         talk to the assistant in the terminal
  assistant analyze photo.jpg song.mp3   run the matching tool on each file
  assistant analyze --text "Отличный проект!"
  assistant telegram                     run the Telegram bot (TELEGRAM_BOT_TOKEN)
  assistant doctor                       check Ollama, the models and the device
  assistant models fetch --to ./models   download every model for offline use

Configuration is by environment variables (ASSISTANT_*, OLLAMA_HOST, TELEGRAM_*);
see the README for the full table."""


#: Keep the libraries' start-up chatter off the user's terminal (each can be overridden).
_QUIET_LIBRARIES = {"TF_CPP_MIN_LOG_LEVEL": "2", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A chat-first local assistant: a Llama 3 agent (Ollama) that calls tools "
                    "for sentiment, audio tagging, image classification and object detection.",
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
    analyze.add_argument("--tool", choices=TOOL_CHOICES, help="use this tool for every FILE")
    analyze.add_argument("--json", action="store_true",
                         help="print one JSON object per input per line")
    analyze.add_argument("--threshold", type=float, metavar="P",
                         help="detection score threshold (default: ASSISTANT_DETECTION_THRESHOLD)")
    analyze.add_argument("--fps", type=float, metavar="N",
                         help="video frames sampled per second (default: ASSISTANT_VIDEO_FPS)")
    analyze.add_argument("--max-frames", type=int, metavar="N",
                         help="most video frames analysed (default: ASSISTANT_VIDEO_MAX_FRAMES)")
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
    from assistant.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"assistant: configuration error: {exc}", file=sys.stderr)
        return 2

    try:
        if args.command == "analyze":
            from assistant.analyze import run
        elif args.command == "chat":
            from adapters.repl import run
        elif args.command == "telegram":
            from adapters.telegram import run
        elif args.command == "doctor":
            from assistant.doctor import run
        else:
            from assistant.models import run
        return run(args, settings)
    except KeyboardInterrupt:
        print("\nassistant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
