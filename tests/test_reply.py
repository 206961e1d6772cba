"""The reply contract: calls found however a model writes them, nothing raw shown, one
fallback renderer, grounded result lines, memory keeps what the person saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from assistant.turn import fallback
from assistant.turn.checks import Context, first_failure
from assistant.turn.parsing import read_answer
from assistant.turn.state import CallRecord, result_line
from assistant.turn.stream import Streamer
from assistant.llm import LLMError
from assistant.turns import Turn
from tests.scripted_llm import ScriptedLLM, call_tools, say
from tools.audio import AudioEvent, AudioResult
from tools.base import Label
from tools.detection import DetectionLabel, VideoDetectionResult
from tools.registry import ToolRegistry

CALL = '{"name": "sentiment", "arguments": {"text": "x"}}'


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF fake")
    return path


@pytest.mark.parametrize(("text", "names", "words"), [
    (CALL, ["sentiment"], ""),
    ('{"name": "sentiment", "parameters": {"text": "x"}}', ["sentiment"], ""),
    ('{"tool": "sentiment", "arguments": {"text": "x"}}', ["sentiment"], ""),
    ('{"function": {"name": "sentiment", "arguments": "{\\"text\\": \\"x\\"}"}}', ["sentiment"], ""),
    ('{"tool_calls": [{"name": "image", "arguments": {"attachment_id": "att_1"}}, ' + CALL + ']}',
     ["image", "sentiment"], ""),
    ("```json\n" + CALL + "\n```", ["sentiment"], ""),
    ("Let me check.\n" + CALL + "\n" + CALL.replace('"x"', '"y"') + "\nDone.", ["sentiment", "sentiment"],
     "Let me check.\n\n\nDone."),
    ("<tool_call>\n" + CALL + "\n</tool_call>", ["sentiment"], ""),
    ("<tool_call>\n{broken", [], ""),
    ('{"tool_calls": [}]}', [], ""),
    ('"duration_s": 4.0, "events": [,]}]\n"outputs": [, ]}]', [], ""),  # qwen imitating audio output  # SmolLM2 copying the decision format, broken
    (CALL + '\n{"outputs": [["Emergency vehicle", "Siren"]]}', ["sentiment"], ""),
    ('{"tool": "audio", "labels": [{"label": "Siren", "score": 0.9}]}', [], ""),
    ("I could run the sentiment tool on it.", [], "I could run the sentiment tool on it."),
    ('Here is your JSON: {"city": "Oslo", "days": 3}', [], 'Here is your JSON: {"city": "Oslo", "days": 3}'),
    ("Just an answer with {braces}.", [], "Just an answer with {braces}."),
    ('{"name":', [], ""),  # qwen2.5-coder, measured: a call begun and never finished
    ('It is a voice note. {"name": "speech", "arguments": {"attachment_id": "att_1"',
     [], "It is a voice note."),
])
def test_calls_are_read_however_they_are_written(tools: ToolRegistry, text: str, names: list[str],
                                                 words: str) -> None:
    answer = read_answer(text, tools)
    assert [c.name for c in answer.calls] == names
    assert answer.words == words.replace("\n\n\n", "\n\n")


@pytest.mark.parametrize(("text", "problem"), [
    ('{"name": "rm -rf", "arguments": {}}', "unknown tool 'rm -rf'"),
    ('{"name": "sentiment", "arguments": "text"}', "arguments of sentiment must be a JSON object"),
    ('{"tool_calls": ["sentiment"]}', "each tool call must be a JSON object"),
])
def test_bad_requests_are_problems_not_calls(tools: ToolRegistry, text: str, problem: str) -> None:
    answer = read_answer(text, tools)
    assert answer.calls == [] and answer.problems[0].startswith(problem)


def test_a_fallback_in_the_history_reads_as_a_note_keeping_what_the_model_had_said() -> None:
    cut = fallback.render_fallback(fallback.STOPPED, [], said="The photo shows a tabby")
    assert fallback.as_history_note(cut) == f"The photo shows a tabby\n\n{fallback.FALLBACK_IN_HISTORY}"
    assert fallback.as_history_note("A cat.") == "A cat."
    assert first_failure(fallback.FALLBACK_IN_HISTORY, Context()) == "not_a_fallback_copy"  # copying it is no answer


def test_an_echo_of_the_request_to_answer_is_asked_again_but_an_answer_in_its_words_is_not(
        make_agent, clip) -> None:
    """SmolLM2 answered "That reply could not be shown to the user."; Qwen answers "saying
    what the tools found" with "The tools found..."."""
    llm = ScriptedLLM([say("```\n```"), say("That reply could not be shown to the user."),
                       say("The tools found a siren.")])
    agent = make_agent(llm)
    audio = agent.attachments("c").register(clip, kind="audio")

    first = agent.respond(Turn("c", "what is it?", [audio]))
    llm.script = [say("```\n```"), say("The tools found a siren.")]
    second = agent.respond(Turn("c", "and this?", [audio]))

    assert first.text.startswith(f"_{fallback.UNUSABLE}") and second.text == "The tools found a siren."


