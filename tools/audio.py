"""Audio tagging with YAMNet: what is heard in a clip, and when.

The model setting (``ASSISTANT_AUDIO_MODEL`` / ``ASSISTANT_MODELS_DIR``) accepts a TF Hub
handle or SavedModel directory (``tensorflow_hub.load``), a YAMNet ``.tflite`` file, or a
directory holding ``yamnet.tflite`` (and ``yamnet_class_map.csv``). Any format PyAV can
decode is accepted (WAV, FLAC, OGG Vorbis/Opus, MP3, M4A/AAC, the sound track of a video)
and turned into 16 kHz mono float32 before tagging.

YAMNet scores 0.96 s windows every 0.48 s. The clip's labels are the mean over those
frames (YAMNet's standard clip score); the events come from the frames themselves, so a
short sound in a long recording is reported with its time span instead of vanishing in
the average.
"""

from __future__ import annotations

import csv
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from tools.base import (ModelCheck, ModelLoadError, ModelSource, ModelSpec, Tool, ToolConfig,
                        ToolContext, ToolResult, import_tensorflow, import_tensorflow_hub,
                        native_stderr_silenced, short_reason, sorted_labels)
from tools.media import SAMPLE_RATE, decode_audio

if TYPE_CHECKING:
    import numpy as np

#: YAMNet's frame hop and window, in seconds.
FRAME_HOP_S = 0.48
FRAME_WINDOW_S = 0.96
_HOP_SAMPLES = 7_680
#: Samples YAMNet needs for one frame (0.96 s of patches plus the last STFT window).
MIN_SAMPLES = 15_600
#: Frames per inference call: 60 s of audio, so long recordings show progress.
CHUNK_FRAMES = 125

#: A class is "heard" in a frame when its score reaches this.
EVENT_THRESHOLD = 0.3
MAX_EVENTS = 10
MAX_ALSO = 3
#: Never reported as events (they are still among the clip's labels when they score).
_NOT_EVENTS = frozenset({"Silence"})
#: Broad classes that fire together with a specific one ("Animal" with "Dog"): an event
#: is named after the specific class where there is one.
_GENERIC = frozenset({
    "Animal", "Domestic animals, pets", "Livestock, farm animals, working animals",
    "Wild animals", "Vehicle", "Motor vehicle (road)", "Inside, small room",
    "Inside, large room or hall", "Inside, public space", "Outside, urban or manmade",
    "Outside, rural or natural", "Sound effect", "Noise", "Environmental noise",
})

DEFAULT_HUB_TIMEOUT_S = 30.0


class AudioParams(BaseModel):
    attachment_id: str
    top_k: int = Field(5, ge=1, le=20)


class AudioEvent(BaseModel):
    """A sound heard over a time span: its class, peak frame score and co-occurring classes."""

    label: str
    score: float
    start_s: float
    end_s: float
    also: list[str] = []


#: Classes of YAMNet that mean someone is talking (the ``speech`` cue of a result).
SPEECH_CLASSES = frozenset({
    "Speech", "Male speech, man speaking", "Female speech, woman speaking",
    "Child speech, kid speaking", "Conversation", "Narration, monologue", "Whispering",
})


class AudioResult(ToolResult):
    tool: str = "audio"
    duration_s: float
    #: Distinct sound events, in order of time.
    events: list[AudioEvent] = []

    def summary(self) -> str:
        shown = [item for item in self.labels[:5] if item.score >= 0.05] or self.labels[:1]
        top = ", ".join(f"{item.label} ({item.score:.0%})" for item in shown)
        text = f"audio, {self.duration_s:.1f} s: {top or 'nothing recognised'}."
        if self.events:
            text += " Events: " + "; ".join(
                f"{event.label} at {event.start_s:.1f}–{event.end_s:.1f} s"
                + (f" (also {', '.join(event.also)})" if event.also else "")
                for event in self.events) + "."
        return text

    def cues(self) -> dict[str, float]:
        """``speech``: the strongest speech class heard, overall or in an event (a speech class
        an event also holds counts as certain)."""
        heard = [(item.label, item.score) for item in self.labels]
        heard += [(event.label, event.score) for event in self.events]
        heard += [(also, 1.0) for event in self.events for also in event.also]
        return {"speech": max((score for label, score in heard if label in SPEECH_CLASSES), default=0.0)}

    def line_details(self) -> list[str]:
        details = [f"{self.duration_s:.1f} s"]
        if self.events:
            details.append("events: " + ", ".join(
                f"{event.label} {event.start_s:.1f}–{event.end_s:.1f} s" for event in self.events[:4])
                + (" …" if len(self.events) > 4 else ""))
        return details


