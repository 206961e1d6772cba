"""The image tool: equivalence with torchvision's reference pipeline, awkward images,
bad inputs and the model setting. Weights are a random-weight ResNet18 state dict."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from tests.model_builders import build_resnet18
from tools.base import ModelLoadError, ModelSource, ToolContext, ToolError
from tools.image import ImageResult, ImageTool

VARIABLE = "ASSISTANT_IMAGE_WEIGHTS"


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_resnet18(tmp_path_factory.mktemp("resnet18") / "resnet18.pth")


@pytest.fixture(scope="session")
def tool(weights_file: Path) -> ImageTool:
    image_tool = ImageTool(ModelSource(str(weights_file), VARIABLE), device="cpu")
    image_tool.ensure_loaded()
    return image_tool


@pytest.fixture(scope="session")
def reference(weights_file: Path):
    """The plain torchvision path: ``ResNet18_Weights.IMAGENET1K_V1.transforms()`` + the model.

    Returns ``classify(pil_image) -> [(category, probability)] * 5``.
    """
    import torch
    import torchvision
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(weights_file, weights_only=True))
    model.eval()
    preprocess, categories = weights.transforms(), weights.meta["categories"]

    def classify(image) -> list[tuple[str, float]]:
        with torch.inference_mode():
            probabilities = model(preprocess(image).unsqueeze(0))[0].softmax(0)
        scores, indices = probabilities.topk(5)
        return [(categories[i], s) for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]

    return classify


def classify(tool: ImageTool, path: Path, tmp_path: Path, kind: str | None = None,
             **arguments: object) -> ImageResult:
    store = AttachmentStore()
    attachment = store.register(path, kind=kind)
    result = tool.call({"attachment_id": attachment.id, **arguments}, ToolContext(store, tmp_path))
    assert isinstance(result, ImageResult)
    return result


def assert_same_top5(result: ImageResult, expected: list[tuple[str, float]], atol: float = 1e-4) -> None:
    assert [item.label for item in result.labels] == [name for name, _ in expected]
    for item, (_, score) in zip(result.labels, expected, strict=True):
        assert item.score == pytest.approx(score, abs=atol)


def photos(media: Path) -> list[Path]:
    return sorted((media / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def zebra(media: Path) -> Path:
    return media / "images" / "inet_zebra.jpg"


# --- equivalence with the reference pipeline -------------------------------------------

def test_same_top5_as_reference_on_every_real_photo(tool, reference, media, tmp_path):
    from PIL import Image

    checked = 0
    for path in photos(media):
        with Image.open(path) as image:
            size = image.size
            expected = reference(image.convert("RGB"))
        result = classify(tool, path, tmp_path)
        assert (result.width, result.height) == size
        if min(size) >= 4 * 256:
            # A 12 MP JPEG is decoded at reduced scale (DCT scaling) before the same resize
            # to 256: same classes, probabilities within a few 1e-4 of the full decode.
            assert {item.label for item in result.labels} == {name for name, _ in expected}
            assert result.labels[0].label == expected[0][0]
            for item, score in zip(result.labels, sorted((s for _, s in expected), reverse=True)):
                assert item.score == pytest.approx(score, abs=1e-3)
        else:
            assert_same_top5(result, expected)
        checked += 1
    assert checked >= 7


def test_json_has_five_labels_sorted_by_score(tool, zebra, tmp_path):
    data = classify(tool, zebra, tmp_path).to_json()
    assert data["tool"] == "image"
    assert (data["width"], data["height"]) == (500, 375)
    scores = [item["score"] for item in data["labels"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)
    assert all(isinstance(item["label"], str) and item["label"] for item in data["labels"])


def test_top_k_and_summary(tool, zebra, tmp_path):
    result = classify(tool, zebra, tmp_path, top_k=3)
    assert len(result.labels) == 3
    assert result.summary().startswith(f"The photo (500×375) most likely shows {result.labels[0].label} (")
    with pytest.raises(ToolError, match="top_k"):
        classify(tool, zebra, tmp_path, top_k=0)


# --- awkward but valid images -------------------------------------------------------------

def test_exif_orientation_is_applied(tool, reference, zebra, tmp_path):
    from PIL import ExifTags, Image

    upright = Image.open(zebra).convert("RGB")
    # Orientation 6: the pixels are stored turned 90° counter-clockwise; viewers turn them back.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    rotated = tmp_path / "rotated.jpg"
    stored.save(rotated, quality=95, exif=exif.tobytes())

    result = classify(tool, rotated, tmp_path)
    assert (result.width, result.height) == upright.size == (500, 375)
    as_seen = Image.open(rotated).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert_same_top5(result, reference(as_seen))
    # Ignoring the tag would have classified the sideways pixels: a different answer.
    sideways = reference(Image.open(rotated).convert("RGB"))
    assert [(i.label, round(i.score, 3)) for i in result.labels] != [(n, round(s, 3)) for n, s in sideways]


def test_grayscale_palette_and_cmyk(tool, reference, zebra, tmp_path):
    import numpy as np
    from PIL import Image

    original = Image.open(zebra).convert("RGB")
    for mode, suffix in (("L", ".png"), ("P", ".png"), ("CMYK", ".jpg")):
        path = tmp_path / f"zebra_{mode}{suffix}"
        original.convert(mode).save(path)
        with Image.open(path) as saved:
            assert saved.mode == mode
            as_rgb = saved.convert("RGB")
        assert_same_top5(classify(tool, path, tmp_path), reference(as_rgb))
    # CMYK comes back with the original colours (not inverted by the Adobe convention).
    from tools.media import open_image

    cmyk_rgb = np.asarray(open_image(tmp_path / "zebra_CMYK.jpg"), dtype=np.float32)
    assert np.abs(cmyk_rgb - np.asarray(original, dtype=np.float32)).mean() < 10


def test_transparency_is_composited_onto_white(tool, reference, zebra, tmp_path):
    from PIL import Image

    rgba = Image.open(zebra).convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width // 2, rgba.height))  # left half fully transparent
    rgba.putalpha(alpha)
    path = tmp_path / "zebra_rgba.png"
    rgba.save(path)

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected = reference(Image.alpha_composite(white, rgba).convert("RGB"))
    assert_same_top5(classify(tool, path, tmp_path), expected)


def test_sixteen_bit_equals_eight_bit(tool, zebra, tmp_path):
    import numpy as np
    from PIL import Image

    gray = np.asarray(Image.open(zebra).convert("L"), dtype=np.uint16)
    eight, sixteen = tmp_path / "zebra8.png", tmp_path / "zebra16.png"
    Image.fromarray(gray.astype(np.uint8)).save(eight)
    Image.fromarray(gray * 257).save(sixteen)
    assert Image.open(sixteen).mode == "I;16"

    expected = classify(tool, eight, tmp_path)
    result = classify(tool, sixteen, tmp_path)
    assert_same_top5(result, [(item.label, item.score) for item in expected.labels])


# --- bad inputs ------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width``×``height`` 1-bit pixels but holds one tiny row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(30_000, 30_000), (11_000, 10_000)])
def test_decompression_bomb_is_refused(tool, tmp_path, width, height):
    """900 MP trips Pillow's own guard; 110 MP trips the tool's 100 MP limit."""
    bomb = _png_header_only(tmp_path / "bomb.png", width, height)
    with warnings.catch_warnings(), pytest.raises(ToolError, match="too large|megapixels") as caught:
        warnings.simplefilter("ignore")  # Pillow warns above 89 MP before refusing above 179 MP
        classify(tool, bomb, tmp_path)
    assert "bomb.png" in str(caught.value)


def test_truncated_jpeg(tool, zebra, tmp_path):
    data = zebra.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ToolError, match="damaged or truncated"):
        classify(tool, truncated, tmp_path)


def test_text_and_audio_files_are_refused(tool, media, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all\n")
    audio = media / "audio" / "us8k_dog_bark_100032-3-0-0.wav"
    with pytest.raises(ToolError, match="text file.*needs an? image"):
        classify(tool, text, tmp_path)
    with pytest.raises(ToolError, match="audio.*needs an? image"):
        classify(tool, audio, tmp_path)
    # Even when registered as images, they are not decoded as photos.
    for path in (text, audio):
        with pytest.raises(ToolError, match="not an image format"):
            classify(tool, path, tmp_path, kind="image")


def test_unknown_attachment(tool, tmp_path):
    with pytest.raises(ToolError, match="Unknown attachment id"):
        tool.call({"attachment_id": "att_9"}, ToolContext(AttachmentStore(), tmp_path))


# --- the model setting ---------------------------------------------------------------------

def test_directory_with_one_pth_via_models_dir(tool, weights_file, zebra, tmp_path):
    models_dir = tmp_path / "models"
    (models_dir / "resnet18").mkdir(parents=True)
    (models_dir / "resnet18" / "weights.pth").write_bytes(weights_file.read_bytes())
    settings = Settings.from_env({"ASSISTANT_MODELS_DIR": str(models_dir)})
    from_dir = ImageTool(settings.model("ASSISTANT_IMAGE_WEIGHTS"), device="cpu")
    assert from_dir.source() == str(models_dir / "resnet18")
    expected = classify(tool, zebra, tmp_path)
    result = classify(from_dir, zebra, tmp_path)
    assert_same_top5(result, [(item.label, item.score) for item in expected.labels], atol=1e-6)


def _load_error(value: str, variable: str = VARIABLE) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as caught:
        ImageTool(ModelSource(value, variable), device="cpu").ensure_loaded()
    message = str(caught.value)
    assert variable in message and value in message
    assert "Traceback" not in message
    return caught.value


def test_missing_path(tmp_path):
    error = _load_error(str(tmp_path / "nowhere" / "resnet18.pth"))
    assert "no such file" in error.reason
    error = _load_error(str(tmp_path / "absent"), variable="ASSISTANT_MODELS_DIR")
    assert error.variable == "ASSISTANT_MODELS_DIR"


def test_unknown_weights_name():
    error = _load_error("IMAGENET1K_V9")
    assert "IMAGENET1K_V1" in error.reason


def test_directory_needs_exactly_one_pth(weights_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "exactly one .pth" in _load_error(str(empty)).reason
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.pth", "b.pth"):
        (two / name).write_bytes(weights_file.read_bytes())
    assert "a.pth, b.pth" in _load_error(str(two)).reason


def test_files_that_are_not_resnet18_state_dicts(tmp_path):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    assert "not a ResNet18 state dict" in _load_error(str(other)).reason
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("hello")
    assert "not a readable PyTorch state dict" in _load_error(str(garbage)).reason


def test_default_weights_download_failure_is_clear(monkeypatch, tmp_path):
    """The default downloads from download.pytorch.org; offline, a clear error (no network used)."""
    import urllib.error

    import torch.hub

    calls: list[str] = []

    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    error = _load_error("IMAGENET1K_V1")
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert "download.pytorch.org" in error.reason and "Name or service not known" in error.reason


def test_import_is_cheap():
    code = "import sys, tools.image; print(any(m in sys.modules for m in ('torch', 'torchvision', 'PIL')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


def test_no_cuda_initialisation_warning_without_a_gpu(monkeypatch):
    """torch warns "CUDA initialization: Found no NVIDIA driver" where CUDA libraries are
    installed but no GPU is: choosing the device must not show it to the user."""
    import warnings

    import torch

    from tools.base import select_device

    def is_available() -> bool:
        warnings.warn("CUDA initialization: Found no NVIDIA driver on your system.", UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.delenv("ASSISTANT_DEVICE", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_device() == "cpu"
