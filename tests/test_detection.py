"""DETR photo and video detection on a stand-in with the real architecture and processor.

The stand-in's weights are random; its two output heads are scaled up so that its boxes
and scores depend strongly on the pixels (swapping RGB for BGR moves a box by tens of
pixels), which makes "the same boxes as the reference within a pixel" a real check of
decoding, EXIF, resizing, normalisation and box scaling.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from tests.model_builders import build_detr
from tools.base import ModelLoadError, ModelSource, ToolContext, ToolError
from tools.detection import PhotoDetectionResult, VideoDetectionResult, detection_tools

THRESHOLD = 0.3


@pytest.fixture(scope="session")
def detr_dir(tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> Path:
    import torch
    from transformers import DetrForObjectDetection, DetrImageProcessor

    plain = build_detr(tmp_path_factory.mktemp("detr-plain"), shared_models / "configs" / "detr-resnet-50")
    model = DetrForObjectDetection.from_pretrained(plain).eval()
    with torch.no_grad():
        model.class_labels_classifier.weight.mul_(30)
        for layer in model.bbox_predictor.layers:
            layer.weight.mul_(5)
    sharp = tmp_path_factory.mktemp("detr-sharp")
    model.save_pretrained(sharp)
    DetrImageProcessor.from_pretrained(plain).save_pretrained(sharp)
    shutil.rmtree(plain)
    return sharp


@pytest.fixture(scope="session")
def reference(detr_dir: Path):
    from transformers import DetrForObjectDetection, DetrImageProcessor

    return (DetrImageProcessor.from_pretrained(detr_dir),
            DetrForObjectDetection.from_pretrained(detr_dir).eval())


@pytest.fixture(scope="session")
def tools(detr_dir: Path):
    photo, video = detection_tools(ModelSource(str(detr_dir), "ASSISTANT_DETECTION_MODEL"),
                                   device="cpu", threshold=0.7, video_fps=1.0, video_max_frames=60)
    return photo, video


def _call(tool, path: Path, tmp_path: Path, progress=None, **arguments):
    store = AttachmentStore()
    attachment = store.register(path)
    return tool.call({"attachment_id": attachment.id, **arguments},
                     ToolContext(store, tmp_path / "out", progress))


def _reference_detections(reference, path: Path, threshold: float) -> list[tuple[str, float, list[float]]]:
    """transformers' own path: load_image (EXIF applied), the processor, post-processing."""
    import torch
    from transformers.image_utils import load_image

    processor, model = reference
    image = load_image(str(path))
    with torch.inference_mode():
        outputs = model(**processor(images=image, return_tensors="pt"))
    found = processor.post_process_object_detection(outputs, threshold=threshold,
                                                    target_sizes=[(image.height, image.width)])[0]
    return [(model.config.id2label[index], score, box) for score, index, box in
            zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist())]


def _assert_same(ours: PhotoDetectionResult, expected: list[tuple[str, float, list[float]]],
                 pixels: float) -> None:
    assert len(ours.detections) == len(expected) > 0
    for got, (label, score, box) in zip(ours.detections, expected):
        assert got.label == label
        assert got.score == pytest.approx(score, abs=1e-3)
        assert got.box == pytest.approx(box, abs=pixels)


def test_photo_matches_the_transformers_pipeline_on_a_12_mp_photo(tools, detr_dir, reference,
                                                                  media, tmp_path):
    from transformers import pipeline

    path = media / "images" / "street_scooters.jpg"
    result = _call(tools[0], path, tmp_path, threshold=THRESHOLD)
    processor, model = reference
    detector = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
    expected = [(item["label"], item["score"],
                 [item["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")])
                for item in detector(str(path), threshold=THRESHOLD)]
    _assert_same(result, expected, pixels=1.0)  # the pipeline truncates its boxes to ints
    assert (result.width, result.height) == (4032, 3024)


def test_photo_matches_post_processing_on_a_small_photo(tools, reference, media, tmp_path):
    path = media / "images" / "inet_zebra.jpg"
    result = _call(tools[0], path, tmp_path, threshold=THRESHOLD)
    _assert_same(result, _reference_detections(reference, path, THRESHOLD), pixels=0.5)


def test_photo_applies_exif_orientation_like_the_reference(tools, reference, media, tmp_path):
    from PIL import Image

    rotated = tmp_path / "rotated.jpg"
    with Image.open(media / "images" / "inet_school_bus.jpg") as image:
        exif = image.getexif()
        exif[0x0112] = 6  # stored sideways: viewers turn it 90° clockwise
        image.save(rotated, exif=exif, quality=95)
    result = _call(tools[0], rotated, tmp_path, threshold=THRESHOLD)
    assert (result.width, result.height) == (334, 500)
    _assert_same(result, _reference_detections(reference, rotated, THRESHOLD), pixels=0.5)


def test_photo_result_labels_counts_and_annotated_image(tools, media, tmp_path):
    from PIL import Image

    result = _call(tools[0], media / "images" / "inet_pizza.jpg", tmp_path, threshold=THRESHOLD)
    assert result.tool == "detect" and result.threshold == THRESHOLD
    assert [item.score for item in result.labels] == sorted((i.score for i in result.labels), reverse=True)
    assert sum(item.count for item in result.labels) == len(result.detections)
    for item in result.labels:
        assert item.score == max(d.score for d in result.detections if d.label == item.label)
    (output,) = result.outputs
    with Image.open(output) as annotated:
        assert annotated.format == "JPEG" and annotated.size == (500, 375)
    assert result.to_json()["labels"][0].keys() == {"label", "score", "count"}
    assert "object" in result.summary()


