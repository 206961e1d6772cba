"""Settings kept as data: one environment variable, its default and what values are allowed.

The lowest layer of the project imports nothing of it, so tools (their own ``ASSISTANT_*``
settings), the core (``assistant.config``) and channels (their tokens and limits) all declare
theirs with :class:`Setting` and read them with :func:`read_settings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One environment variable, its default, and what values are allowed.

    ``kind`` is ``str``, ``int``, ``float`` or ``Path``; numbers must be finite and within
    ``minimum``/``maximum``. ``check`` may normalise a text value or raise ``ValueError``
    saying what is wrong. An empty or unset variable means the default.
    """

    variable: str
    default: Any
    kind: type = str
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[str], Any] | None = None
    allowed: str = ""  # what is allowed, in words, when ``check`` decides

    def describe_allowed(self) -> str:
        if self.allowed:
            return self.allowed
        noun = {int: "a whole number", float: "a number", Path: "a path"}.get(self.kind, "text")
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{noun} of at least {self.minimum:g}"
        return noun

    def parse(self, raw: str | None) -> Any:
        """The value for ``raw`` (the default when empty); ``ValueError`` naming variable,
        value and what is allowed."""
        text = (raw or "").strip()
        if not text:
            return self.default
        try:
            value: Any = self.check(text) if self.check else text
            if self.kind in (int, float):
                try:
                    value = self.kind(text)
                except ValueError:
                    raise ValueError from None  # the rule below says it better than Python
                if not math.isfinite(value):
                    raise ValueError
                if self.minimum is not None and value < self.minimum:
                    raise ValueError
                if self.maximum is not None and value > self.maximum:
                    raise ValueError
            elif self.kind is Path:
                value = Path(text).expanduser()
        except ValueError as exc:
            why = f" ({exc})" if str(exc) else ""
            raise ValueError(f"{self.variable}={text!r}{why}: allowed is "
                             f"{self.describe_allowed()}") from None
        return value


def read_settings(settings: Iterable[Setting], env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Every setting's value by variable, and a message for each bad one (all, not the first)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for setting in settings:
        try:
            values[setting.variable] = setting.parse(env.get(setting.variable))
        except ValueError as exc:
            problems.append(str(exc))
            values[setting.variable] = setting.default
    return values, problems
