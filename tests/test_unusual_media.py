"""Unusual and hostile media through `assistant analyze` and `assistant chat` (issue 18):
audio with many channels, videos of huge frames or lying headers, names with control
characters, and many annotated outputs in one conversation. All media are made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from tests.conftest import ROOT

RATE = 16_000


def assistant(*args: str, stdin: str | None = None, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistant", *args], input=stdin, text=True,
                          capture_output=True, cwd=cwd or ROOT, env={**os.environ, **(env or {})},
                          timeout=600)


def analyze_json(*paths: Path, tool: str | None = None) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """`assistant analyze --json`; annotated copies go to the first file's folder."""
    proc = assistant("analyze", "--json", "--output-dir", str(paths[0].parent),
                     *(["--tool", tool] if tool else []), *map(str, paths))
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def tone(seconds: float = 2.0, channels: int = 1) -> np.ndarray:
    """A 440 Hz tone, ``[channels, samples]``: the same signal in every channel."""
    t = np.arange(int(seconds * RATE)) / RATE
    return np.tile(0.3 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


def write_plain_wav(path: Path, channels: int) -> Path:
    """A WAVE_FORMAT_PCM file of ``channels`` channels: no channel mask, so no known layout."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((tone(channels=channels).T * 32767).astype("<i2").tobytes())
    return path


def encode_audio(path: Path, layout: str, codec: str = "pcm_s16le") -> Path:
    """The tone in every channel of ``layout`` (a WAV carries it as WAVE_FORMAT_EXTENSIBLE
    with a channel mask). Given as one packed frame: PyAV cannot fill planar frames of eight
    channels or more; the encoder converts to the format it takes."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE, layout=layout)
        channels = av.AudioLayout(layout).nb_channels
        frame = av.AudioFrame.from_ndarray(tone(channels=channels).T.reshape(1, -1),
                                           format="flt", layout=layout)
        frame.sample_rate = RATE
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


# -- audio with many channels -----------------------------------------------------------------

#: Layouts by name (with a channel mask) and plain channel counts (none): the 7.1 and the
#: 16-channel files crashed the process (SIGSEGV) before.
LAYOUTS = ["2.1", "quad", "5.1", "7.1", "7.1(wide)", "hexadecagonal", "22.2"]


def test_audio_of_every_channel_layout_is_mixed_down_and_analysed(models_env, tmp_path: Path) -> None:
    files = [encode_audio(tmp_path / f"{layout}.wav", layout) for layout in LAYOUTS]
    files += [write_plain_wav(tmp_path / f"plain-{count}.wav", count) for count in (3, 8, 12)]
    files += [encode_audio(tmp_path / "7.1.m4a", "7.1", "aac"),  # decoded to planar samples
              encode_audio(tmp_path / "7.1.flac", "7.1", "flac")]
    proc, rows = analyze_json(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert [row["input"] for row in rows] == [str(path) for path in files]
    for row in rows:  # YAMNet hears the same pure tone in each, whatever the channels
        assert row["tool"] == "audio" and row["labels"], row
        assert row["labels"][0]["label"] == rows[0]["labels"][0]["label"], row


def test_speech_on_eight_channel_audio_is_answered(models_env, tmp_path: Path) -> None:
    proc, rows = analyze_json(encode_audio(tmp_path / "7.1.wav", "7.1"), tool="speech")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert rows[0]["tool"] == "speech"


def test_more_channels_than_the_mixer_takes_are_refused_clearly(models_env, tmp_path: Path) -> None:
    proc, rows = analyze_json(write_plain_wav(tmp_path / "many.wav", 100))
    assert proc.returncode == 1
    assert "100 channels" in rows[0]["error"], rows


# -- videos of huge frames or a lying header ----------------------------------------------------

def encode_video(path: Path, width: int, height: int, frames: int, codec: str = "libx264") -> Path:
    """``frames`` flat grey frames, filled plane by plane (no RGB copy of a huge frame)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for index in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(16 + 7 * index) % 256]) * plane.buffer_size)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_video_of_huge_frames_is_refused_before_it_is_decoded(models_env, tmp_path: Path) -> None:
    """8448×4352 is just over the limit (8192×4352, the largest frame of H.264's levels); a
    433 KB file of three such frames took 1.9 GB to analyse, of 16000×16000 frames 6.3 GB."""
    from tools.media import MAX_VIDEO_PIXELS

    assert 8448 * 4352 > MAX_VIDEO_PIXELS
    huge = encode_video(tmp_path / "huge.mp4", 8448, 4352, 2)
    proc, rows = analyze_json(huge)
    assert proc.returncode == 1
    assert "8448×4352" in rows[0]["error"] and "megapixels" in rows[0]["error"], rows

    chat = assistant("chat", "--no-llm", stdin=f"/attach {huge}\nwhat is in it?\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "8448×4352" in chat.stdout + chat.stderr


def test_a_video_whose_header_claims_two_billion_frames_is_read(models_env, tmp_path: Path) -> None:
    """An AVI whose headers (avih and strh) say 2³¹ frames: what is there is sampled."""
    import struct

    honest = encode_video(tmp_path / "honest.avi", 160, 120, 30, codec="mpeg4")
    data = bytearray(honest.read_bytes())
    for chunk, offset in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, dwLength
        struct.pack_into("<I", data, data.index(chunk) + 8 + offset, 2 ** 31)
    lying = tmp_path / "lying.avi"
    lying.write_bytes(bytes(data))

    proc, rows = analyze_json(honest, lying)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert rows[1]["frames_sampled"] == rows[0]["frames_sampled"] == 3, rows
    assert rows[1]["duration_s"] == rows[0]["duration_s"] == 3.0, rows


# -- names with control characters --------------------------------------------------------------

#: Clears the screen and turns the text red, on a terminal that is sent it raw.
ESCAPES = "\x1b[2J\x1b[31m"


def test_names_with_a_newline_or_escape_codes_are_shown_escaped_by_analyze(
        models_env, media: Path, tmp_path: Path) -> None:
    photo = tmp_path / "two\nlines.jpg"
    photo.write_bytes((media / "images" / "inet_zebra.jpg").read_bytes())
    empty = tmp_path / f"{ESCAPES}red.wav"
    empty.write_bytes(b"")
    proc = assistant("analyze", "--output-dir", str(tmp_path), str(photo), str(empty))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout
    blocks = proc.stdout.strip().split("\n\n")
    assert len(blocks) == 2, proc.stdout
    assert blocks[0].splitlines()[0] == str(tmp_path / "two\\nlines.jpg")
    assert blocks[1].splitlines() == [str(tmp_path / "\\x1b[2J\\x1b[31mred.wav"),
                                      "  error: \\x1b[2J\\x1b[31mred.wav: the file is empty."]


def test_names_with_escape_codes_are_shown_escaped_by_the_repl(models_env, media: Path,
                                                               tmp_path: Path) -> None:
    photo = tmp_path / f"{ESCAPES}zebra.jpg"
    photo.write_bytes((media / "images" / "inet_zebra.jpg").read_bytes())
    empty = tmp_path / f"{ESCAPES}empty.jpg"
    empty.write_bytes(b"")
    proc = assistant("chat", "--no-llm", stdin=f"/attach {photo}\nwhat is it?\n{photo}\n/attach {empty}\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout + proc.stderr
    assert "Attached att_1 (image, \\x1b[2J\\x1b[31mzebra.jpg)" in proc.stderr
    assert "\\x1b[2J\\x1b[31mempty.jpg: the file is empty." in proc.stderr


# -- annotated outputs --------------------------------------------------------------------------

def saved_paths(output: str) -> list[Path]:
    return [Path(line.removeprefix("saved: ")) for line in output.splitlines() if line.startswith("saved: ")]


def test_annotated_outputs_are_kept_apart_per_attachment_and_go_with_reset(
        models_env, media: Path, tmp_path: Path) -> None:
    """Photos and videos of the same name from different folders (a phone's IMG_0001.jpg
    again and again) each keep their own annotated copy; /reset deletes them all."""
    lines = []
    for index, photo in enumerate(["inet_zebra.jpg", "inet_goldfish.jpg", "street_scooters.jpg"]):
        folder = tmp_path / f"camera{index}"
        folder.mkdir()
        (folder / "IMG_0001.jpg").write_bytes((media / "images" / photo).read_bytes())
        lines += [f"/attach {folder / 'IMG_0001.jpg'}", "what objects are there?"]
    for index in range(2):
        folder = tmp_path / f"clips{index}"
        folder.mkdir()
        encode_video(folder / "clip.avi", 160, 120, 10 + index, codec="mpeg4")
        lines += [f"/attach {folder / 'clip.avi'}", "what is in this video?"]

    proc = assistant("chat", "--no-llm", "--conversation", "many", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = saved_paths(proc.stdout)
    assert len(saved) == 5 and len(set(saved)) == 5, proc.stdout
    assert all(path.is_file() for path in saved)
    photos = [path.read_bytes() for path in saved[:3]]
    assert len(set(photos)) == 3  # each its own picture, not the last one three times

    proc = assistant("chat", "--no-llm", "--conversation", "many", stdin="/reset\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(path.exists() for path in saved)