def test_photo_default_threshold_applies(tools, media, tmp_path):
    # The stand-in's scores are below 0.95, so a strict threshold leaves nothing.
    result = _call(tools[0], media / "images" / "inet_zebra.jpg", tmp_path, threshold=0.95)
    assert result.detections == [] and result.labels == []
    assert "No objects" in result.summary()


def test_video_samples_summarises_reports_progress_and_writes_h264(tools, media, tmp_path):
    import av

    progress: list[float] = []
    result = _call(tools[1], media / "video" / "car_traffic_small.mp4", tmp_path,
                   progress=lambda fraction, message: progress.append(fraction),
                   threshold=THRESHOLD, max_frames=3)
    assert isinstance(result, VideoDetectionResult)
    assert result.frames_sampled == 3
    assert result.duration_s == pytest.approx(30.5, abs=0.2)
    assert result.classes and result.frames_with_objects <= 3
    for item in result.classes:
        assert 1 <= item.frames <= result.frames_sampled
        assert 0 <= item.first_s <= item.last_s <= result.duration_s
        # Three frames spread over the whole video, each in the middle of its third.
        assert item.first_s >= 4 and (item.frames < 3 or item.last_s >= 24)
    assert {item.label: item.max_in_frame for item in result.classes} == \
        {item.label: item.count for item in result.labels}
    assert progress == sorted(progress) and len(set(progress)) == len(progress) == 4
    assert progress[-1] == 1.0
    assert "sampled frames" in result.summary()

    (output,) = result.outputs
    with av.open(output) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (640, 360)
        decoded = sum(1 for _ in container.decode(stream))
    assert decoded > 900  # every frame of the 30 s video, annotated


def test_video_tool_refuses_a_photo(tools, media, tmp_path):
    with pytest.raises(ToolError, match="needs a video"):
        _call(tools[1], media / "images" / "inet_zebra.jpg", tmp_path)


def test_video_tool_refuses_a_truncated_video(tools, media, tmp_path):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((media / "video" / "car_traffic_small.mp4").read_bytes()[:20_000])
    store = AttachmentStore()
    attachment = store.register(truncated, kind="video")  # as a chat adapter would, by its name
    with pytest.raises(ToolError, match="truncated"):
        tools[1].call({"attachment_id": attachment.id}, ToolContext(store, tmp_path))


@pytest.mark.parametrize("index, kind, message", [(0, "image", "not an image"),
                                                   (1, "video", "not a video")])
def test_tools_refuse_a_text_file(tools, tmp_path, index, kind, message):
    text = tmp_path / "notes.bin"
    text.write_text("not a photo or a video at all\n")
    store = AttachmentStore()
    attachment = store.register(text, kind=kind)  # as a chat adapter would, by its name
    with pytest.raises(ToolError, match=message):
        tools[index].call({"attachment_id": attachment.id}, ToolContext(store, tmp_path))


@pytest.mark.parametrize("arguments", [{"threshold": 1.5}, {"threshold": 0}, {"fps": 0},
                                       {"max_frames": 0}, {"max_frames": 100_000}])
def test_video_arguments_are_bounded(tools, arguments):
    with pytest.raises(ToolError, match="Invalid arguments for video"):
        tools[1].validate({"attachment_id": "att_1", **arguments})


def test_both_tools_share_one_model(detr_dir):
    photo, video = detection_tools(ModelSource(str(detr_dir), "ASSISTANT_DETECTION_MODEL"),
                                   device="cpu", threshold=0.7, video_fps=1.0, video_max_frames=60)
    assert not photo.loaded and not video.loaded
    assert video.ensure_loaded() is photo.ensure_loaded()


def test_missing_model_directory_names_the_variable(tmp_path):
    missing = tmp_path / "models" / "detr-resnet-50"
    photo, _ = detection_tools(ModelSource(str(missing), "ASSISTANT_MODELS_DIR"), device="cpu",
                               threshold=0.7, video_fps=1.0, video_max_frames=60)
    with pytest.raises(ModelLoadError) as caught:
        photo.ensure_loaded()
    message = str(caught.value)
    assert "object detection" in message and str(missing) in message
    assert "ASSISTANT_MODELS_DIR" in message and "no such directory" in message


def test_incomplete_model_directory_is_a_clear_error(tmp_path):
    (tmp_path / "detr").mkdir()
    (tmp_path / "detr" / "config.json").write_text("{}")
    photo, _ = detection_tools(ModelSource(str(tmp_path / "detr"), "ASSISTANT_DETECTION_MODEL"),
                               device="cpu", threshold=0.7, video_fps=1.0, video_max_frames=60)
    with pytest.raises(ModelLoadError, match="ASSISTANT_DETECTION_MODEL"):
        photo.ensure_loaded()


def test_video_that_fails_midway_leaves_no_half_written_file(tools, media, tmp_path, monkeypatch):
    from tools import detection

    written = []

    def fail_on_the_second_frame(self, index, frame, detections):
        written.append(index)
        if len(written) == 2:
            raise RuntimeError("the disk is full")
        return original(self, index, frame, detections)

    original = detection._VideoWriter.write
    monkeypatch.setattr(detection._VideoWriter, "write", fail_on_the_second_frame)
    with pytest.raises(RuntimeError):
        _call(tools[1], media / "video" / "car_traffic_small.mp4", tmp_path, max_frames=2)
    assert list((tmp_path / "out").iterdir()) == []
