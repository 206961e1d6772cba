"""Prompt text lives in ``prompts/*.md``; this reads it."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> str:
    """The text of ``prompts/<name>.md``."""
    return files("prompts").joinpath(f"{name}.md").read_text(encoding="utf-8").strip()
