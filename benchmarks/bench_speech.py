"""Speech tool speed: our warm faster-whisper (real Whisper base weights from
../shared/models/whisper-base, int8 on the CPU) against the plain library path in the same run.

Clips: the 14 s English LibriSpeech recording, and a 60 s clip made by joining it with itself
and the Russian sentence (PyAV, no ffmpeg binary needed), as 16 kHz WAV files.
- ours: attachment id to result (decode, VAD, transcribe, clean), the model kept warm;
- peer: ``WhisperModel`` kept warm, ``transcribe(path)`` with the library's defaults (no VAD,
  text conditioned on the previous window, beam 5), segments read to the end;
- per call: a fresh ``WhisperModel`` for every clip (how a script that loads per request does it).
Results are JSON lines; ``s_per_speech_s`` is processing seconds per second of audio
(the target: at most 0.3 for clips of 10 s or more).

    .venv/bin/python benchmarks/bench_speech.py [--repeat N]
"""

from __future__ import annotations

from pathlib import Path

from common import MEDIA, SHARED, emit, median_ms, repeat_arg, scratch_dir, timed, write_wav

WHISPER = SHARED / "models" / "whisper-base"
ENGLISH = MEDIA / "audio" / "librosa_speech_en_female_198-209-0000.ogg"
RUSSIAN = MEDIA / "audio" / "speech_ru_simple_asr_test_ru.wav"


def main() -> None:
    repeat = repeat_arg(__doc__, default=3)

    import numpy as np

    from assistant.attachments import AttachmentStore
    from tools.base import ModelSource, ToolContext
    from tools.media import SAMPLE_RATE, decode_audio
    from tools.speech import SpeechTool

    scratch = scratch_dir("speech")
    english, russian = decode_audio(ENGLISH), decode_audio(RUSSIAN)
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    joined = [english, pause, english, pause, russian, pause]
    while sum(map(len, joined)) < 60 * SAMPLE_RATE:
        joined += [english, pause]
    long_wave = np.concatenate(joined)[:60 * SAMPLE_RATE]
    clips = {"14s": write_wav(scratch / "en_14s.wav", english, SAMPLE_RATE),
             "60s": write_wav(scratch / "mixed_60s.wav", long_wave, SAMPLE_RATE)}
    seconds = {"14s": len(english) / SAMPLE_RATE, "60s": len(long_wave) / SAMPLE_RATE}

    tool = SpeechTool(ModelSource(str(WHISPER), "ASSISTANT_SPEECH_MODEL"), device="cpu")
    _, load_s = timed(tool.ensure_loaded)
    store = AttachmentStore()
    ids = {name: store.register(path).id for name, path in clips.items()}
    ctx = ToolContext(store, scratch)
    ours = {name: median_ms(lambda: tool.call({"attachment_id": ids[name]}, ctx), repeat=repeat)
            for name in clips}
    emit("speech", path="ours (VAD, cleaned, warm)", load_s=load_s,
         **{f"e2e_{name}_ms": ms for name, ms in ours.items()},
         **{f"s_per_speech_s_{name}": ms / 1000 / seconds[name] for name, ms in ours.items()})

    from faster_whisper import WhisperModel

    warm, peer_load_s = timed(lambda: WhisperModel(str(WHISPER), device="cpu", compute_type="int8"))

    def plain(model: WhisperModel, path: Path) -> str:
        segments, _info = model.transcribe(str(path))
        return " ".join(segment.text for segment in segments)

    peer = {name: median_ms(lambda: plain(warm, path), repeat=repeat) for name, path in clips.items()}
    emit("speech", path="peer (WhisperModel kept, transcribe defaults)", load_s=peer_load_s,
         **{f"e2e_{name}_ms": ms for name, ms in peer.items()},
         **{f"s_per_speech_s_{name}": ms / 1000 / seconds[name] for name, ms in peer.items()},
         **{f"ratio_peer_over_ours_{name}": peer[name] / ours[name] for name in clips})

    fresh = {name: median_ms(lambda: plain(WhisperModel(str(WHISPER), device="cpu", compute_type="int8"),
                                           path), repeat=repeat, warmup=0)
             for name, path in clips.items()}
    emit("speech", path="per call (fresh WhisperModel)",
         **{f"e2e_{name}_ms": ms for name, ms in fresh.items()},
         **{f"s_per_speech_s_{name}": ms / 1000 / seconds[name] for name, ms in fresh.items()})


if __name__ == "__main__":
    main()
