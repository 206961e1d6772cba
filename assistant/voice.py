"""Voice replies: a reply's words spoken by Piper (local text-to-speech, ONNX voices) in the
voice of the reply's language, as an OGG/Opus voice note.

Voices are named per language in ``ASSISTANT_TTS_VOICES`` (``ru=ru_RU-irina-medium,en=...``):
Piper voice names, found in ``ASSISTANT_MODELS_DIR/piper/`` or the Hugging Face cache and else
downloaded from the ``rhasspy/piper-voices`` repository, or paths of local ``.onnx`` files. Each
voice loads once, on first use (piper and onnxruntime are imported then), and stays warm.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.speakable import bounded, reply_language, speakable
from tools.settings import Setting, read_settings

if TYPE_CHECKING:
    from assistant.memory import Memory
    from assistant.turns import Reply, Turn

log = logging.getLogger(__name__)

#: Where Piper's voices live on the Hugging Face hub.
PIPER_REPO = "rhasspy/piper-voices"
#: A voice's folder in a models directory (``ASSISTANT_MODELS_DIR/piper/<voice>.onnx``).
MODELS_FOLDER = "piper"
DEFAULT_VOICES = "en=en_US-lessac-medium,ru=ru_RU-irina-medium"
#: Opus encodes at 48 kHz; 32 kbit/s mono is clear speech in a small file.
OPUS_RATE, OPUS_BITRATE = 48_000, 32_000
#: Silence between sentences, in seconds (Piper synthesises one sentence at a time).
SENTENCE_PAUSE_S = 0.25
_VOICE_NAME = re.compile(r"^(?P<family>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<name>[\w]+)-(?P<quality>x_low|low|medium|high)$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
LANGUAGE_NAMES = {"en": "English", "ru": "Russian"}


class VoiceError(Exception):
    """Why a reply could not be spoken, in one sentence for the person (the text reply stands)."""


def parse_voices(text: str) -> dict[str, str]:
    """``lang=voice,...`` as a mapping, in the order given (the first is the default voice)."""
    voices: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        language, sep, voice = (part.strip() for part in item.partition("="))
        if not sep or not _LANGUAGE.match(language) or not voice:
            raise ValueError(f"{item!r} is not language=voice")
        if not (_VOICE_NAME.match(voice) or voice.endswith(".onnx")):
            raise ValueError(f"{voice!r} is neither a Piper voice name (such as en_US-lessac-medium) "
                             "nor a .onnx file")
        voices[language] = voice
    if not voices:
        raise ValueError("no voice")
    return voices


SETTINGS: dict[str, Setting] = {
    "voices": Setting("ASSISTANT_TTS_VOICES", parse_voices(DEFAULT_VOICES), check=parse_voices,
                      allowed="language=voice pairs, comma-separated (Piper voice names or .onnx paths)"),
    "max_chars": Setting("ASSISTANT_TTS_MAX_CHARS", 1000, int, minimum=100, maximum=20_000),
}


@dataclass(frozen=True)
class VoiceConfig:
    """The voices by language (the first is the default), the longest text spoken, and the
    models directory a voice may be in."""

    voices: Mapping[str, str] = field(default_factory=lambda: parse_voices(DEFAULT_VOICES))
    max_chars: int = 1000
    models_dir: Path | None = None

    @classmethod
    def read(cls, env: Mapping[str, str], models_dir: Path | None = None) -> tuple[VoiceConfig, list[str]]:
        """The configuration from the environment, and one message per bad setting."""
        values, problems = read_settings(SETTINGS.values(), env)
        return cls(values["ASSISTANT_TTS_VOICES"], values["ASSISTANT_TTS_MAX_CHARS"], models_dir), problems


@dataclass(frozen=True)
class SpokenReply:
    """A reply as a voice note: OGG/Opus bytes, its length, and how it was made."""

    audio: bytes
    seconds: float
    language: str
    voice: str
    #: True when the reply was longer than ``ASSISTANT_TTS_MAX_CHARS``: the voice says so.
    cut: bool


class Speaker:
    """Speaks replies; each voice is loaded on first use and kept. Thread-safe (one synthesis
    at a time: espeak-ng's phonemizer is process-global)."""

    def __init__(self, config: VoiceConfig) -> None:
        self.config = config
        self._voices: dict[str, Any] = {}
        self._lock = threading.Lock()

    def speak(self, text: str) -> SpokenReply:
        """``text`` (Markdown) spoken; :class:`VoiceError` saying why not."""
        words = speakable(text)
        if not words:
            raise VoiceError("There are no words in this reply to say aloud.")
        language = reply_language(words)
        chosen = self.voice_for(language)
        spoken_language = language or next(iter(self.config.voices))
        words, cut = bounded(words, self.config.max_chars, spoken_language)
        with self._lock:
            voice = self._load(chosen)
            try:
                samples = _synthesize(voice, words)
            except Exception as exc:  # noqa: BLE001 - a voice's failure never costs the text reply
                log.exception("speech synthesis failed")
                raise VoiceError(f"The voice {chosen} could not speak this reply "
                                 f"({exc.__class__.__name__}).") from exc
        rate = voice.config.sample_rate
        return SpokenReply(encode_ogg_opus(samples, rate), len(samples) / rate, spoken_language, chosen, cut)

    def voice_for(self, language: str | None) -> str:
        """The voice of ``language`` (None: the default voice); :class:`VoiceError` without one."""
        if language is None:
            return next(iter(self.config.voices.values()))
        voice = self.config.voices.get(language)
        if voice is None:
            name = LANGUAGE_NAMES.get(language, language)
            raise VoiceError(f"There is no voice for {name} replies: add one to ASSISTANT_TTS_VOICES "
                             f"(such as {language}=…, a Piper voice name).")
        return voice

    def _load(self, voice: str) -> Any:
        """The loaded Piper voice (call with the lock held)."""
        if voice not in self._voices:
            path = locate(voice, self.config.models_dir, download=True)
            try:
                from piper import PiperVoice

                self._voices[voice] = PiperVoice.load(path)
            except Exception as exc:  # noqa: BLE001
                raise VoiceError(f"The voice {voice} could not be loaded from {path} "
                                 f"({exc.__class__.__name__}: {exc}).") from exc
        return self._voices[voice]


#: When a conversation's replies are spoken: never, after the person's own voice notes, always.
VOICE_MODES = ("off", "auto", "always")
#: The conversation preference (memory) that keeps the mode.
VOICE_PREFERENCE = "voice"


def speaks(mode: str, turn: Turn) -> bool:
    """Whether the reply to ``turn`` is spoken in ``mode`` (``auto``: when the person sent a
    voice note in it, as AnythingLLM's "mirror" mode does)."""
    if mode == "always":
        return True
    return mode == "auto" and any(attachment.kind == "voice" for attachment in turn.attachments)


class VoiceReplies:
    """What a channel needs for voice replies: each conversation's mode (kept in memory, across
    restarts), the rule for a turn, and the speaker (made on first use)."""

    def __init__(self, config: VoiceConfig, memory: Memory, default_mode: str) -> None:
        self.config, self.memory, self.default_mode = config, memory, default_mode
        self._speaker: Speaker | None = None
        self._lock = threading.Lock()

    def mode(self, conversation_id: str) -> str:
        """The conversation's mode (its choice, else the channel's default)."""
        return self.memory.preference(conversation_id, VOICE_PREFERENCE) or self.default_mode

    def set_mode(self, conversation_id: str, mode: str) -> None:
        if mode not in VOICE_MODES:
            raise ValueError(f"unknown voice mode {mode!r}")
        self.memory.set_preference(conversation_id, VOICE_PREFERENCE, mode)

    def wanted(self, turn: Turn, reply: Reply) -> bool:
        """Whether this reply is spoken (never a cancelled one, nor one without words)."""
        return "cancelled" not in reply.notes and bool(reply.text.strip()) and speaks(
            self.mode(turn.conversation_id), turn)

    def speak(self, reply: Reply) -> SpokenReply:
        """The reply's words spoken (blocking: call it from a worker thread); :class:`VoiceError`."""
        with self._lock:
            if self._speaker is None:
                self._speaker = Speaker(self.config)
        return self._speaker.speak(reply.text)


def locate(voice: str, models_dir: Path | None, *, download: bool) -> Path:
    """The ``.onnx`` file of ``voice`` (its ``.onnx.json`` beside it): a path as given; a voice
    name in ``models_dir/piper/``, else the Hugging Face cache, else (with ``download``) fetched.
    :class:`VoiceError` saying what to do when it is not there."""
    if voice.endswith(".onnx"):
        path = Path(voice).expanduser()
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise VoiceError(f"The voice file {path} (with {path.name}.json beside it) does not exist; "
                             "fix ASSISTANT_TTS_VOICES.")
        return path
    if models_dir is not None:
        path = models_dir / MODELS_FOLDER / f"{voice}.onnx"
        if path.is_file() and Path(f"{path}.json").is_file():
            return path
    try:
        return _hub_file(voice, local_only=True)
    except Exception:  # noqa: BLE001 - not cached: download, or say how to get it
        if not download:
            raise VoiceError(f"The voice {voice} is not on this machine.") from None
    try:
        _check_hub()
        return _hub_file(voice, local_only=False)
    except Exception as exc:  # noqa: BLE001
        raise VoiceError(f"The voice {voice} is not on this machine and could not be downloaded "
                         f"({exc.__class__.__name__}); run `assistant models fetch` where there is "
                         "internet, or set ASSISTANT_TTS_VOICES to a local .onnx file.") from None


def check_voice(voice: str, models_dir: Path | None) -> tuple[str, str]:
    """``doctor``'s look at a voice, files only: ``("ok", where)``, ``("warn", why)`` for a voice
    that will be downloaded on first use, ``("fail", why)`` for a file that is not there."""
    try:
        return "ok", str(locate(voice, models_dir, download=False))
    except VoiceError as exc:
        if voice.endswith(".onnx"):
            return "fail", str(exc)
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "fail", f"{voice} is not on this machine and HF_HUB_OFFLINE is set"
    return "warn", f"{voice} is not on this machine yet; it will download on first use"


def hub_path(voice: str) -> str:
    """A voice's path in the ``rhasspy/piper-voices`` repository."""
    match = _VOICE_NAME.match(voice)
    if match is None:
        raise ValueError(f"{voice!r} is not a Piper voice name")
    family, region = match["family"], match["region"]
    return f"{family}/{family}_{region}/{match['name']}/{match['quality']}/{voice}.onnx"


def _check_hub() -> None:
    """Fail in seconds, not a minute of retries, when the hub cannot be reached (offline)."""
    from huggingface_hub import HfApi, constants

    from tools.hub import HUB_TIMEOUT

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set")
    HfApi().model_info(PIPER_REPO, timeout=HUB_TIMEOUT)


def _hub_file(voice: str, *, local_only: bool, dest: Path | None = None) -> Path:
    from huggingface_hub import hf_hub_download

    path = hub_path(voice)
    hf_hub_download(PIPER_REPO, f"{path}.json", local_files_only=local_only, local_dir=dest)
    return Path(hf_hub_download(PIPER_REPO, path, local_files_only=local_only, local_dir=dest))


def fetch_voice(voice: str, dest: Path | None) -> Path:
    """Download ``voice`` (a Piper voice name) into ``dest/piper/`` or the Hugging Face cache
    (``assistant models fetch``); a local ``.onnx`` path is only checked."""
    if voice.endswith(".onnx"):
        return locate(voice, None, download=False)
    if dest is None:
        return _hub_file(voice, local_only=False)
    folder = dest / MODELS_FOLDER
    downloaded = _hub_file(voice, local_only=False, dest=folder / ".download")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{voice}.onnx"
    downloaded.replace(target)
    Path(f"{downloaded}.json").replace(Path(f"{target}.json"))
    return target


def _synthesize(voice: Any, text: str) -> Any:
    """Piper's float samples of ``text``, a short pause between its sentences."""
    import numpy as np

    pause = np.zeros(int(voice.config.sample_rate * SENTENCE_PAUSE_S), dtype=np.float32)
    pieces = []
    for chunk in voice.synthesize(text):
        pieces += [chunk.audio_float_array, pause]
    if not pieces:
        raise ValueError("no audio")
    return np.concatenate(pieces[:-1])


def encode_ogg_opus(samples: Any, rate: int) -> bytes:
    """Mono float samples in [-1, 1] at ``rate`` Hz as an OGG/Opus file (Telegram's voice notes)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        stream.bit_rate = OPUS_BITRATE
        resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype("float32"), format="flt", layout="mono")
        frame.sample_rate = rate
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
