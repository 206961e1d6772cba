"""Object detection with DETR on photos and videos.

Two tools share one model, loaded once by whichever is used first: ``detect`` finds the
objects in a photo and draws them; ``video`` samples frames of a video, detects the
objects in each, summarises every class over time and writes an annotated MP4.

The model comes from ``ASSISTANT_DETECTION_MODEL``: a Hugging Face hub id (default
``facebook/detr-resnet-50``) or a local directory saved with ``save_pretrained``
(config, weights and ``preprocessor_config.json``).
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from tools.base import (AnalyzeOption, Label, ModelLoadError, ModelSource, TextTrigger,
                        Tool, ToolConfig, ToolContext, ToolError, ToolResult, select_device,
                        short_reason)
from tools.settings import Setting
from tools.hub import hub_spec, load_pretrained
from tools.media import printable, probe_video

#: Processing size of video frames. DETR was trained with shorter sides of 480 to 800
#: pixels; the smallest of them keeps a video at or under one second of work per second.
VIDEO_SIZE = {"shortest_edge": 480, "longest_edge": 800}
#: The annotated video is at most this tall (or wide, when portrait), and this many frames a second.
VIDEO_MAX_SIDE = 720
VIDEO_MAX_OUTPUT_FPS = 30.0
#: Bounds of the per-call video settings.
MAX_FPS = 30.0
MAX_FRAMES = 600

#: Box colours, one per class (by class index).
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
            (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0)]


# -- results ----------------------------------------------------------------------


class DetectionLabel(Label):
    """A detected class: its best confidence and how many were seen (at once, for video)."""

    count: int


class Detection(BaseModel):
    """One object in a photo; ``box`` is ``[x0, y0, x1, y1]`` in the photo's pixels."""

    label: str
    score: float
    box: list[float]


class ClassSummary(BaseModel):
    """One class over a video's sampled frames; times in seconds from the start."""

    label: str
    frames: int
    max_in_frame: int
    best_score: float
    first_s: float
    last_s: float


class DetectionResult(ToolResult):
    """What both detection tools share: one label per class (best score, with a count)."""

    labels: list[DetectionLabel]  # type: ignore[assignment]
    threshold: float

    def result_line(self) -> str:
        found = ", ".join(f"{_counted(item.label, item.count)} {item.score:.0%}" for item in self.labels[:5])
        return " · ".join([self.tool, found or f"nothing above {self.threshold:.0%}", *self.line_details()])


class PhotoDetectionResult(DetectionResult):
    """Objects in one photo; ``count`` is how many of each class."""

    detections: list[Detection]
    width: int
    height: int

    def summary(self) -> str:
        if not self.detections:
            return f"No objects found above {self.threshold:.0%} confidence."
        found = ", ".join(f"{_counted(item.label, item.count)} (best {item.score:.0%})"
                          for item in self.labels)
        return f"Found {len(self.detections)} object(s): {found}."


class VideoDetectionResult(DetectionResult):
    """Objects across a video's sampled frames; ``count`` is the most seen in one frame."""

    classes: list[ClassSummary]
    frames_sampled: int
    frames_with_objects: int
    duration_s: float
    fps_sampled: float

    def line_details(self) -> list[str]:
        return [f"in {self.frames_with_objects} of {self.frames_sampled} sampled frames, {self.duration_s:.0f} s"]

    def summary(self) -> str:
        frames = f"{self.frames_sampled} sampled frames of a {self.duration_s:.0f} s video"
        if not self.classes:
            return f"No objects found above {self.threshold:.0%} confidence in {frames}."
        head = f"Seen in {self.frames_with_objects} of {frames}"
        found = "; ".join(f"{item.label} (up to {item.max_in_frame} at once, "
                          f"{item.first_s:.0f}–{item.last_s:.0f} s, best {item.best_score:.0%})"
                          for item in sorted(self.classes, key=lambda c: -c.best_score))
        return f"{head}: {found}."


def _counted(label: str, count: int) -> str:
    return label if count == 1 else f"{count}× {label}"


# -- parameters -------------------------------------------------------------------