DEFAULT_MODEL = "https://tfhub.dev/google/yamnet/1"


def _fetch_yamnet(dest: Path | None) -> Path:
    """`models fetch`: the TF Hub YAMNet into its cache, copied to ``dest`` if given."""
    import shutil

    hub = import_tensorflow_hub()
    cached = Path(hub.resolve(DEFAULT_MODEL))
    if dest is None:
        return cached
    shutil.copytree(cached, dest, dirs_exist_ok=True)
    return dest


def _check_local(path: Path) -> str | None:
    if path.is_file():
        return None if path.suffix == ".tflite" else "not a .tflite file"
    if (path / "yamnet.tflite").is_file() or (path / "saved_model.pb").is_file():
        return None
    return "neither yamnet.tflite nor a SavedModel (saved_model.pb) inside"


def _check_cached(value: str) -> ModelCheck | None:
    """A TF Hub handle: is it in TF Hub's module cache (TFHUB_CACHE_DIR or the temp dir)?"""
    import hashlib
    import tempfile

    if not value.startswith(("https://", "http://")):
        return None
    cache = Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")
    module = cache / hashlib.sha1(value.encode("utf8")).hexdigest()
    if (module / "saved_model.pb").is_file():
        return ModelCheck("ok", f"{value} in the TF Hub cache ({module})")
    return ModelCheck("warn", f"{value} is not in the TF Hub cache ({cache}); it will "
                              "download on first use",
                      "set TFHUB_CACHE_DIR to a lasting folder (the default is in the temp dir), or "
                      "ASSISTANT_AUDIO_MODEL to a local yamnet.tflite or SavedModel for offline use")


class AudioTool(Tool[AudioParams]):
    name = "audio"
    description = ("Tag the sounds of an audio clip, voice note or video (521 classes: speech, "
                   "music, animals, sirens, vehicles...) and when each is heard. "
                   "It does not transcribe speech.")
    Params = AudioParams
    kinds = frozenset({"audio", "voice", "video"})
    routes = frozenset({"audio", "voice"})
    model = ModelSpec("audio (YAMNet)", DEFAULT_MODEL, "ASSISTANT_AUDIO_MODEL", "yamnet",
                      _fetch_yamnet, _check_local, _check_cached)

    def __init__(self, source: ModelSource) -> None:
        super().__init__()
        self._source = source

    @classmethod
    def create(cls, config: ToolConfig) -> AudioTool:
        assert config.source is not None
        return cls(config.source)

    def source(self) -> str:
        return self._source.value

    def _load(self) -> _Yamnet:
        return load_yamnet(self._source)

    def run(self, params: AudioParams, ctx: ToolContext) -> AudioResult:
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        ctx.report(0.0, "Decoding audio")
        wave = decode_audio(path)
        duration = len(wave) / SAMPLE_RATE
        ctx.report(0.1, f"Tagging {duration:.0f} s of audio")
        scores = frame_scores(self._model, wave,
                              progress=lambda done: ctx.report(0.1 + 0.9 * done, "Tagging sounds"))
        names = self._model.class_names
        result = AudioResult(
            labels=sorted_labels(zip(names, scores.mean(axis=0)), params.top_k),
            duration_s=round(duration, 3),
            events=find_events(scores, names, duration),
        )
        ctx.report(1.0, "Done")
        return result


# --- the model ------------------------------------------------------------------------------

