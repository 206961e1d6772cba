"""Prompt text lives in ``prompts/*.md``; this reads and fills it.

Placeholders are Jinja2 (``{{ name }}``) with strict undefined: a missing value fails loudly
instead of leaving the placeholder in the text the model reads.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any


@cache
def load(name: str) -> str:
    """The text of ``prompts/<name>.md``."""
    return files("prompts").joinpath(f"{name}.md").read_text(encoding="utf-8").strip()


@cache
def _template(name: str) -> Any:
    from jinja2 import Environment, StrictUndefined

    return Environment(undefined=StrictUndefined, keep_trailing_newline=False,
                       autoescape=False).from_string(load(name))


def render(name: str, **values: Any) -> str:
    """``prompts/<name>.md`` with its placeholders filled; ``jinja2.UndefinedError`` if one is
    missing from ``values``."""
    return _template(name).render(**values)
