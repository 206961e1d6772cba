"""Reading file paths out of what the user types: a message that is only paths sends those files."""

from __future__ import annotations

import shlex
from pathlib import Path

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


def is_path_not_command(word: str) -> bool:
    """Is a first word starting with ``/`` an absolute path (``/home/me/cat.jpg``) rather than
    a command (``/attach``)? A command has no second ``/``."""
    return "/" in word[1:]