class PhotoParams(BaseModel):
    attachment_id: str
    threshold: float | None = Field(None, gt=0, lt=1,
                                    description="Minimum confidence; omit for the default.")


class VideoParams(PhotoParams):
    # How densely to sample is for `assistant analyze --fps/--max-frames` and the settings;
    # left out of what the model reads (every request carries the schemas).
    fps: SkipJsonSchema[float | None] = Field(None, gt=0, le=MAX_FPS)
    max_frames: SkipJsonSchema[int | None] = Field(None, ge=1, le=MAX_FRAMES)


# -- the shared model -------------------------------------------------------------


@dataclass
class _Detr:
    processor: Any
    model: Any
    device: str

    def detect(self, image: Any, threshold: float, size: dict[str, int] | None = None
               ) -> list[Detection]:
        """Objects in an RGB image (PIL image or ``H×W×3`` uint8 array), boxes in its pixels."""
        return self.detect_many([image], threshold, size)[0]

    def detect_many(self, images: list[Any], threshold: float, size: dict[str, int] | None = None
                    ) -> list[list[Detection]]:
        """:meth:`detect` for several images of one shape in one forward pass (a tools service
        batches frames and photos from several calls this way)."""
        import torch

        first = images[0]
        height, width = first.shape[:2] if hasattr(first, "shape") else (first.height, first.width)
        extra = {"size": size} if size else {}
        inputs = self.processor(images=images, return_tensors="pt", **extra).to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        found = self.processor.post_process_object_detection(
            outputs, threshold=threshold, target_sizes=[(height, width)] * len(images))
        names = self.model.config.id2label
        return [[Detection(label=names.get(index, f"class {index}"), score=round(score, 4),
                           box=[round(value, 1) for value in box])
                 for score, index, box in zip(one["scores"].tolist(), one["labels"].tolist(),
                                              one["boxes"].tolist())]
                for one in found]


class _SharedDetr:
    """Loads the DETR processor and model once, for both tools."""

    def __init__(self, source: ModelSource, device: str | None) -> None:
        self.source, self._device = source, device
        self._loaded: _Detr | None = None
        self._lock = threading.Lock()

    def get(self) -> _Detr:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def fail(self, reason: str) -> ModelLoadError:
        return ModelLoadError("object detection", self.source.value, self.source.variable, reason)

    def _load(self) -> _Detr:
        import torch

        device = select_device(self._device)
        processor, model = load_pretrained(
            self.source, "object detection",
            "config.json, the weights and preprocessor_config.json", _from_pretrained)
        _fold_frozen_batch_norms(model)
        try:
            # Channels-last convolutions: the same results, about a third faster on CPU.
            model = model.to(device, memory_format=torch.channels_last).eval()
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory
            raise self.fail(f"could not move it to {device} ({short_reason(exc)})") from None
        return _Detr(processor, model, device)


def _from_pretrained(location: str, local_files_only: bool) -> tuple[Any, Any]:
    # The hub's preprocessor_config.json names the retired DetrFeatureExtractor, which
    # transformers 5 no longer maps; DetrImageProcessor reads the same file.
    from transformers import DetrForObjectDetection, DetrImageProcessor

    processor = DetrImageProcessor.from_pretrained(location, local_files_only=local_files_only)
    model = DetrForObjectDetection.from_pretrained(location, local_files_only=local_files_only)
    return processor, model


