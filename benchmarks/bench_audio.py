"""Audio tool speed: our warm YAMNet (TFLite, real weights from ../shared/models/yamnet)
against the plain LiteRT (TF Lite) example path, which builds an interpreter per call.

Clips: 10 s of the ragtime piano as a 16 kHz WAV, and the whole 71 s OGG Vorbis piano.
End to end = attachment id to result (decode, resample, frames, labels, events).
Model load includes importing ai-edge-litert (TensorFlow is never imported). Results are JSON lines.

    .venv/bin/python benchmarks/bench_audio.py [--repeat N]
"""

from __future__ import annotations


from common import MEDIA, SHARED, emit, median_ms, repeat_arg, scratch_dir, timed, write_wav

YAMNET = SHARED / "models" / "yamnet"
PIANO = MEDIA / "audio" / "librosa_piano_ragtime.ogg"


def main() -> None:
    repeat = repeat_arg(__doc__, default=20)

    from assistant.attachments import AttachmentStore
    from tools.audio import AudioTool, frame_scores, read_class_map
    from tools.base import ModelSource, ToolContext
    from tools.media import SAMPLE_RATE, decode_audio

    scratch = scratch_dir("audio")
    tool = AudioTool(ModelSource(str(YAMNET), "ASSISTANT_AUDIO_MODEL"))
    _, load_s = timed(tool.ensure_loaded)

    piano = decode_audio(PIANO)
    ten_seconds = piano[:10 * SAMPLE_RATE]
    clip = write_wav(scratch / "piano_10s.wav", ten_seconds, SAMPLE_RATE)
    store = AttachmentStore()
    clip_id, piano_id = store.register(clip).id, store.register(PIANO).id
    ctx = ToolContext(store, scratch)

    infer_10s_ms = median_ms(lambda: frame_scores(tool._model, ten_seconds), repeat=repeat, warmup=2)
    e2e_10s_ms = median_ms(lambda: tool.call({"attachment_id": clip_id}, ctx), repeat=repeat, warmup=2)
    decode_10s_ms = median_ms(lambda: decode_audio(clip), repeat=repeat)
    decode_piano_ms = median_ms(lambda: decode_audio(PIANO), repeat=5)
    piano_ms = median_ms(lambda: tool.call({"attachment_id": piano_id}, ctx), repeat=5)
    piano_s = len(piano) / SAMPLE_RATE
    emit("audio", path="ours", load_s=load_s, infer_per_10s_ms=infer_10s_ms,
         e2e_per_10s_wav_ms=e2e_10s_ms, decode_10s_wav_ms=decode_10s_ms,
         decode_71s_ogg_ms=decode_piano_ms, e2e_71s_ogg_ms=piano_ms,
         audio_s_per_s=piano_s / (piano_ms / 1000))

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    def naive(waveform: np.ndarray) -> str:
        """The TF Lite YAMNet example: a fresh interpreter and class map for every clip."""
        interpreter = Interpreter(model_path=str(YAMNET / "yamnet.tflite"))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [len(waveform)], strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, waveform)
        interpreter.invoke()
        scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        names = read_class_map((YAMNET / "yamnet_class_map.csv").read_text())
        return names[int(scores.mean(axis=0).argmax())]

    naive_10s_ms = median_ms(lambda: naive(ten_seconds), repeat=repeat, warmup=1)
    naive_e2e_10s_ms = median_ms(lambda: naive(decode_audio(clip)), repeat=repeat, warmup=1)
    naive_piano_ms = median_ms(lambda: naive(decode_audio(PIANO)), repeat=5)
    emit("audio", path="naive (interpreter per call)", infer_per_10s_ms=naive_10s_ms,
         e2e_per_10s_wav_ms=naive_e2e_10s_ms, e2e_71s_ogg_ms=naive_piano_ms,
         audio_s_per_s=piano_s / (naive_piano_ms / 1000),
         ratio_naive_over_ours_10s=naive_e2e_10s_ms / e2e_10s_ms,
         ratio_naive_over_ours_71s=naive_piano_ms / piano_ms)


if __name__ == "__main__":
    main()