def test_result_lines_come_from_the_tool_results() -> None:
    audio = AudioResult(labels=[Label(label="Siren", score=0.76), Label(label="Emergency vehicle", score=0.53),
                                Label(label="Music", score=0.01)], duration_s=4.0,
                        events=[AudioEvent(label="Siren", score=0.8, start_s=0.0, end_s=4.0)])
    video = VideoDetectionResult(tool="video", labels=[DetectionLabel(label="car", score=0.91, count=2)],
                                 threshold=0.5, classes=[], frames_sampled=12, frames_with_objects=10,
                                 duration_s=12.0, fps_sampled=1.0)
    assert audio.result_line() == "audio · Siren 76%, Emergency vehicle 53% · 4.0 s · events: Siren 0.0–4.0 s"
    assert video.result_line() == "video · 2× car 91% · in 10 of 12 sampled frames, 12 s"
    error = CallRecord(None, "audio", "audio on att_9", outcome="Unknown attachment id 'att_9'")
    assert result_line(error) == "audio · error: Unknown attachment id 'att_9'"


def test_a_call_printed_as_text_with_invented_output_is_run_and_never_shown(make_agent, tools, clip) -> None:
    """qwen2.5-coder's reply to an audio clip, as measured (issue 9)."""
    raw = ('{"name": "audio", "arguments": {"attachment_id": "att_1"}}\n'
           '{"outputs": [["Emergency vehicle","Siren"]]}')
    llm = ScriptedLLM([say(raw), say("I hear a siren (87%).")])
    agent = make_agent(llm)
    audio = agent.attachments("c").register(clip, kind="audio")
    tokens: list[str] = []

    reply = agent.respond(Turn("c", "What do you hear in this recording?", [audio]), on_token=tokens.append)

    assert reply.text == "I hear a siren (87%)." and "{" not in "".join(tokens)
    assert reply.results == ["audio · Siren 87%"]
    assert len(tools.get("audio").calls) == 1  # the routed call; the model's identical one is not run again
    assert "already run in this turn" in llm.calls[1].messages[-2].content


def test_unusable_replies_are_retried_once_then_replaced_and_memory_keeps_the_replacement(
        make_agent, tools, clip) -> None:
    llm = ScriptedLLM([say('{"outputs": [["Siren"]]}'), say("```\n```"), say("Hello again!")])
    agent = make_agent(llm)
    audio = agent.attachments("c").register(clip, kind="audio")

    reply = agent.respond(Turn("c", "what is it?", [audio]))
    agent.respond(Turn("c", "thanks"))

    assert len(llm.calls) == 3 and "No JSON" in llm.calls[1].messages[-1].content
    assert reply.text.startswith(f"_{fallback.UNUSABLE}; the tool results are below._") and "- **audio on att_1**: audio: Siren (87%)" in reply.text
    assert reply.results == ["audio · Siren 87%"] and "the model gave no usable answer" in reply.notes
    assert "failed check: says_something" in reply.notes  # the last try was an empty fence
    stored = [str(m.content) for t in agent.memory.turns("c") for m in t.messages]
    assert reply.text in stored  # memory keeps what the person saw
    history = [str(m.content) for m in llm.calls[2].messages]  # the model reads a note in its place
    assert fallback.FALLBACK_IN_HISTORY in history and not any(fallback.UNUSABLE in text for text in history)
    assert not any("[[" in text or "```" in text for text in history)
    assert not any("could not be shown" in text for text in history)  # this turn's instructions are not stored


