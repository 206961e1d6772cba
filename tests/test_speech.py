"""Speech recognition: the real Whisper base weights on real recordings, and the rules that keep
what is shown to what was really said (no words for noise, no repeats, no unsure endings)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from tools.base import Label, ModelSource, ToolContext, ToolError
from tools.speech import SpeechResult, SpeechTool, clean_segments

AUDIO = "audio"
RUSSIAN = "Это тестовый текст на русском языке для простого примера"
ENGLISH = ("Mrs. Allen, said Catherine the next morning, will there be any harm in my calling on "
           "Miss Tilney today? I shall not be easy till I have explained everything. Go by all means, "
           "my dear; only put on a white gown; Miss Tilney always wears white.")


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (``ё`` as ``е``), for the word error rate."""
    return re.sub(r"[^\w\s']", " ", text.lower().replace("ё", "е")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance between the word sequences, over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / len(ref)


@pytest.fixture(scope="module")
def whisper(shared_models: Path) -> Path:
    path = shared_models / "whisper-base"
    if not (path / "model.bin").is_file():
        pytest.skip(f"Whisper base weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def tool(whisper: Path) -> SpeechTool:
    tool = SpeechTool(ModelSource(str(whisper), "ASSISTANT_SPEECH_MODEL"), device="cpu")
    tool.ensure_loaded()
    return tool


def transcribe(tool: SpeechTool, path: Path, tmp_path: Path, progress=None) -> SpeechResult:
    store = AttachmentStore()
    attachment = store.register(path)
    result = tool.call({"attachment_id": attachment.id}, ToolContext(store, tmp_path, progress))
    assert isinstance(result, SpeechResult)
    return result


@pytest.fixture(scope="module")
def heard(tool: SpeechTool, media: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tool's result for a recording of ``../shared/media/audio``, transcribed once per module."""
    results: dict[str, SpeechResult] = {}
    progress: dict[str, list[float]] = {}

    def get(name: str) -> SpeechResult:
        if name not in results:
            progress[name] = []
            results[name] = transcribe(tool, media / AUDIO / name, tmp_path_factory.mktemp("speech"),
                                       lambda done, _: progress[name].append(done))
        return results[name]
    get.progress = progress  # type: ignore[attr-defined]  # the fractions reported, by name
    return get


# -- real recordings ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["speech_ru_simple_asr_test_ru.wav", "voice_note_ru.oga"])
def test_russian_speech_is_transcribed(heard, name: str) -> None:
    result, progress = heard(name), heard.progress[name]

    assert word_error_rate(RUSSIAN, result.text) <= 0.1, result.text
    assert result.language == "ru" and result.labels[0].label == "ru" and result.labels[0].score > 0.9
    assert result.text and result.transcript() == result.text
    assert len(result.segments) == 1  # said once, and no unsure last segment ("АССР")
    segment = result.segments[0]
    assert 0 <= segment.start_s < segment.end_s <= result.duration_s + 0.01
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)


def test_the_first_window_is_encoded_once(tool: SpeechTool, media: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """faster-whisper alone encodes it twice (language detection, then decoding)."""
    model = tool._model.model
    calls: list[object] = []
    original = type(model).encode
    monkeypatch.setattr(type(model), "encode", lambda self, features: calls.append(1) or original(self, features))
    result = transcribe(tool, media / AUDIO / "librosa_speech_en_female_198-209-0000.ogg", tmp_path)
    assert len(calls) == 1 and result.language == "en" and word_error_rate(ENGLISH, result.text) <= 0.1


def test_the_wav_and_the_voice_note_agree(heard) -> None:
    wav, note = heard("speech_ru_simple_asr_test_ru.wav"), heard("voice_note_ru.oga")
    assert words(wav.text) == words(note.text)


def test_english_speech_is_transcribed(heard) -> None:
    result = heard("librosa_speech_en_female_198-209-0000.ogg")
    assert result.language == "en"
    assert word_error_rate(ENGLISH, result.text) <= 0.1, result.text
    assert result.result_line().startswith("speech · en · \u201c")


@pytest.mark.parametrize("name", ["us8k_siren_102853-8-0-0.wav", "librosa_piano_ragtime.ogg",
                                  "us8k_dog_bark_100032-3-0-0.wav"])
def test_noise_music_and_animals_give_no_words(heard, name: str) -> None:
    result = heard(name)
    assert result.text == "" and result.segments == [] and result.transcript() is None
    assert result.labels == [] and result.language is None
    assert result.result_line() == "speech · no speech found"
    assert result.summary().startswith("No speech found")


def test_a_video_sound_track_and_damaged_files(tool: SpeechTool, media: Path, tmp_path: Path) -> None:
    from tests.test_audio import encode
    from tools.media import SAMPLE_RATE, decode_audio

    spoken = decode_audio(media / AUDIO / "voice_note_ru.oga")
    video = encode(tmp_path / "talk.mp4", spoken, SAMPLE_RATE, "aac", with_video=True)
    assert words(transcribe(tool, video, tmp_path).text)[:9] == words(RUSSIAN)  # re-encoded as AAC
    with pytest.raises(ToolError, match="no sound track"):
        transcribe(tool, media / "video" / "car_traffic_small.mp4", tmp_path)
    damaged = tmp_path / "cut.oga"
    damaged.write_bytes((media / AUDIO / "voice_note_ru.oga").read_bytes()[:200])
    with pytest.raises(ToolError, match="cut.oga"):
        transcribe(tool, damaged, tmp_path)


def test_a_forced_language_is_used(whisper: Path, media: Path, tmp_path: Path) -> None:
    tool = SpeechTool(ModelSource(str(whisper), "ASSISTANT_SPEECH_MODEL"), device="cpu", language="ru")
    result = transcribe(tool, media / AUDIO / "voice_note_ru.oga", tmp_path)
    assert result.language == "ru" and result.labels == [Label(label="ru", score=1.0)]


def test_cuda_that_cannot_be_used_falls_back_to_the_cpu(whisper: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture, media: Path,
                                                        tmp_path: Path) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a GPU CTranslate2 can use")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)  # a GPU it cannot use
    tool = SpeechTool(ModelSource(str(whisper), "ASSISTANT_SPEECH_MODEL"))
    with caplog.at_level(logging.WARNING, logger="tools.speech"):
        tool.ensure_loaded()
    assert tool._model.device == "cpu"
    (note,) = [r.getMessage() for r in caplog.records]
    assert "CUDA cannot be used by CTranslate2" in note and "on the CPU" in note
    assert transcribe(tool, media / AUDIO / "voice_note_ru.oga", tmp_path).transcript()


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(whisper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    tool = SpeechTool(ModelSource(str(whisper), "ASSISTANT_SPEECH_MODEL"), device="cuda")
    with pytest.raises(ToolError, match="ASSISTANT_DEVICE=cuda but CTranslate2 sees no CUDA device"):
        tool.ensure_loaded()


def test_a_missing_model_says_what_to_set(tmp_path: Path) -> None:
    tool = SpeechTool(ModelSource(str(tmp_path / "nowhere"), "ASSISTANT_SPEECH_MODEL"), device="cpu")
    with pytest.raises(ToolError, match="speech.*ASSISTANT_SPEECH_MODEL"):
        tool.ensure_loaded()


def test_analyze_json_gives_text_language_and_segments(models_env: Path, media: Path) -> None:
    import json

    done = subprocess.run([sys.executable, "-m", "cli", "analyze", "--tool", "speech", "--json",
                           str(media / AUDIO / "voice_note_ru.oga")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    data = json.loads(line)
    assert data["tool"] == "speech" and data["input"].endswith("voice_note_ru.oga")
    assert data["language"] == "ru" and data["labels"][0]["label"] == "ru"
    assert word_error_rate(RUSSIAN, data["text"]) <= 0.1
    assert [set(s) for s in data["segments"]] == [{"start_s", "end_s", "text"}]


# -- the rules, without the model --------------------------------------------------------------

def piece(text: str, start: float, end: float, logprob: float = -0.3) -> SimpleNamespace:
    return SimpleNamespace(text=f" {text}", start=start, end=end, avg_logprob=logprob)


def test_unsure_segments_and_repeats_are_dropped() -> None:
    kept = clean_segments([
        piece(RUSSIAN + ".", 0.0, 4.2),
        piece(RUSSIAN.lower() + "!", 4.3, 8.4),  # Whisper looping: the same words again
        piece("АССР", 8.5, 9.0, logprob=-1.1),  # made up at the end of a short clip
    ])
    assert [(s.text, s.start_s, s.end_s) for s in kept] == [(RUSSIAN + ".", 0.0, 8.4)]


def test_a_phrase_said_twice_inside_a_segment_is_kept_once() -> None:
    (kept,) = clean_segments([piece("Это тестовый текст. Это тестовый текст.", 0.0, 3.0)])
    assert kept.text == "Это тестовый текст."
    (short,) = clean_segments([piece("No, no.", 0.0, 1.0)])
    assert short.text == "No, no."  # a short repeat is how people talk


def audio_result(labels: dict[str, float], events: list[tuple[str, float, list[str]]] = ()):
    from tools.audio import AudioEvent, AudioResult

    return AudioResult(labels=[Label(label=k, score=v) for k, v in labels.items()], duration_s=10.0,
                       events=[AudioEvent(label=label, score=score, start_s=0, end_s=1, also=also)
                               for label, score, also in events])


def test_other_audio_is_transcribed_only_when_someone_talks() -> None:
    assert SpeechTool.follows("audio", audio_result({"Speech": 0.9}))
    assert SpeechTool.follows("audio", audio_result({"Music": 0.8}, [("Dog", 0.7, ["Speech"])]))
    assert not SpeechTool.follows("audio", audio_result({"Music": 0.9, "Speech": 0.1}))
    assert not SpeechTool.follows("audio", audio_result({"Siren": 0.9}))
    assert not SpeechTool.follows("video", audio_result({"Speech": 0.9}))  # only when asked


def test_the_text_asks_for_a_transcript() -> None:
    trigger = SpeechTool.trigger
    assert trigger is not None
    for text in ("What does he say?", "transcribe this", "what's being said here", "Что он говорит?",
                 "расшифруй, пожалуйста", "о чём они говорят"):
        assert trigger.wants("audio", text) and trigger.wants("video", text), text
    for text in ("What is this sound?", "Что это за звук?", "nice song"):
        assert not trigger.wants("audio", text), text
    assert not trigger.wants("image", "what does it say")


def test_language_setting_is_validated() -> None:
    settings, problems = Settings.read({"ASSISTANT_SPEECH_LANGUAGE": "Russian!"})
    assert any(p.startswith("ASSISTANT_SPEECH_LANGUAGE='Russian!'") for p in problems)
    settings, problems = Settings.read({"ASSISTANT_SPEECH_LANGUAGE": "RU"})
    assert not problems and settings.tool_value("ASSISTANT_SPEECH_LANGUAGE") == "ru"


# -- in a conversation -------------------------------------------------------------------------

def voice_agent(tool: SpeechTool, make_agent, llm, heard: str = "Speech"):
    from tests.scripted_llm import FakeTool
    from tools.registry import ToolRegistry

    cues = {"speech": 0.87} if heard == "Speech" else {}
    tools = ToolRegistry([FakeTool("audio", frozenset({"audio", "voice"}), heard, cues=cues), tool])
    return make_agent(llm, tools)


def test_a_voice_note_is_answered_from_its_words(tool: SpeechTool, media: Path, make_agent) -> None:
    from langchain_core.messages import HumanMessage

    from assistant.turns import Turn
    from tests.scripted_llm import ScriptedLLM, say

    def answer(messages) -> object:
        user = [m for m in messages if isinstance(m, HumanMessage)][-1].content
        assert user.startswith(RUSSIAN[:20]) and "Attachments: att_1 (voice note, voice.oga)" in user
        return say("Да, это тестовый текст.")

    llm = ScriptedLLM([answer])
    agent = voice_agent(tool, make_agent, llm)
    note = agent.attachments("c").register(media / AUDIO / "voice_note_ru.oga", name="voice.oga", kind="voice")
    reply = agent.respond(Turn("c", "", [note]))

    assert reply.text == "Да, это тестовый текст."
    assert reply.results[0].startswith("speech · ru · \u201cЭто тестовый текст")  # what was heard, first
    assert reply.results[1].startswith("audio · ")
    # memory keeps the words, so "what did I say?" works later (a fresh agent on the same database)
    (turn,) = voice_agent(tool, make_agent, None).memory.turns("c")
    assert turn.messages[0].content.startswith(RUSSIAN[:20])


def test_a_caption_and_a_forwarded_voice_note(tool: SpeechTool, media: Path, make_agent) -> None:
    from assistant.turns import Turn

    agent = voice_agent(tool, make_agent, None)
    store = agent.attachments("c")
    own = store.register(media / AUDIO / "voice_note_ru.oga", kind="voice")
    agent.respond(Turn("c", "Переведи на английский", [own]))
    forwarded = store.register(media / AUDIO / "voice_note_ru.oga", kind="voice", forwarded_from="Anna")
    reply = agent.respond(Turn("c", "", [forwarded]))

    first, second = agent.memory.turns("c")
    assert first.messages[0].content.startswith("Переведи на английский\n\n(In my voice note att_1 I said: \u201cЭто")
    assert second.messages[0].content.startswith("Forwarded voice note att_2 from Anna says: \u201cЭто")
    assert "voice note forwarded from Anna" in second.messages[0].content
    assert "Это тестовый текст" in reply.text  # no-LLM mode shows the transcript itself


def test_other_audio_is_transcribed_when_speech_is_heard(tool: SpeechTool, media: Path, make_agent) -> None:
    from assistant.turns import Turn

    talking = voice_agent(tool, make_agent, None, heard="Speech")
    clip = talking.attachments("c").register(media / AUDIO / "voice_note_ru.oga")
    assert clip.kind == "audio"
    reply = talking.respond(Turn("c", "", [clip]))
    assert reply.results[0].startswith("speech · ru")
    (turn,) = talking.memory.turns("c")
    assert turn.messages[0].content == "Attachments: att_1 (audio, voice_note_ru.oga)"  # a recording, not my words

    siren = voice_agent(tool, make_agent, None, heard="Siren")
    clip = siren.attachments("d").register(media / AUDIO / "voice_note_ru.oga")
    reply = siren.respond(Turn("d", "", [clip]))
    assert [line.split(" · ")[0] for line in reply.results] == ["audio"]
    reply = siren.respond(Turn("d", "what does she say?", [clip]))  # asked: transcribed
    assert [line.split(" · ")[0] for line in reply.results] == ["speech", "audio"]
