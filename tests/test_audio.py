"""The audio tool on the real YAMNet (TFLite, ../shared/models/yamnet) and real recordings."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from assistant.attachments import AttachmentStore
from tools.audio import AudioResult, AudioTool, frame_scores, load_yamnet
from tools.base import ModelLoadError, ModelSource, ToolContext, ToolError, import_tensorflow
from tools.media import SAMPLE_RATE, decode_audio

AUDIO = "audio"
SIREN = {"Siren", "Emergency vehicle", "Civil defense siren", "Police car (siren)",
         "Ambulance (siren)", "Fire engine, fire truck (siren)"}
BIRD = {"Bird", "Bird vocalization, bird call, bird song", "Chirp, tweet"}
DOG = {"Dog", "Bark", "Bow-wow", "Yip"}


@pytest.fixture(scope="module")
def tool(shared_models: Path) -> AudioTool:
    tool = AudioTool(ModelSource(str(shared_models / "yamnet"), "ASSISTANT_MODELS_DIR"))
    tool.ensure_loaded()
    return tool


def analyse(tool: AudioTool, path: Path, tmp_path: Path, kind: str | None = None,
            progress=None, **arguments) -> AudioResult:
    store = AttachmentStore()
    attachment = store.register(path, kind=kind)
    result = tool.call({"attachment_id": attachment.id, **arguments},
                       ToolContext(store, tmp_path, progress))
    assert isinstance(result, AudioResult)
    return result


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV of ``samples`` ([n] mono or [n, channels]) in [-1, 1], stdlib only."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def encode(path: Path, samples: np.ndarray, rate: int, codec: str, with_video: bool = False) -> Path:
    """``samples`` (mono) encoded with PyAV as ``codec``, optionally beside a black video track."""
    import av

    with av.open(str(path), "w") as out:
        video = None
        if with_video:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        if video is not None:
            black = np.zeros((64, 64, 3), np.uint8)
            for _ in range(int(len(samples) / rate * 10)):
                out.mux(video.encode(av.VideoFrame.from_ndarray(black, format="rgb24")))
            out.mux(video.encode(None))
    return path


# --- real behaviour ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["librosa_speech_en_female_198-209-0000.ogg",
                                  "speech_ru_simple_asr_test_ru.wav", "voice_note_ru.oga"])
def test_speech_is_tagged_speech(tool, media, tmp_path, name):
    result = analyse(tool, media / AUDIO / name, tmp_path)
    assert result.labels[0].label == "Speech" and result.labels[0].score > 0.8
    speech = [event for event in result.events if event.label == "Speech"]
    assert speech and speech[0].end_s - speech[0].start_s > 0.8 * result.duration_s
    assert "Speech" in result.summary()


@pytest.mark.parametrize("name", ["us8k_siren_102853-8-0-0.wav", "siren.m4a"])
def test_siren(tool, media, tmp_path, name):
    result = analyse(tool, media / AUDIO / name, tmp_path)
    assert result.labels[0].label in SIREN and result.labels[0].score > 0.5
    assert "Siren" in [item.label for item in result.labels]
    assert abs(result.duration_s - 4.0) < 0.05


@pytest.mark.parametrize("name", ["librosa_bird_robin.ogg", "bird_robin.mp3"])
def test_bird(tool, media, tmp_path, name):
    result = analyse(tool, media / AUDIO / name, tmp_path)
    assert result.labels[0].label in BIRD and result.labels[0].score > 0.5
    assert result.events and result.events[0].label in BIRD


def test_short_clip_is_padded_to_one_frame(tool, media, tmp_path):
    result = analyse(tool, media / AUDIO / "us8k_dog_bark_100032-3-0-0.wav", tmp_path)
    assert result.duration_s == pytest.approx(0.3176, abs=1e-3)
    assert result.labels[0].label in DOG | {"Domestic animals, pets", "Animal"}
    assert any(item.label in DOG for item in result.labels)
    assert result.events[0].label in DOG and result.events[0].end_s == pytest.approx(result.duration_s, abs=0.01)


@pytest.mark.parametrize("original, variant", [
    ("us8k_siren_102853-8-0-0.wav", "siren.m4a"),
    ("librosa_bird_robin.ogg", "bird_robin.mp3"),
    ("speech_ru_simple_asr_test_ru.wav", "voice_note_ru.oga"),
])
def test_format_variants_agree(tool, media, tmp_path, original, variant):
    first = analyse(tool, media / AUDIO / original, tmp_path, top_k=20)
    second = analyse(tool, media / AUDIO / variant, tmp_path, top_k=20)
    assert first.labels[0].label == second.labels[0].label
    scores = {item.label: item.score for item in second.labels}
    for item in first.labels[:3]:
        assert abs(item.score - scores.get(item.label, 0.0)) < 0.1, item.label


def test_short_bark_in_long_quiet_recording_is_an_event(tool, media, tmp_path):
    bark = decode_audio(media / AUDIO / "us8k_dog_bark_100032-3-0-0.wav")
    quiet = np.random.default_rng(0).normal(0, 0.002, 20 * SAMPLE_RATE).astype(np.float32)
    at = 12 * SAMPLE_RATE
    quiet[at:at + len(bark)] += bark
    result = analyse(tool, write_wav(tmp_path / "quiet_bark.wav", quiet, SAMPLE_RATE), tmp_path, top_k=20)

    dogs = [event for event in result.events if event.label in DOG or DOG & set(event.also)]
    assert len(dogs) == 1, result.events
    assert dogs[0].start_s <= 12.0 and dogs[0].end_s >= 12.3 and dogs[0].end_s - dogs[0].start_s < 3
    assert dogs[0].score > 0.5
    # ...whereas the clip average all but loses it.
    average = {item.label: item.score for item in result.labels}
    assert average.get(dogs[0].label, 0.0) < 0.2
    assert f"{dogs[0].label} at {dogs[0].start_s:.1f}–{dogs[0].end_s:.1f} s" in result.summary()


def test_long_audio_reports_progress_and_chunks_match_one_call(tool, media, tmp_path):
    reports: list[tuple[float, str]] = []
    result = analyse(tool, media / AUDIO / "librosa_piano_ragtime.ogg", tmp_path,
                     progress=lambda fraction, message: reports.append((fraction, message)))
    assert result.labels[0].label == "Music" and result.duration_s == pytest.approx(70.77, abs=0.05)
    fractions = [fraction for fraction, _ in reports]
    assert len(fractions) >= 4 and fractions == sorted(fractions) and fractions[-1] == 1.0

    wave_ = decode_audio(media / AUDIO / "librosa_piano_ragtime.ogg")[:30 * SAMPLE_RATE + 1234]
    whole = frame_scores(tool._model, wave_, chunk_frames=1000)
    chunked = frame_scores(tool._model, wave_, chunk_frames=7)
    assert whole.shape == chunked.shape == (1 + int(np.ceil((len(wave_) - 15_600) / 7_680)), 521)
    # Dynamic-range quantisation scales activations per call, so not bit-exact.
    assert np.abs(whole - chunked).max() < 0.05


def test_sound_track_of_a_video(tool, media, tmp_path):
    siren = decode_audio(media / AUDIO / "us8k_siren_102853-8-0-0.wav")
    video = encode(tmp_path / "siren.mp4", siren, SAMPLE_RATE, "aac", with_video=True)
    result = analyse(tool, video, tmp_path)
    assert result.labels[0].label in SIREN

    with pytest.raises(ToolError, match="no sound track"):
        analyse(tool, media / "video" / "car_traffic_small.mp4", tmp_path)


# --- decoding ---------------------------------------------------------------------------------

def test_resampling_to_16k_mono(tmp_path):
    rate, seconds = 44_100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    sine = 0.5 * np.sin(2 * np.pi * 1000 * t)
    path = write_wav(tmp_path / "sine.wav", np.stack([sine, sine], axis=1), rate)

    decoded = decode_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - 2 * SAMPLE_RATE) <= 16
    middle = decoded[1000:-1000]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)  # averaged, not summed
    spectrum = np.abs(np.fft.rfft(middle)) ** 2
    freqs = np.fft.rfftfreq(len(middle), 1 / SAMPLE_RATE)
    assert freqs[spectrum.argmax()] == pytest.approx(1000, abs=2)
    assert spectrum[np.abs(freqs - 1000) < 20].sum() > 0.99 * spectrum.sum()


@pytest.mark.parametrize("codec, suffix", [("flac", "flac"), ("libopus", "opus"), ("libmp3lame", "mp3")])
def test_decodes_other_codecs(tmp_path, codec, suffix):
    rate = 48_000 if codec == "libopus" else 22_050
    t = np.arange(rate * 2) / rate
    path = encode(tmp_path / f"tone.{suffix}", 0.3 * np.sin(2 * np.pi * 440 * t), rate, codec)
    decoded = decode_audio(path)
    assert abs(len(decoded) / SAMPLE_RATE - 2.0) < 0.1
    spectrum = np.abs(np.fft.rfft(decoded[2000:-2000]))
    assert np.fft.rfftfreq(len(decoded) - 4000, 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(440, abs=3)


# --- bad inputs -------------------------------------------------------------------------------

def test_empty_file(tool, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ToolError, match="empty"):
        AttachmentStore().register(empty)
    with pytest.raises(ToolError, match="empty.wav"):
        decode_audio(empty)


@pytest.mark.parametrize("name, keep", [("siren.m4a", 0.5), ("librosa_speech_en_female_198-209-0000.ogg", 200),
                                        ("us8k_siren_102853-8-0-0.wav", 200)])
def test_truncated_file(tool, media, tmp_path, name, keep):
    data = (media / AUDIO / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ToolError, match="truncated") as error:
        analyse(tool, cut, tmp_path, kind="audio")
    assert error.value.__cause__ is None and name in str(error.value)


def test_text_file_named_wav(tool, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not a recording\n" * 20)
    with pytest.raises(ToolError, match="text file.*audio"):
        analyse(tool, fake, tmp_path)
    with pytest.raises(ToolError, match="notes.wav: not an audio format"):
        decode_audio(fake)


def test_photo_is_refused(tool, media, tmp_path):
    with pytest.raises(ToolError, match="image.*audio"):
        analyse(tool, media / "images" / "inet_zebra.jpg", tmp_path)
    with pytest.raises(ToolError, match="no sound track"):
        decode_audio(media / "images" / "inet_zebra.jpg")


def test_too_long_and_bad_arguments(tool, media, tmp_path):
    with pytest.raises(ToolError, match="longer than 2 s"):
        decode_audio(media / AUDIO / "us8k_siren_102853-8-0-0.wav", max_seconds=2)
    for top_k in (0, 21):
        with pytest.raises(ToolError, match="top_k"):
            analyse(tool, media / AUDIO / "siren.m4a", tmp_path, top_k=top_k)


# --- the model setting ------------------------------------------------------------------------

def test_tflite_file_and_directory(shared_models):
    for value in (shared_models / "yamnet" / "yamnet.tflite", shared_models / "yamnet"):
        model = load_yamnet(ModelSource(str(value), "ASSISTANT_AUDIO_MODEL"))
        assert len(model.class_names) == 521 and model.class_names[0] == "Speech"


@pytest.mark.parametrize("setup, reason", [
    ("missing", "no such file"),
    ("empty_dir", "neither yamnet.tflite nor a SavedModel"),
    ("no_class_map", "yamnet_class_map.csv"),
    ("garbage", "not a valid Flatbuffer"),
    ("not_tflite", "expected a YAMNet .tflite file"),
    ("unreachable_hub", "could not be reached"),
])
def test_model_load_errors(shared_models, tmp_path, setup, reason):
    real = shared_models / "yamnet" / "yamnet.tflite"
    value = {
        "missing": tmp_path / "nowhere" / "yamnet.tflite",
        "empty_dir": tmp_path,
        "no_class_map": tmp_path / "yamnet.tflite",
        "garbage": tmp_path / "bad" / "yamnet.tflite",
        "not_tflite": tmp_path / "yamnet.onnx",
        "unreachable_hub": "https://tfhub.invalid/google/yamnet/1",
    }[setup]
    if setup == "no_class_map":
        (tmp_path / "yamnet.tflite").symlink_to(real)
    elif setup == "garbage":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "yamnet.tflite").write_bytes(b"not a flatbuffer" * 10)
        (tmp_path / "bad" / "yamnet_class_map.csv").write_text("index,mid,display_name\n0,/m/x,Speech\n")
    elif setup == "not_tflite":
        (tmp_path / "yamnet.onnx").write_bytes(b"onnx")
    with pytest.raises(ModelLoadError) as error:
        load_yamnet(ModelSource(str(value), "ASSISTANT_AUDIO_MODEL"))
    message = str(error.value)
    assert "ASSISTANT_AUDIO_MODEL" in message and "audio model" in message and str(value) in message
    assert reason in error.value.reason and "Traceback" not in message
    assert error.value.__cause__ is None and error.value.variable == "ASSISTANT_AUDIO_MODEL"


def test_savedmodel_directory(tmp_path, shared_models):
    """The SavedModel / TF Hub path (hub.load), on a tiny stand-in with YAMNet's interface."""
    tf = import_tensorflow()

    class_map = tmp_path / "yamnet_class_map.csv"
    class_map.write_text("index,mid,display_name\n0,/m/a,Speech\n1,/m/b,Dog\n2,/m/c,\"Inside, small room\"\n")

    class TinyYamnet(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.class_map = tf.saved_model.Asset(str(class_map))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, waveform):
            frames = 1 + tf.maximum(0, (tf.shape(waveform)[0] - 15_600 + 7_679) // 7_680)
            scores = tf.tile(tf.constant([[0.1, 0.9, 0.4]]), [frames, 1])
            return scores, tf.zeros([frames, 1024]), tf.zeros([frames * 48, 64])

        @tf.function(input_signature=[])
        def class_map_path(self):
            return self.class_map.asset_path

    saved = tmp_path / "saved"
    tf.saved_model.save(TinyYamnet(), str(saved))
    class_map.unlink()  # the model must read its own copy of the asset
    tool = AudioTool(ModelSource(str(saved), "ASSISTANT_AUDIO_MODEL"))
    store = AttachmentStore()
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    clip = store.register(write_wav(tmp_path / "tone.wav", 0.2 * np.sin(2 * np.pi * 300 * t), SAMPLE_RATE))
    result = tool.call({"attachment_id": clip.id, "top_k": 2}, ToolContext(store, tmp_path))
    assert [item.label for item in result.labels] == ["Dog", "Inside, small room"]
    assert result.events[0].label == "Dog" and result.events[0].also == ["Inside, small room"]


def test_import_is_cheap():
    code = ("import sys, tools.audio; heavy = {'tensorflow', 'tensorflow_hub', 'av', 'numpy'} & set(sys.modules);"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_tensorflow_and_its_hub_import_quietly():
    """TensorFlow and tensorflow-hub (a SavedModel YAMNet, `models fetch`) print nothing:
    no absl, cudart_stub or pkg_resources lines."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP")}
    code = "from tools.base import import_tensorflow_hub; import_tensorflow_hub()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""


def test_cli_analyze_is_quiet_and_never_imports_tensorflow(shared_models, media):
    """The .tflite YAMNet runs on ai-edge-litert: no TensorFlow, and nothing on stderr
    (no absl, oneDNN, cudart_stub or XNNPACK lines) — only the product's own output."""
    root = Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ASSISTANT_", "TF_CPP"))}
    env["ASSISTANT_MODELS_DIR"] = str(shared_models)
    code = ("import sys; from cli.main import main; code = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "analyze",
                           str(media / AUDIO / "us8k_siren_102853-8-0-0.wav")],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Emergency vehicle" in proc.stdout or "Siren" in proc.stdout
    assert proc.stderr == ""
