"""Speech recognition with faster-whisper (CTranslate2 Whisper): what is said in a recording.

The model setting (``ASSISTANT_SPEECH_MODEL`` / ``ASSISTANT_MODELS_DIR``, folder
``whisper-base``) takes a Whisper size name (``base``, ``small``, ``large-v3`` …), a Hugging
Face hub id in faster-whisper's format, or a local directory holding one (``model.bin``,
``config.json``, ``tokenizer.json``, ``vocabulary.*``). It runs int8 on the CPU and float16 on
CUDA; the device is chosen with CTranslate2 itself (torch's CUDA is not CTranslate2's: it needs
CUDA 12's cuBLAS), and a CUDA that cannot be used falls back to the CPU with one logged note.

What comes out is meant to be what was really said, or nothing:

- voice-activity filtering (Silero VAD, built into faster-whisper) is always on, so music,
  noise and silence give no words;
- segments the model is unsure of (average log-probability under :data:`MIN_AVG_LOGPROB`) are
  dropped — on short clips Whisper adds a made-up last segment ("АССР") near −1;
- text is never conditioned on the previous window, and a segment that repeats the one before
  it (or a phrase repeated within a segment) is kept once: Whisper's repetition loop.

An unsure segment is not decoded again at higher temperatures (faster-whisper's default when
the log-probability is low: up to five more decodes, for a segment then usually dropped);
a repetitive one still is (the compression-ratio check).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from tools.base import (ModelCheck, ModelSource, ModelSpec, TextTrigger, Tool,
                        ToolConfig, ToolContext, ToolError, ToolResult, short_reason,
                        sorted_labels)
from tools.settings import Setting
from tools.hub import load_pretrained
from tools.media import SAMPLE_RATE, decode_audio

log = logging.getLogger(__name__)

DEFAULT_MODEL = "base"
#: Segments whose tokens average a lower log-probability than this are not kept.
MIN_AVG_LOGPROB = -0.7
#: Longest transcript quoted in a reply's result line, in characters.
LINE_CHARS = 400

#: The text asks what is said in a recording or video (English and Russian).
ASKS_WHAT_IS_SAID = re.compile(
    r"\b(transcri\w*|what (is|was|are|were|do|does|did) (\w+ )?(say|said|saying|tell|talk\w*)"
    r"|what'?s (being )?said|words|lyrics|dictat\w*)"
    r"|(расшифр|транскри|что (он |она |они |там |тут )?(говор|сказ)|о ч[её]м (он |она |они )?говор"
    r"|текст|слова)",
    re.IGNORECASE)

#: A clip whose result has a ``speech`` cue at least this strong is worth transcribing.
_SPEECH_SCORE = 0.3


def _language(text: str) -> str:
    code = text.strip().lower()
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise ValueError("not a language code")
    return code


LANGUAGE = Setting("ASSISTANT_SPEECH_LANGUAGE", None, check=_language,
                   allowed="empty (detect the language) or a Whisper language code such as ru or en")


class SpeechParams(BaseModel):
    attachment_id: str


class Segment(BaseModel):
    """A stretch of speech and what was said in it (times in the original recording)."""

    start_s: float
    end_s: float
    text: str


class SpeechResult(ToolResult):
    """The transcript, its language (``labels``: the language and its probability) and segments."""

    tool: str = "speech"
    text: str
    language: str | None
    duration_s: float
    segments: list[Segment] = []

    def transcript(self) -> str | None:
        return self.text or None

    def summary(self) -> str:
        if not self.text:
            return f"No speech found in {self.duration_s:.1f} s of audio."
        return f"\u201c{self.text}\u201d ({self.language}, {self.duration_s:.1f} s)"

    def result_line(self) -> str:
        if not self.text:
            return "speech · no speech found"
        quote = self.text if len(self.text) <= LINE_CHARS else self.text[:LINE_CHARS - 1] + "…"
        return f"speech · {self.language} · \u201c{quote}\u201d"


# -- the model: where it comes from ----------------------------------------------------------

def _repo_id(value: str) -> str:
    """The hub id of a Whisper size name (``base`` → ``Systran/faster-whisper-base``)."""
    from faster_whisper.utils import _MODELS  # faster-whisper's own table of size names

    return _MODELS.get(value, value)


def _fetch(dest: Path | None) -> Path:
    from faster_whisper import download_model

    with warnings.catch_warnings():  # faster-whisper still passes huggingface_hub an old argument
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
        return Path(download_model(DEFAULT_MODEL, output_dir=str(dest) if dest else None))


def _check_local(path: Path) -> str | None:
    missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        return f"not a faster-whisper model directory ({', '.join(missing)} missing)"
    return None


def _check_cached(value: str) -> ModelCheck | None:
    """A size name or hub id: is it in the local Hugging Face cache? (nothing is imported
    from faster-whisper, which would load CTranslate2)"""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    repo = value if "/" in value else f"Systran/faster-whisper-{value}"
    weights = try_to_load_from_cache(repo, "model.bin")
    if isinstance(weights, str):
        return ModelCheck("ok", f"{value} in the Hugging Face cache ({Path(weights).parent})")
    return ModelCheck("warn", f"{value} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
                              "it will download on first use")


class _Whisper:
    """A loaded model and how it runs."""

    def __init__(self, model: Any, device: str) -> None:
        self.model, self.device = model, device


class SpeechTool(Tool[SpeechParams]):
    name = "speech"
    description = ("Transcribe the speech in a voice note, audio clip or video's sound track "
                   "(Whisper, 99 languages): the words said, their language and time spans.")
    Params = SpeechParams
    kinds: ClassVar[frozenset[str]] = frozenset({"voice", "audio", "video"})
    routes: ClassVar[frozenset[str]] = frozenset({"voice"})
    trigger = TextTrigger(frozenset({"audio", "video"}), ASKS_WHAT_IS_SAID)
    model = ModelSpec("speech recognition (Whisper)", DEFAULT_MODEL, "ASSISTANT_SPEECH_MODEL",
                      "whisper-base", _fetch, _check_local, _check_cached,
                      fetch_source="Systran/faster-whisper-base")
    settings = (LANGUAGE,)

    def __init__(self, source: ModelSource, device: str | None = None, language: str | None = None) -> None:
        super().__init__()
        self._source, self._device, self.language = source, device, language

    @classmethod
    def create(cls, config: ToolConfig) -> SpeechTool:
        assert config.source is not None
        return cls(config.source, config.device, config.values.get(LANGUAGE.variable))

    @classmethod
    def follows(cls, kind: str, result: ToolResult) -> bool:
        """Other audio is transcribed when the audio tool hears someone talking (a song or
        a siren is not worth minutes of transcription)."""
        return kind == "audio" and result.cues().get("speech", 0.0) >= _SPEECH_SCORE

    def source(self) -> str:
        return self._source.value

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> _Whisper:
        for device, compute_type in self._devices():
            try:
                model = self._open(device, compute_type)
                if device != "cpu":
                    _probe(model)  # CTranslate2 loads cuBLAS on the first run, not at load
                return _Whisper(model, device)
            except Exception as exc:  # noqa: BLE001 - a CUDA that cannot be used: fall back
                if device == "cpu":  # missing files fail here too, with the CPU's message
                    raise
                log.warning("speech: CUDA cannot be used by CTranslate2 (%s); transcribing on the "
                            "CPU instead. CTranslate2 needs CUDA 12's cuBLAS and cuDNN 9 "
                            "(pip install nvidia-cublas-cu12 nvidia-cudnn-cu12), which torch's "
                            "CUDA 13 wheels do not bring.", short_reason(exc))
        raise AssertionError("unreachable: the CPU is always the last device")

    def _devices(self) -> list[tuple[str, str]]:
        """(device, compute type) to try in order: ASSISTANT_DEVICE, else CUDA when
        CTranslate2 sees a GPU, and always the CPU last (unless CUDA was asked for)."""
        import ctranslate2

        choice = (self._device or os.environ.get("ASSISTANT_DEVICE") or "").strip().lower()
        if choice == "cpu":
            return [("cpu", "int8")]
        cuda = ctranslate2.get_cuda_device_count() > 0
        if choice.startswith("cuda") and not cuda:
            raise ToolError(f"ASSISTANT_DEVICE={choice} but CTranslate2 sees no CUDA device; "
                            "use ASSISTANT_DEVICE=cpu or leave it unset.")
        return [(choice or "cuda", "float16"), ("cpu", "int8")] if cuda else [("cpu", "int8")]

    def _open(self, device: str, compute_type: str) -> Any:
        WhisperModel = _one_encoding_whisper()
        name, _, index = device.partition(":")
        value = self._source.value.strip()
        local = Path(value).expanduser()
        location = str(local) if local.is_dir() else _repo_id(value)
        threads = (os.cpu_count() or 1) if name == "cpu" else 0
        return load_pretrained(
            ModelSource(location, self._source.variable), "speech",
            "model.bin, config.json, tokenizer.json and vocabulary.txt of a faster-whisper model",
            lambda where, local_only: WhisperModel(where, device=name, device_index=int(index or 0),
                                                   compute_type=compute_type, cpu_threads=threads,
                                                   local_files_only=local_only))

    # -- running ---------------------------------------------------------------------------

    def run(self, params: SpeechParams, ctx: ToolContext) -> SpeechResult:
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        ctx.report(0.0, "Decoding audio")
        wave = decode_audio(path)
        duration = len(wave) / SAMPLE_RATE
        ctx.report(0.05, f"Transcribing {duration:.0f} s of audio")
        try:
            pieces, info = self._model.model.transcribe(
                wave, language=self.language, vad_filter=True, condition_on_previous_text=False,
                log_prob_threshold=None)  # unsure segments are dropped, not decoded five times more
            segments = []
            for piece in pieces:  # a generator: Whisper works through 30 s windows as we read
                segments.append(piece)
                ctx.report(0.05 + 0.95 * min(piece.end / max(duration, 1e-6), 1.0), "Transcribing")
        except ValueError as exc:  # an unknown language code, from the tokenizer
            raise ToolError(f"speech: {short_reason(exc)} (ASSISTANT_SPEECH_LANGUAGE).") from None
        kept = clean_segments(segments)
        text = " ".join(segment.text for segment in kept)
        language = info.language if text else None
        ctx.report(1.0, "Done")
        return SpeechResult(
            labels=sorted_labels([(language, info.language_probability)]) if language else [],
            text=text, language=language, duration_s=round(duration, 3), segments=kept)


@cache
def _one_encoding_whisper() -> type:
    """faster-whisper's ``WhisperModel``, encoding the first 30 s window once, not twice.

    ``transcribe`` runs the encoder on the first window to detect the language, then
    ``generate_segments`` runs it again on the same window (it can take that encoding as
    ``encoder_output``, but ``transcribe`` passes None): on a CPU the encoder is about a
    third of a short clip's time. This keeps the detection's encoding for the first window.
    """
    from faster_whisper import WhisperModel

    class OneEncodingWhisper(WhisperModel):
        _kept: Any = None
        _detecting = False

        def detect_language(self, *args: Any, **kwargs: Any) -> Any:
            self._detecting, self._kept = True, None
            try:
                return super().detect_language(*args, **kwargs)
            finally:
                self._detecting = False

        def encode(self, features: Any) -> Any:
            output = super().encode(features)
            if self._detecting and self._kept is None:  # the first window's
                self._kept = output
            return output

        def generate_segments(self, features: Any, tokenizer: Any, options: Any, log_progress: Any,
                              encoder_output: Any = None) -> Any:
            kept, self._kept = self._kept, None
            return super().generate_segments(features, tokenizer, options, log_progress,
                                             encoder_output if encoder_output is not None else kept)

    return OneEncodingWhisper


def _probe(model: Any) -> None:
    """One short decode without VAD, so a device that cannot run fails here."""
    import numpy as np

    list(model.transcribe(np.zeros(SAMPLE_RATE, np.float32), vad_filter=False, language="en")[0])


def clean_segments(segments: list[Any], min_avg_logprob: float = MIN_AVG_LOGPROB) -> list[Segment]:
    """faster-whisper's segments without the unsure ones and without repetitions."""
    kept: list[Segment] = []
    for piece in segments:
        text = _once(" ".join(piece.text.split()))
        if not text or piece.avg_logprob < min_avg_logprob:
            continue
        if kept and _plain(kept[-1].text) == _plain(text):
            kept[-1].end_s = round(piece.end, 2)  # the same words again: Whisper looping
            continue
        kept.append(Segment(start_s=round(piece.start, 2), end_s=round(piece.end, 2), text=text))
    return kept


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _once(text: str) -> str:
    """A sentence or phrase said twice or more in a row inside one segment, said once."""
    words = text.split()
    plain = [_plain(word) for word in words]
    for size in range(3, len(words) // 2 + 1):  # phrases of three words or more ("no, no" is fine)
        if len(words) % size == 0 and all(plain[i] == plain[i % size] for i in range(len(words))):
            return " ".join(words[:size])
    return text
