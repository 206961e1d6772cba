"""Settings, attachments, media sniffing and photo decoding: the shared plumbing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from assistant.config import ConfigError, Settings
from tools.base import ToolError
from tools.media import open_image, sniff_kind


def test_settings_defaults_and_models_dir() -> None:
    defaults = Settings.from_env({})
    assert defaults.model("ASSISTANT_SENTIMENT_MODEL").value == "blanchefort/rubert-base-cased-sentiment"
    assert defaults.ollama_host == "http://127.0.0.1:11434"
    assert defaults.llm_model == "llama3.1:8b"

    settings = Settings.from_env({"ASSISTANT_MODELS_DIR": "/m", "ASSISTANT_IMAGE_WEIGHTS": "/w.pth"})
    assert settings.model("ASSISTANT_AUDIO_MODEL").value == "/m/yamnet"
    assert settings.model("ASSISTANT_AUDIO_MODEL").variable == "ASSISTANT_MODELS_DIR"
    assert settings.model("ASSISTANT_DETECTION_MODEL").value == "/m/detr-resnet-50"
    assert settings.model("ASSISTANT_SENTIMENT_MODEL").value == "/m/sentiment"
    image = settings.model("ASSISTANT_IMAGE_WEIGHTS")
    assert (image.value, image.variable) == ("/w.pth", "ASSISTANT_IMAGE_WEIGHTS")  # its own wins


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://127.0.0.1:11434"),
                                       ("example.org:8080", "http://example.org:8080"),
                                       ("https://ollama.example.org/", "https://ollama.example.org:11434")])
def test_ollama_host_forms(host: str, url: str) -> None:
    assert Settings.from_env({"OLLAMA_HOST": host}).ollama_host == url


def test_bad_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ASSISTANT_VIDEO_MAX_FRAMES"):
        Settings.from_env({"ASSISTANT_VIDEO_MAX_FRAMES": "0"})
    with pytest.raises(ConfigError, match="ASSISTANT_LLM_TIMEOUT"):
        Settings.from_env({"ASSISTANT_LLM_TIMEOUT": "soon"})


@pytest.mark.parametrize("env", [
    {"ASSISTANT_MAX_FILE_MB": "nan"}, {"ASSISTANT_MAX_FILE_MB": "inf"}, {"ASSISTANT_LLM_TIMEOUT": "nan"},
    {"ASSISTANT_DETECTION_THRESHOLD": "5"}, {"ASSISTANT_DETECTION_THRESHOLD": "-0.1"},
    {"OLLAMA_HOST": "localhost:abc"}, {"OLLAMA_HOST": "http://[::1"}])
def test_bad_settings_name_variable_value_and_what_is_allowed(env: dict[str, str]) -> None:
    (variable, value), = env.items()
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.problems == [caught.value.problems[0]]
    assert f"{variable}={value!r}" in str(caught.value) and "allowed is" in str(caught.value)


def test_every_bad_setting_is_listed() -> None:
    _settings, problems = Settings.read({"ASSISTANT_MAX_FILE_MB": "nan", "OLLAMA_HOST": "h:abc",
                                         "ASSISTANT_DETECTION_THRESHOLD": "5"})
    assert [p.split("=")[0] for p in problems] == [
        "ASSISTANT_MAX_FILE_MB", "OLLAMA_HOST", "ASSISTANT_DETECTION_THRESHOLD"]
    assert "from 0 to 1" in problems[2]


def test_allowed_users_list() -> None:
    from adapters.telegram import TelegramSettings

    settings = TelegramSettings.from_env({"ASSISTANT_TELEGRAM_ALLOWED_USERS": "123, @alice;456"})
    assert settings.allowed_users == ("123", "@alice", "456")


@pytest.mark.parametrize("name, kind", [
    ("images/inet_zebra.jpg", "image"), ("audio/siren.m4a", "audio"), ("audio/voice_note_ru.oga", "audio"),
    ("audio/bird_robin.mp3", "audio"), ("audio/us8k_siren_102853-8-0-0.wav", "audio"),
    ("audio/librosa_piano_ragtime.ogg", "audio"), ("video/car_traffic_small.mp4", "video")])
def test_kind_is_sniffed_from_content(media: Path, tmp_path: Path, name: str, kind: str) -> None:
    disguised = tmp_path / "file.txt"  # the extension must not matter
    shutil.copy(media / name, disguised)
    assert sniff_kind(disguised) == kind


def test_utf8_text_is_text_and_garbage_a_document(tmp_path: Path) -> None:
    text = tmp_path / "a.jpg"
    text.write_text("not a photo — Отличный отзыв", encoding="utf-8")
    assert sniff_kind(text) == "text"
    garbage = tmp_path / "b.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    assert sniff_kind(garbage) == "document"


def test_attachment_store_ids_and_checks(media: Path, tmp_path: Path) -> None:
    store = AttachmentStore(max_bytes=1_000_000)
    photo = store.register(media / "images" / "inet_pizza.jpg")
    sound = store.register(media / "audio" / "siren.m4a", name="siren")
    assert (photo.id, photo.kind, sound.id, sound.kind) == ("att_1", "image", "att_2", "audio")
    assert store.path_of("att_1", {"image"}) == photo.path
    with pytest.raises(ToolError, match="siren \\(att_2\\) is an audio file; this tool needs an image"):
        store.path_of("att_2", {"image"})
    with pytest.raises(ToolError, match="Unknown attachment id 'att_9'.*att_1, att_2"):
        store.path_of("att_9", {"image"})
    with pytest.raises(ToolError, match="Unknown attachment id '/etc/passwd'"):
        store.path_of("/etc/passwd", set())
    with pytest.raises(ToolError, match="too large"):
        store.register(media / "images" / "street_scooters.jpg")
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(ToolError, match="empty"):
        store.register(empty)
    with pytest.raises(ToolError, match="no such file"):
        store.register(tmp_path / "missing.jpg")
    assert AttachmentStore().register(media / "images" / "inet_pizza.jpg").id == "att_1"  # per conversation


def _exif_rotated(src: Path, dst: Path) -> None:
    from PIL import Image

    image = Image.open(src)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    image.transpose(Image.Transpose.ROTATE_90).save(dst, exif=exif)


def test_open_image_modes(media: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    src = media / "images" / "inet_zebra.jpg"
    upright = open_image(src)
    rotated = tmp_path / "rotated.jpg"
    _exif_rotated(src, rotated)
    assert open_image(rotated).size == upright.size

    gray16 = np.asarray(upright.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    decoded = np.asarray(open_image(tmp_path / "g16.png"))
    assert decoded.shape[2] == 3
    assert abs(int(decoded[..., 0].mean()) - int(np.asarray(upright.convert("L")).mean())) <= 1

    rgba = upright.convert("RGBA")
    rgba.putalpha(0)
    assert open_image_save(rgba, tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)
    for mode in ("L", "P", "CMYK", "1"):
        suffix = ".tif" if mode == "CMYK" else ".png"
        assert open_image_save(upright.convert(mode), tmp_path / f"m{mode}{suffix}").mode == "RGB"


def open_image_save(image, path: Path):
    image.save(path)
    return open_image(path)


def test_open_image_refuses_bombs_and_damage(media: Path, tmp_path: Path) -> None:
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (30_000, 30_000)).save(bomb)
    with pytest.raises(ToolError, match="too large to decode safely"):
        open_image(bomb)
    huge = tmp_path / "huge.png"
    Image.new("1", (11_000, 10_000)).save(huge)
    with pytest.raises(ToolError, match="11000×10000 pixels, more than the 100 megapixels"):
        open_image(huge)
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes((media / "images" / "inet_zebra.jpg").read_bytes()[:1500])
    with pytest.raises(ToolError, match="damaged or truncated"):
        open_image(truncated)
