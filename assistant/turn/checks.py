"""Whether a model's words are an answer to show: the one place that decides it.

Each rule is a named check (True: the words pass) with its reason in its docstring, in the
order :func:`first_failure` runs them. The loop runs them on whole replies (a failing reply is
asked again once, then replaced by the fallback, and the check's name goes into the reply's
notes); the streamer runs those that can judge a start (:data:`PARTIAL_CHECKS`) on the words so
far, and holds words back while :func:`may_still_fail` says a whole-reply check may yet fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from assistant.turn.fallback import FALLBACK_IN_HISTORY, fallback_start

#: A reply at least this long (normalised characters) that repeats an earlier reply word for
#: word is no answer to a new message; a shorter one may ("You're welcome!" twice is fine).
REPEAT_MIN_CHARS = 40
#: This many consecutive words of an instruction to the model in a reply make it an echo
#: (fewer happen by chance: "the result is", "in this turn").
ECHO_WORDS = 5
#: The fewest words of the user's message that a reply may not open with: a greeting of one
#: or two words ("Hi!") may be answered in kind.
PARROT_MIN_WORDS = 3
#: A reply is JSON (or pieces of it), not prose, when at least this share of its lines are
#: structural (open with a bracket, quote or comma, or have under :data:`PROSE_LINE_WORDS`).
STRUCTURE_SHARE = 0.6
#: A line with fewer words outside its quoted strings is a piece of structure, not a sentence.
PROSE_LINE_WORDS = 3

#: Markup a reply may consist of without saying anything: tags, fences, special tokens.
_MARKUP = re.compile(r"<\|?/?[\w.:-]*\|?>|```\w*|[\s`*_#>\[\](){}|,.:;\"'-]+")
#: How a line of JSON (or of a broken piece of it) starts.
_STRUCTURE_OPENERS = '{}[],"'


@dataclass
class Context:
    """What a reply is checked against: the conversation's ``earlier`` replies, the
    ``instructions`` the model was sent in this turn, the user's message ``asked``, and
    whether the person asked for JSON."""

    earlier: Sequence[str] = ()
    instructions: Sequence[str] = ()
    asked: str = ""
    json_asked: bool = False

    @cached_property
    def said_before(self) -> set[str]:
        return {normalised(reply) for reply in self.earlier if len(normalised(reply)) >= REPEAT_MIN_CHARS}

    @cached_property
    def question(self) -> str:
        return normalised(self.asked)


#: A check: True when the words pass it.
Check = Callable[[str, Context], bool]


def not_a_fallback_copy(words: str, context: Context) -> bool:
    """Not a copy of a fallback reply from memory nor of the note the model reads in its place:
    a model imitating them would pass stale tool results off as an answer."""
    return fallback_start(words) is None and normalised(FALLBACK_IN_HISTORY) not in normalised(words)


def says_something(words: str, context: Context) -> bool:
    """Not empty, and not only markup or punctuation (``\u0060\u0060\u0060``, ``</tool_call>``,
    ``<|im_end|>``, ``{}``)."""
    return bool(_MARKUP.sub("", words).strip())


def not_json(words: str, context: Context) -> bool:
    """Not JSON or pieces of it (valid or not) unless the person asked for JSON: a model that
    imitates calls or results breaks them into lines no person should read. Prose around JSON
    is an answer."""
    return context.json_asked or not is_structure(words)


def not_a_repeat(words: str, context: Context) -> bool:
    """Not a word-for-word repeat of one of the conversation's earlier replies (of at least
    :data:`REPEAT_MIN_CHARS`): small models answer every later question with their last answer."""
    return normalised(words) not in context.said_before


def not_parroting(words: str, context: Context) -> bool:
    """Not opening with the user's whole message (of :data:`PARROT_MIN_WORDS` or more): small
    models repeat the question, then ramble. Judges a start too: words that open with the
    message fail for good."""
    return not parrots(normalised(words), context.question)


def not_an_echo(words: str, context: Context) -> bool:
    """Not an echo of an instruction the model was sent in this turn (:data:`ECHO_WORDS`
    consecutive words of it): small models answer "answer the user" with its words."""
    said = normalised(words).split()
    return not any(_shares_phrase(said, normalised(instruction).split()) for instruction in context.instructions)


#: Every check of a whole reply, in the order they run.
CHECKS: tuple[Check, ...] = (not_a_fallback_copy, says_something, not_json, not_a_repeat,
                             not_parroting, not_an_echo)
#: The checks that judge the start of a reply while it streams.
PARTIAL_CHECKS: tuple[Check, ...] = (not_parroting,)


def first_failure(words: str, context: Context, *, partial: bool = False) -> str | None:
    """The name of the first check ``words`` fail (None: they are an answer to show); with
    ``partial``, ``words`` are the start of a reply and only :data:`PARTIAL_CHECKS` run."""
    for check in PARTIAL_CHECKS if partial else CHECKS:
        if not check(words, context):
            return check.__name__
    return None


def may_still_fail(start: str, context: Context) -> bool:
    """Whether the start of a reply may still fail a check once it is whole: it is, so far, the
    start of an earlier reply (:func:`not_a_repeat`) or of the user's message (:func:`not_parroting`)."""
    said = normalised(start)
    if len(context.question.split()) >= PARROT_MIN_WORDS and context.question.startswith(said):
        return True
    return any(text.startswith(said) for text in context.said_before)


def asks_for_json(text: str) -> bool:
    """Whether the user's message asks for JSON (names it): then a JSON reply is an answer."""
    return "json" in text.lower()


def parrots(said: str, asked: str) -> bool:
    """Whether the normalised words ``said`` open with the user's normalised message ``asked``
    (of :data:`PARROT_MIN_WORDS` or more)."""
    return len(asked.split()) >= PARROT_MIN_WORDS and (said == asked or said.startswith(asked + " "))


def is_structure(text: str) -> bool:
    """Whether ``text`` is mostly JSON or pieces of it, not prose: :data:`STRUCTURE_SHARE` of
    its lines are structural, and some bracket or ``"key":`` is there."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    structural = [line for line in lines if line[0] in _STRUCTURE_OPENERS
                  or len(re.findall(r"\w+", re.sub(r'"[^"\n]*"', "", line))) < PROSE_LINE_WORDS]
    return (bool(lines) and len(structural) >= STRUCTURE_SHARE * len(lines)
            and bool(re.search(r'[{}\[\]]|":|:"', text)))


def normalised(text: str) -> str:
    """The words of ``text``, lower-case, one space apart (punctuation and layout dropped)."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _shares_phrase(words: list[str], other: list[str], length: int = ECHO_WORDS) -> bool:
    """Whether ``words`` contain ``length`` consecutive words of ``other``."""
    phrases = {tuple(other[i:i + length]) for i in range(len(other) - length + 1)}
    return any(tuple(words[i:i + length]) in phrases for i in range(len(words) - length + 1))
