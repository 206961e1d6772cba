"""Voice replies: what of a reply is said aloud (each rule on its own), the voice of the
reply's language, and the real Piper English voice round-tripped through the real Whisper."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from assistant.speakable import REST_IN_TEXT, bounded, reply_language, speakable, without_pictographs
from assistant.voice import Speaker, VoiceConfig, VoiceError, hub_path, locate, parse_voices
from tests.test_speech import word_error_rate


@pytest.mark.parametrize(("markdown", "spoken"), [
    ("The cat is **asleep**, _probably_.", "The cat is asleep, probably."),
    ("# Result\n\nA siren", "Result. A siren."),
    ("- one\n- two!", "one. two!"),
    ("See [the docs](https://example.com/x) now.", "See the docs now."),
    ("Open <https://example.com/page> please", "Open please."),
    ("Visit https://example.com/a?b=c today.", "Visit today."),
    ("Run `ls` then:\n\n```python\nprint('x' * 100)\n```\n\nDone.", "Run ls then: Done."),
    ("Use `" + "x" * 60 + "` here.", "Use here."),
    ("Great job 🎉👍 really", "Great job really."),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "a. b. 1. 2."),
    ("Кошка спит.", "Кошка спит."),
    ("", ""),
    ("```\nonly code\n```", ""),
])
def test_speakable_reads_words_not_markup(markdown: str, spoken: str) -> None:
    assert speakable(markdown) == spoken


def test_without_pictographs_keeps_letters_and_punctuation() -> None:
    assert without_pictographs("Ок 👌 — да, «так».") == "Ок — да, «так»."


@pytest.mark.parametrize(("text", "language"), [
    ("This is English.", "en"), ("Это по-русски, with a word.", "ru"), ("Photo: cat (Кот)", "en"),
    ("42 %", None), ("", None),
])
def test_reply_language_by_letters(text: str, language: str | None) -> None:
    assert reply_language(text) == language


def test_bounded_cuts_after_a_whole_sentence_and_says_so() -> None:
    text = "First sentence here. Second one is longer than the limit allows."
    assert bounded(text, 100, "en") == (text, False)
    cut, was_cut = bounded(text, 30, "en")
    assert was_cut and cut == f"First sentence here. {REST_IN_TEXT['en']}"
    cut, _ = bounded("Одно слово за другим без точки вообще", 20, "ru")
    assert cut == f"Одно слово за. {REST_IN_TEXT['ru']}"


@pytest.mark.parametrize("value", ["en", "en=", "english=en_US-lessac-medium", "en=lessac", "ru=voice.wav"])
def test_bad_voice_settings_are_refused_with_the_rule(value: str) -> None:
    config, problems = VoiceConfig.read({"ASSISTANT_TTS_VOICES": value})
    assert len(problems) == 1 and "ASSISTANT_TTS_VOICES" in problems[0] and "allowed is" in problems[0]


def test_voices_in_order_first_is_default() -> None:
    assert list(parse_voices(" ru=ru_RU-irina-medium , en=/v/en.onnx")) == ["ru", "en"]
    config, problems = VoiceConfig.read({})
    assert not problems and config.voices["en"] == "en_US-lessac-medium" and config.max_chars == 1000


def test_hub_path_of_a_voice_name() -> None:
    assert hub_path("ru_RU-irina-medium") == "ru/ru_RU/irina/medium/ru_RU-irina-medium.onnx"


def test_a_missing_voice_is_a_sentence_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    speaker = Speaker(VoiceConfig({"en": str(tmp_path / "gone.onnx")}))
    with pytest.raises(VoiceError, match="gone.onnx.*does not exist"):
        speaker.speak("Hello there.")
    with pytest.raises(VoiceError, match="no voice for Russian replies.*ASSISTANT_TTS_VOICES"):
        speaker.speak("Привет, как дела?")
    with pytest.raises(VoiceError, match="no words"):
        speaker.speak("```\ncode only\n```")


def test_a_voice_name_offline_and_not_cached_says_what_to_do(tmp_path: Path) -> None:
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        with pytest.raises(VoiceError, match="models fetch|ASSISTANT_TTS_VOICES"):
            locate("xx_XX-nobody-medium", tmp_path, download=True)
    finally:
        hub.HF_HUB_OFFLINE = before


def test_a_voice_in_the_models_directory_is_found(piper_voice: Path, tmp_path: Path) -> None:
    folder = tmp_path / "piper"
    folder.mkdir()
    (folder / "en_US-joe-medium.onnx").symlink_to(piper_voice)
    (folder / "en_US-joe-medium.onnx.json").symlink_to(f"{piper_voice}.json")
    assert locate("en_US-joe-medium", tmp_path, download=False) == folder / "en_US-joe-medium.onnx"


def _decoded(audio: bytes) -> tuple[str, int, int, float]:
    import av

    with av.open(io.BytesIO(audio)) as container:
        stream = container.streams.audio[0]
        return container.format.name, stream.rate, stream.channels, float(container.duration or 0) / 1e6


@pytest.fixture(scope="module")
def speaker(piper_voice: Path) -> Speaker:
    return Speaker(VoiceConfig({"en": str(piper_voice)}, max_chars=400))


def test_an_english_reply_is_an_ogg_opus_voice_note(speaker: Speaker) -> None:
    spoken = speaker.speak("The photo shows a **tabby cat** on a sofa. It looks calm.")
    fmt, rate, channels, duration = _decoded(spoken.audio)
    assert (fmt, rate, channels) == ("ogg", 48_000, 1)
    assert spoken.language == "en" and not spoken.cut
    assert 2.0 < spoken.seconds < 8.0 and abs(duration - spoken.seconds) < 0.2


def test_a_long_reply_is_cut_and_says_the_rest_is_in_the_text(speaker: Speaker) -> None:
    long = " ".join(f"Sentence number {n} says a little more." for n in range(40))
    spoken = speaker.speak(long)
    assert spoken.cut and spoken.seconds < 40


def test_round_trip_with_the_real_voice_and_the_real_whisper(speaker: Speaker, tmp_path: Path,
                                                            shared_models: Path) -> None:
    """Synthesised with the real Piper voice, transcribed by the real Whisper base: WER ≤ 0.15."""
    from tests.test_speech import transcribe
    from tools.base import ModelSource
    from tools.speech import SpeechTool

    reply = ("I listened to your recording. It sounds like a dog barking in a quiet street, "
             "and then a car drives past.")
    path = tmp_path / "reply.ogg"
    path.write_bytes(speaker.speak(reply).audio)
    tool = SpeechTool(ModelSource(str(shared_models / "whisper-base"), "ASSISTANT_SPEECH_MODEL"), device="cpu")
    heard = transcribe(tool, path, tmp_path)
    assert heard.language == "en"
    assert word_error_rate(reply, heard.text) <= 0.15, heard.text


def test_a_russian_reply_takes_the_russian_voice_through_espeak_russian(piper_voice: Path, tmp_path: Path) -> None:
    """No Russian voice can be had here: the English voice's model stands in with espeak-ng's
    Russian phonemes (bundled by piper-tts), which proves the language choice and the Russian
    text path; the sound itself is not Russian speech."""
    ru = tmp_path / "ru_stand-in.onnx"
    ru.symlink_to(piper_voice)
    config = json.loads(Path(f"{piper_voice}.json").read_text())
    config["espeak"]["voice"] = "ru"
    Path(f"{ru}.json").write_text(json.dumps(config))
    speaker = Speaker(VoiceConfig({"en": str(piper_voice), "ru": str(ru)}))
    spoken = speaker.speak("Это тестовый текст на русском языке.")
    assert spoken.language == "ru" and spoken.voice == str(ru) and spoken.seconds > 1.0
    from piper import PiperVoice

    phonemes = "".join(PiperVoice.load(ru).phonemize("Привет")[0])  # Russian phonemes, not letters
    assert phonemes and not any("а" <= ch <= "я" for ch in phonemes)