def _fold_frozen_batch_norms(model: Any) -> None:
    """Fold the backbone's frozen batch norms into the convolutions they follow.

    DETR computes each frozen batch norm afresh on every call, as two passes over the
    feature map; folded into the convolution's weights and bias, the results are the same
    (to float rounding) and a forward pass is some 15% faster on CPU. In the timm and the
    transformers ResNet backbones every such norm is registered right after its convolution.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, DetrFrozenBatchNorm2d):
                conv.weight, conv.bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, norm.running_mean, norm.running_var, 1e-5,
                    norm.weight, norm.bias)
                setattr(parent, norm_name, torch.nn.Identity())




# -- the tools --------------------------------------------------------------------


MODEL = hub_spec("object detection (DETR)", "facebook/detr-resnet-50", "ASSISTANT_DETECTION_MODEL",
                 "detr-resnet-50")
THRESHOLD = Setting("ASSISTANT_DETECTION_THRESHOLD", 0.7, float, minimum=0.0, maximum=1.0)
VIDEO_FPS = Setting("ASSISTANT_VIDEO_FPS", 1.0, float, minimum=0.01)
VIDEO_MAX_FRAMES = Setting("ASSISTANT_VIDEO_MAX_FRAMES", 60, int, minimum=1)
THRESHOLD_OPTION = AnalyzeOption("--threshold", "threshold", float, "P",
                                 "detection score threshold (default: ASSISTANT_DETECTION_THRESHOLD)")
#: Words (English and Russian stems) that ask what or where things are, or to find/count objects.
ASKS_WHAT_OR_WHERE = re.compile(
    r"\b(what|whats|where|which|find|count|how many|detect|locate|spot|objects?|things?|anything)\b"
    r"|(?<!\w)(что|где|какие|найд|найт|посчита|подсчита|сколько|объект|обнаруж|предмет|"
    r"изображ|есть ли|покажи)", re.IGNORECASE)


def _shared_detr(config: ToolConfig) -> _SharedDetr:
    assert config.source is not None
    return config.share("detr", lambda: _SharedDetr(config.source, config.device))


class _DetectionTool(Tool[Any]):
    model = MODEL

    def __init__(self, shared: _SharedDetr, threshold: float) -> None:
        super().__init__()
        self._shared, self._threshold = shared, threshold

    def source(self) -> str:
        return self._shared.source.value

    def _load(self) -> _Detr:
        return self._shared.get()


class PhotoDetectionTool(_DetectionTool):  # Tool[PhotoParams]
    name = "detect"
    description = ("Find, count and locate the objects in a photo (80 COCO classes: people, "
                   "cars, animals, furniture...); draws their boxes on a copy.")
    Params = PhotoParams
    kinds: ClassVar[frozenset[str]] = frozenset({"image"})
    trigger = TextTrigger(frozenset({"image"}), ASKS_WHAT_OR_WHERE)
    settings = (THRESHOLD,)
    analyze_options = (THRESHOLD_OPTION,)

    @classmethod
    def create(cls, config: ToolConfig) -> PhotoDetectionTool:
        return cls(_shared_detr(config), config.values[THRESHOLD.variable])

    def run(self, params: PhotoParams, ctx: ToolContext) -> PhotoDetectionResult:
        from tools.media import open_image

        threshold = params.threshold or self._threshold
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        image = open_image(path)
        detections = self._model.detect(image, threshold)
        _draw(image, detections)
        output = ctx.output_path(params.attachment_id, path, "-detected.jpg")
        partial = _partial(output)
        image.save(partial, quality=90)
        partial.replace(output)
        return PhotoDetectionResult(tool=self.name, labels=_photo_labels(detections),
                                    outputs=[str(output)], threshold=threshold,
                                    detections=detections, width=image.width,
                                    height=image.height)


class VideoDetectionTool(_DetectionTool):
    name = "video"
    description = ("Find the objects across a video (80 COCO classes): which, when and how many "
                   "at once; draws their boxes on a copy.")
    Params = VideoParams
    kinds: ClassVar[frozenset[str]] = frozenset({"video"})
    routes: ClassVar[frozenset[str]] = frozenset({"video"})
    settings = (THRESHOLD, VIDEO_FPS, VIDEO_MAX_FRAMES)
    analyze_options = (
        THRESHOLD_OPTION,
        AnalyzeOption("--fps", "fps", float, "N",
                      "video frames sampled per second (default: ASSISTANT_VIDEO_FPS)"),
        AnalyzeOption("--max-frames", "max_frames", int, "N",
                      "most video frames analysed (default: ASSISTANT_VIDEO_MAX_FRAMES)"),
    )

    def __init__(self, shared: _SharedDetr, threshold: float, fps: float, max_frames: int) -> None:
        super().__init__(shared, threshold)
        self._fps, self._max_frames = fps, max_frames

    @classmethod
    def create(cls, config: ToolConfig) -> VideoDetectionTool:
        return cls(_shared_detr(config), config.values[THRESHOLD.variable],
                   config.values[VIDEO_FPS.variable], config.values[VIDEO_MAX_FRAMES.variable])

    def run(self, params: VideoParams, ctx: ToolContext) -> VideoDetectionResult:
        import cv2

        threshold = params.threshold or self._threshold
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        video = _open_video(path)
        output = ctx.output_path(params.attachment_id, path, "-detected.mp4")
        partial = _partial(output)
        try:
            samples = _sample_indices(video.frame_count, video.fps, params.fps or self._fps,
                                      params.max_frames or self._max_frames)
            writer: _VideoWriter | None = None
            seen: list[tuple[float, list[Detection]]] = []
            current: list[Detection] = []
            try:
                for index, frame in video.frames():
                    if writer is None:  # sized by the frames as decoded (rotation applied)
                        writer = _VideoWriter(partial, frame.shape[1], frame.shape[0], video.fps)
                    if index in samples:
                        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                        current = self._model.detect(rgb, threshold, VIDEO_SIZE)
                        seen.append((index / video.fps, current))
                        ctx.report(0.95 * len(seen) / len(samples),
                                   f"frame {len(seen)} of {len(samples)} "
                                   f"({index / video.fps:.0f} s)")
                    writer.write(index, frame, current)
            finally:
                if writer is not None:
                    writer.close()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            video.release()
        if not seen:
            partial.unlink(missing_ok=True)
            raise ToolError(f"{printable(path.name)}: no frame of the video could be decoded "
                            "(is it damaged or truncated?).")
        partial.replace(output)
        ctx.report(1.0, "done")
        classes = _summarise(seen)
        labels = sorted((DetectionLabel(label=c.label, score=c.best_score, count=c.max_in_frame)
                         for c in classes), key=lambda item: item.score, reverse=True)
        return VideoDetectionResult(
            tool=self.name, labels=labels, outputs=[str(output)], threshold=threshold,
            classes=classes, frames_sampled=len(seen),
            frames_with_objects=sum(1 for _, found in seen if found),
            duration_s=round(video.frame_count / video.fps, 2),
            fps_sampled=round(len(seen) / (video.frame_count / video.fps), 3))


def detection_tools(source: ModelSource, *, device: str | None, threshold: float,
                    video_fps: float, video_max_frames: int) -> list[Tool]:
    """The photo and video detection tools, sharing one lazily loaded DETR model."""
    shared = _SharedDetr(source, device)
    return [PhotoDetectionTool(shared, threshold),
            VideoDetectionTool(shared, threshold, video_fps, video_max_frames)]


# -- helpers ----------------------------------------------------------------------


def _photo_labels(detections: list[Detection]) -> list[DetectionLabel]:
    best: dict[str, DetectionLabel] = {}
    for item in detections:
        entry = best.setdefault(item.label, DetectionLabel(label=item.label, score=item.score, count=0))
        entry.count += 1
        entry.score = max(entry.score, item.score)
    return sorted(best.values(), key=lambda entry: entry.score, reverse=True)


def _summarise(seen: list[tuple[float, list[Detection]]]) -> list[ClassSummary]:
    """Per class: frames it was seen in, most at once, best score, first and last time."""
    classes: dict[str, ClassSummary] = {}
    for time_s, found in seen:
        counts: dict[str, int] = {}
        for item in found:
            counts[item.label] = counts.get(item.label, 0) + 1
        for label, count in counts.items():
            best = max(item.score for item in found if item.label == label)
            entry = classes.get(label)
            if entry is None:
                classes[label] = ClassSummary(label=label, frames=1, max_in_frame=count,
                                              best_score=best, first_s=round(time_s, 2),
                                              last_s=round(time_s, 2))
            else:
                entry.frames += 1
                entry.max_in_frame = max(entry.max_in_frame, count)
                entry.best_score = max(entry.best_score, best)
                entry.last_s = round(time_s, 2)
    return sorted(classes.values(), key=lambda entry: (-entry.frames, -entry.best_score))


def _sample_indices(frame_count: int, fps: float, wanted_fps: float, max_frames: int) -> set[int]:
    """Frames to analyse: ``wanted_fps`` a second, or ``max_frames`` spread evenly over
    the whole video when that would be more; each in the middle of its time slot."""
    duration = frame_count / fps
    step = max(1.0 / wanted_fps, duration / max_frames)
    count = max(1, min(max_frames, round(duration / step)))
    return {min(frame_count - 1, int((i + 0.5) * step * fps)) for i in range(count)}


class _Video:
    """A video opened with OpenCV: its frame rate, and its frames as counted in the file."""

    def __init__(self, capture: Any, path: Path, frame_count: int) -> None:
        import cv2

        self.capture, self.path = capture, path
        self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = frame_count

    def frames(self) -> Iterator[tuple[int, Any]]:
        """``(index, BGR frame)`` in order until the end (or a frame that cannot be decoded)."""
        index = 0
        while index < self.frame_count:
            ok, frame = self.capture.read()
            if not ok:
                return
            yield index, frame
            index += 1

    def release(self) -> None:
        self.capture.release()


def _open_video(path: Path) -> _Video:
    """The video, once its frame size is known to be within the limit and its frames counted."""
    import cv2

    info = probe_video(path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ToolError(f"{printable(path.name)}: not a video that can be read (damaged, truncated or "
                        "in an unknown format).")
    video = _Video(capture, path, info.frames)
    if not (0 < video.fps < 1000) or video.frame_count <= 0:
        video.release()
        raise ToolError(f"{printable(path.name)}: the video's length or frame rate cannot be read "
                        "(is it damaged or truncated?).")
    return video


def _partial(output: Path) -> Path:
    """Where ``output`` is written until it is complete (then renamed): a crash or an error
    never leaves a half-written file under the real name."""
    return output.with_name(f".{output.stem}.partial{output.suffix}")


class _VideoWriter:
    """The annotated video: H.264 in MP4 (playable everywhere), at most 720p and 30 fps."""

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        import av

        scale = min(1.0, VIDEO_MAX_SIDE / min(width, height))
        self.size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        self.scale = (self.size[0] / width, self.size[1] / height)
        self.stride = max(1, round(fps / VIDEO_MAX_OUTPUT_FPS))
        self.container = av.open(str(path), "w", options={"movflags": "faststart"})
        self.stream = self.container.add_stream(
            "libx264", rate=Fraction(fps / self.stride).limit_denominator(1001))
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "superfast", "crf": "23"}

    def write(self, index: int, frame: Any, detections: list[Detection]) -> None:
        import av
        import cv2
        from PIL import Image

        if index % self.stride:
            return
        if (frame.shape[1], frame.shape[0]) != self.size:
            # Bilinear is several times faster than area averaging and as good down to half size.
            shrink = cv2.INTER_LINEAR if self.scale[0] >= 0.5 else cv2.INTER_AREA
            frame = cv2.resize(frame, self.size, interpolation=shrink)
        image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        _draw(image, detections, self.scale)
        for packet in self.stream.encode(av.VideoFrame.from_image(image)):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


def _draw(image: Any, detections: list[Detection], scale: tuple[float, float] = (1.0, 1.0)) -> None:
    """Boxes with their label and score, sized to be readable on small and large images."""
    from PIL import ImageDraw, ImageFont

    if not detections:
        return
    side = min(image.size)
    line = max(2, round(side / 300))
    font = ImageFont.load_default(size=max(12, round(side / 40)))
    draw = ImageDraw.Draw(image)
    for item in sorted(detections, key=lambda d: d.score):  # the most certain on top
        x0, y0, x1, y1 = (item.box[0] * scale[0], item.box[1] * scale[1],
                          item.box[2] * scale[0], item.box[3] * scale[1])
        colour = _PALETTE[zlib.crc32(item.label.encode()) % len(_PALETTE)]
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        text = f"{item.label} {item.score:.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        height = bottom - top + 2 * line
        ty = y0 - height if y0 - height >= 0 else y0
        draw.rectangle((x0, ty, x0 + right - left + 2 * line, ty + height), fill=colour)
        draw.text((x0 + line - left, ty + line - top), text, fill=_ink(colour), font=font)


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    red, green, blue = colour
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)