def test_a_reply_that_only_repeats_calls_when_none_are_allowed_is_replaced(make_agent, tools) -> None:
    llm = ScriptedLLM([call_tools(("sentiment", {"text": "a"}))], repeat_last=True)
    reply = make_agent(llm, max_tool_rounds=1).respond(Turn("c", "tone of 'a'?"))

    assert reply.text.startswith(f"_{fallback.ROUNDS}; the tool results are below._") and "(No answer" not in reply.text
    assert reply.results == ["sentiment · positive 87%"] and len(llm.calls) == 3


def test_no_usable_answer_and_nothing_analysed_says_so_without_promising_results(make_agent) -> None:
    llm = ScriptedLLM([say("```\n```")], repeat_last=True)
    reply = make_agent(llm).respond(Turn("c", "Привет!"))

    assert reply.text == f"_{fallback.UNUSABLE}._\n\n{fallback.NOTHING_RAN}" and reply.results == []
    assert "below" not in reply.text


def test_an_error_message_keeps_its_own_sentence() -> None:
    text = fallback.render_fallback("Ollama is not reachable – start it with `ollama serve`.", [])
    assert text.startswith("_Ollama is not reachable – start it with `ollama serve`._\n\n")


class _BreaksMidStream(ScriptedLLM):
    def chat(self, messages, *, tools=None, format=None, on_token=None, cancel=None) -> AIMessage:
        on_token("The photo shows ")
        on_token("a tabby ")
        raise LLMError("The language model stopped answering (the connection to Ollama broke off) – try again.")


def test_ollama_failing_mid_stream_keeps_what_was_said(make_agent, tools, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    agent = make_agent(_BreaksMidStream())
    image = agent.attachments("c").register(photo, kind="image")
    tokens: list[str] = []

    reply = agent.respond(Turn("c", "", [image]), on_token=tokens.append)

    assert reply.text.startswith("The photo shows a tabby\n\n_" + fallback.STOPPED + "; the tool results are below._")
    assert "- **image on att_1**: image: tabby (87%)" in reply.text and "RemoteProtocolError" not in reply.text
    assert reply.results == ["image · tabby 87%"] and reply.notes[0].startswith("The language model stopped")
    assert "".join(tokens) == "The photo shows a tabby "


def test_streaming_holds_back_what_may_be_a_call_and_keeps_the_words() -> None:
    shown: list[str] = []
    stream = Streamer(shown.append)
    for token in ["Sure. ", '{"name": ', '"sentiment", "arguments": {}}', " More."]:
        stream.feed(token)
    stream.finish("Sure.\n\nMore.")
    assert "".join(shown) == "Sure. \n\nMore."
    assert json.dumps({}) not in "".join(shown)


def test_a_model_call_the_tool_rejects_is_not_shown_as_a_result(make_agent, tools, clip) -> None:
    """smollm2, measured: calls without arguments and with made-up ids; the person saw their
    errors as results. The model is told; the result lines keep only what was measured."""
    llm = ScriptedLLM([call_tools(("audio", {}), ("audio", {"attachment_id": "1234567890"})),
                       say("I hear a siren.")])
    agent = make_agent(llm)
    audio = agent.attachments("c").register(clip, kind="audio")
    reply = agent.respond(Turn("c", "what is it?", [audio]))

    assert reply.text == "I hear a siren." and reply.results == ["audio · Siren 87%"]
    told = [json.loads(m.content).get("error", "") for m in llm.calls[1].messages if m.type == "tool"]
    assert told[1].startswith("Invalid arguments for audio") and told[2].startswith("Unknown attachment id")


def test_a_reply_that_parrots_the_question_is_not_shown_while_it_streams() -> None:
    """SmolLM2, measured: "Привет! Как дела?\\n\\nThe answer is: …" to "Привет! Как дела?"
    (the check itself: tests/test_reply_checks.py)."""
    asked = "Привет! Как дела?"

    shown: list[str] = []
    stream = Streamer(shown.append, Context(asked=asked))
    for token in ["При", "вет! Как", " дела?", "\n\nThe answer", " is: 42"]:
        stream.feed(token)
    stream.finish("")
    assert shown == []
    fine: list[str] = []
    stream = Streamer(fine.append, Context(asked=asked))
    for token in ["При", "вет! Всё", " хорошо."]:
        stream.feed(token)
    assert "".join(fine) == "Привет! Всё хорошо."
    braced: list[str] = []
    stream = Streamer(braced.append, Context(asked=asked))
    for token in ["Привет! Как", ' дела? {"name"', ': "audio"}', " ok"]:
        stream.feed(token)
    stream.finish("")
    assert braced == []
