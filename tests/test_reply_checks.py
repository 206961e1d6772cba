"""Each reply check on its own (assistant.turn.checks): words that pass it and words that fail
it, most of them as measured with small models; then first_failure() and the streamer's use."""

from __future__ import annotations

import pytest

from assistant.turn import checks
from assistant.turn.checks import Context
from assistant.turn.fallback import FALLBACK_IN_HISTORY, UNUSABLE

EARLIER = "Что на этом фото? Вы можете получить данные о типе как есть."
TOLD = "[audio: already run in this turn with these arguments; the result is above.]"


@pytest.mark.parametrize(("words", "passes"), [
    ("A tabby cat.", True),
    (f"_{UNUSABLE}_\n\n- **audio on att_1**: audio: Siren (87%)", False),  # a fallback copied from memory
    (FALLBACK_IN_HISTORY, False),  # the note the model reads in its place
    ("The tool results above were shown to the user as they are", False),
])
def test_not_a_fallback_copy(words: str, passes: bool) -> None:
    assert checks.not_a_fallback_copy(words, Context()) is passes


@pytest.mark.parametrize(("words", "passes"), [
    ("", False), ("```\n```", False), ("<|im_end|>", False), ("</tool_call>", False), ("{}", False),
    ("Ok.", True), ("Да", True),
])
def test_says_something(words: str, passes: bool) -> None:
    assert checks.says_something(words, Context()) is passes


@pytest.mark.parametrize(("words", "json_asked", "passes"), [
    ('{"text": "Это тестовый текст"}', False, False),  # nobody asked for JSON
    ('{"text": "Это тестовый текст"}', True, True),
    ('"\n"event: siren at 0.5–4.0 s (also Alarm)"]\n,"also: Police car"}', False, False),  # broken pieces
    ('Here it is: {"label": "cat"}', False, True),  # prose around JSON is an answer
    ('"Hello! How can I help?"', False, True),
])
def test_not_json(words: str, json_asked: bool, passes: bool) -> None:
    assert checks.not_json(words, Context(json_asked=json_asked)) is passes


@pytest.mark.parametrize(("words", "earlier", "passes"), [
    ("Что на этом фото?\nВы можете получить данные о типе как есть.", [EARLIER], False),
    ("You're welcome!", ["You're welcome!"], True),  # short replies may repeat
    ("На фото кошка.", [EARLIER], True),
])
def test_not_a_repeat(words: str, earlier: list[str], passes: bool) -> None:
    assert checks.not_a_repeat(words, Context(earlier=earlier)) is passes


@pytest.mark.parametrize(("words", "asked", "passes"), [
    ("Привет! Как дела?\n\nThe answer is: \"Dedicated\"", "Привет! Как дела?", False),  # SmolLM2, measured
    ("привет, как дела", "Привет! Как дела?", False),
    ("Привет! Всё хорошо, спасибо.", "Привет! Как дела?", True),
    ("Hi!", "Hi!", True),  # a short greeting may be answered in kind
])
def test_not_parroting(words: str, asked: str, passes: bool) -> None:
    assert checks.not_parroting(words, Context(asked=asked)) is passes


@pytest.mark.parametrize(("words", "passes"), [
    ("The audio file was already run in this turn. The result is above.", False),
    ("I hear a siren.", True),
])
def test_not_an_echo(words: str, passes: bool) -> None:
    assert checks.not_an_echo(words, Context(instructions=[TOLD])) is passes


def test_the_first_failing_check_is_named() -> None:
    assert checks.first_failure("A tabby cat.", Context()) is None
    assert checks.first_failure("```\n```", Context()) == "says_something"
    assert checks.first_failure('{"a": [1, 2]}', Context()) == "not_json"
    assert checks.first_failure(EARLIER, Context(earlier=[EARLIER])) == "not_a_repeat"


def test_a_start_is_judged_by_the_partial_checks_only() -> None:
    context = Context(asked="Привет! Как дела?", earlier=[EARLIER])
    assert checks.first_failure("Привет! Как дела? The", context, partial=True) == "not_parroting"
    assert checks.first_failure("```", context, partial=True) is None  # a start may still say something
    assert checks.may_still_fail("Привет! Как", context)  # may become a parrot
    assert checks.may_still_fail("Что на этом", context)  # may become a repeat
    assert not checks.may_still_fail("Кошка", context)


@pytest.mark.parametrize(("text", "asked"), [("Give me JSON", True), ("json please", True), ("Hi", False)])
def test_asks_for_json(text: str, asked: bool) -> None:
    assert checks.asks_for_json(text) is asked