class _Yamnet:
    """A loaded YAMNet: ``class_names`` and ``scores(wave) -> [frames, classes]``."""

    class_names: list[str]

    def scores(self, wave: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _TFLiteYamnet(_Yamnet):
    """YAMNet as TensorFlow Lite, run by ai-edge-litert (no TensorFlow import); class names
    from a CSV beside it."""

    def __init__(self, model_path: Path, class_map: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.class_names = read_class_map(class_map.read_text(encoding="utf-8"))
        with native_stderr_silenced():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate"
            self._interpreter = Interpreter(model_path=str(model_path),
                                            num_threads=min(4, os.cpu_count() or 1))
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = [d for d in self._interpreter.get_output_details()
                   if d["shape_signature"][-1] == len(self.class_names)]
        if not outputs:
            raise ValueError(f"the model has no output of {len(self.class_names)} class scores")
        self._output = outputs[0]["index"]
        self._length = -1

    def scores(self, wave: np.ndarray) -> np.ndarray:
        if len(wave) != self._length:  # re-plan only when the length changes
            self._interpreter.resize_tensor_input(self._input, [len(wave)], strict=True)
            with native_stderr_silenced():  # the delegate logs again when re-planned
                self._interpreter.allocate_tensors()
            self._length = len(wave)
        self._interpreter.set_tensor(self._input, wave)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


class _SavedModelYamnet(_Yamnet):
    """YAMNet as a TF Hub handle or SavedModel directory; class names from its own asset."""

    def __init__(self, handle: str, timeout_s: float = DEFAULT_HUB_TIMEOUT_S) -> None:
        tf = import_tensorflow()
        hub = import_tensorflow_hub()

        # hub's downloader opens URLs without a timeout: bound each network wait so that
        # an unreachable hub fails in seconds, not minutes (a cached model needs no network).
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            self._model = hub.load(handle)
        finally:
            socket.setdefaulttimeout(previous)
        class_map = self._model.class_map_path().numpy().decode("utf-8")
        with tf.io.gfile.GFile(class_map) as file:
            self.class_names = read_class_map(file.read())

    def scores(self, wave: np.ndarray) -> np.ndarray:
        scores, _embeddings, _spectrogram = self._model(wave)
        return scores.numpy()


def load_yamnet(source: ModelSource) -> _Yamnet:
    """The YAMNet at ``source``, checked on one window of silence; :class:`ModelLoadError` if it cannot."""
    import numpy as np

    value = source.value.strip()
    path = Path(value).expanduser()

    def fail(reason: str) -> ModelLoadError:
        return ModelLoadError("audio", value, source.variable, reason)

    try:
        if path.is_file():
            if path.suffix.lower() != ".tflite":
                raise fail("expected a YAMNet .tflite file or a SavedModel directory")
            model: _Yamnet = _TFLiteYamnet(path, _class_map_beside(path, fail))
        elif path.is_dir():
            if (path / "yamnet.tflite").is_file():
                model = _TFLiteYamnet(path / "yamnet.tflite", _class_map_beside(path / "yamnet.tflite", fail))
            elif (path / "saved_model.pb").is_file():
                model = _SavedModelYamnet(str(path))
            else:
                raise fail("the directory holds neither yamnet.tflite nor a SavedModel (saved_model.pb)")
        elif "://" in value:
            model = _SavedModelYamnet(value)
        else:
            raise fail("no such file or directory")
        scores = model.scores(np.zeros(MIN_SAMPLES, np.float32))
    except ModelLoadError:
        raise
    except OSError as exc:
        if "://" in value:
            raise fail(f"the model hub could not be reached ({short_reason(exc)})") from None
        raise fail(short_reason(exc)) from None
    except Exception as exc:  # TF and TF Hub raise many kinds; the reason is what matters
        raise fail(short_reason(exc)) from None
    if scores.ndim != 2 or scores.shape != (1, len(model.class_names)):
        raise fail(f"unexpected output shape {tuple(scores.shape)} for {len(model.class_names)} classes")
    return model


def _class_map_beside(model_path: Path, fail: Callable[[str], ModelLoadError]) -> Path:
    class_map = model_path.with_name("yamnet_class_map.csv")
    if not class_map.is_file():
        raise fail(f"{class_map.name} (the class names) is missing beside {model_path.name}")
    return class_map


def read_class_map(text: str) -> list[str]:
    """Display names from YAMNet's ``index,mid,display_name`` CSV, in index order."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "display_name" not in rows[0]:
        raise ValueError("the class map has no display_name column")
    return [row["display_name"] for row in sorted(rows, key=lambda row: int(row["index"]))]


# --- inference and events -------------------------------------------------------------------

def frame_scores(model: _Yamnet, wave: np.ndarray, chunk_frames: int = CHUNK_FRAMES,
                 progress: Callable[[float], None] | None = None) -> np.ndarray:
    """YAMNet's per-frame scores ``[frames, classes]`` for the whole of ``wave``.

    Long audio goes through in chunks of ``chunk_frames`` frames whose inputs overlap by
    one window, so the frames are exactly those of a single call on the whole wave.
    A clip shorter than one window is padded with silence, so it still gets a frame.
    """
    import numpy as np

    if len(wave) < MIN_SAMPLES:
        wave = np.pad(wave, (0, MIN_SAMPLES - len(wave)))
    step = chunk_frames * _HOP_SAMPLES
    extra = MIN_SAMPLES - _HOP_SAMPLES
    starts = range(0, max(len(wave) - extra, 1), step)
    parts = []
    for number, start in enumerate(starts, 1):
        scores = model.scores(wave[start:start + step + extra])
        # YAMNet's own padding arithmetic may add a frame when the input ends exactly on a
        # hop; inside the wave that frame is the next chunk's first.
        parts.append(scores if number == len(starts) else scores[:chunk_frames])
        if progress is not None:
            progress(number / len(starts))
    return np.concatenate(parts)


def find_events(scores: np.ndarray, names: list[str], duration_s: float,
                threshold: float = EVENT_THRESHOLD, max_events: int = MAX_EVENTS) -> list[AudioEvent]:
    """Distinct sound events from per-frame scores, in order of time.

    For each class, runs of frames scoring at least ``threshold`` (one quieter frame
    inside a run is bridged) become spans. Spans covering nearly the same time
    (intersection over union >= 0.5) are one event, named after its most salient
    specific class ("Dog" rather than "Animal"). A short event inside a longer one of the same family (a piano phrase
    inside music, a synthesised voice inside speech) is folded into it; a bark inside
    speech stays its own event. The others' classes are listed in ``also`` (the strongest
    over the event's frames first). At most
    ``max_events`` events, the most salient ones, are kept.
    """
    import numpy as np

    spans: list[_Span] = []
    active = scores >= threshold
    for index in np.flatnonzero(active.any(axis=0)):
        if names[index] in _NOT_EVENTS:
            continue
        frames = np.flatnonzero(active[:, index])
        breaks = np.flatnonzero(np.diff(frames) > 2)  # a gap of one frame is bridged
        for first, last in zip(np.r_[frames[0], frames[breaks + 1]], np.r_[frames[breaks], frames[-1]]):
            peak = float(scores[first:last + 1, index].max())
            spans.append(_Span(int(index), names[index] not in _GENERIC, peak, int(first), int(last)))

    events: list[_Span] = []
    for span in sorted(spans, key=_Span.salience, reverse=True):
        same = next((event for event in events if span.iou(event) >= 0.5), None)
        if same is None:
            events.append(span)
        else:
            same.also.add(span.index)

    family = _families(names)
    kept: list[_Span] = []
    for event in sorted(events, key=lambda item: item.last - item.first):  # shortest first
        home = next((other for other in events if other is not event and other not in kept
                     and family[other.index] == family[event.index] and other.contains(event)), None)
        if home is None:
            kept.append(event)
        else:
            home.also |= {event.index, *event.also}

    kept = sorted(kept, key=_Span.salience, reverse=True)[:max_events]
    return [
        AudioEvent(label=names[event.index], score=round(event.peak, 4),
                   start_s=round(event.first * FRAME_HOP_S, 2),
                   end_s=round(min(event.last * FRAME_HOP_S + FRAME_WINDOW_S, duration_s), 2),
                   also=event.strongest_also(scores, names))
        for event in sorted(kept, key=lambda item: (item.first, -item.peak))
    ]


#: First classes of the AudioSet ontology's broad families, in the class map's order
#: (human sounds, animals, music, nature, vehicles, things at home, alarms, mechanisms
#: and impacts, ambiguous sounds and recording conditions).
_FAMILY_HEADS = ("Speech", "Animal", "Music", "Wind", "Vehicle", "Door", "Alarm", "Mechanisms", "Silence")


def _families(names: list[str]) -> list[int]:
    """For each class index, the number of the family it belongs to (by position in the map)."""
    heads = {name for name in _FAMILY_HEADS if name in names}
    families, current = [], 0
    for name in names:
        current += name in heads
        families.append(current)
    return families


@dataclass
class _Span:
    """A run of frames ``first..last`` (inclusive) where class ``index`` is heard."""

    index: int
    specific: bool
    peak: float
    first: int
    last: int
    also: set[int] = field(default_factory=set)

    def salience(self) -> tuple[bool, float]:
        return self.specific, self.peak

    def iou(self, other: _Span) -> float:
        inter = min(self.last, other.last) - max(self.first, other.first) + 1
        union = max(self.last, other.last) - min(self.first, other.first) + 1
        return max(inter, 0) / union

    def strongest_also(self, scores: np.ndarray, names: list[str]) -> list[str]:
        """The other classes of this event, specific ones first, then by mean score over
        its frames; at most MAX_ALSO."""
        frames = scores[self.first:self.last + 1]
        also = sorted(self.also - {self.index}, reverse=True,
                      key=lambda index: (names[index] not in _GENERIC, frames[:, index].mean()))
        return [names[index] for index in also[:MAX_ALSO]]

    def contains(self, other: _Span) -> bool:
        """Whether ``other`` lies (nearly) within this span, which is at least twice as long."""
        inside = min(self.last, other.last) - max(self.first, other.first) + 1
        length = other.last - other.first + 1
        return inside >= 0.8 * length and self.last - self.first + 1 >= 2 * length
