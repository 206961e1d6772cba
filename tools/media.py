"""What kind of media a file holds, judged by its content, the input limits, and the
decoding several tools share (photos to RGB, any audio or a video's sound track to 16 kHz mono).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.base import ToolError

if TYPE_CHECKING:
    import av
    import numpy as np

KINDS = ("image", "audio", "voice", "video", "text", "document")
#: The sample rate audio is decoded to (what YAMNet and Whisper take).
SAMPLE_RATE = 16_000
#: Longest audio accepted, in seconds.
MAX_AUDIO_SECONDS = 30 * 60
#: Most audio channels mixed down (FFmpeg's resampler takes no more); more are refused.
MAX_AUDIO_CHANNELS = 64
#: Shorter than this is not a sound that can be analysed (a truncated header, a click).
MIN_AUDIO_SECONDS = 0.1
#: Bytes read to tell a UTF-8 text document from other files.
_TEXT_SNIFF_BYTES = 65_536

_IMAGE_MIMES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                "image/tiff", "image/x-icon", "image/vnd.microsoft.icon"}
#: Containers that may hold audio only or video: probed to tell which.
_CONTAINER_MIMES = {"video/mp4", "video/quicktime", "video/x-matroska", "video/webm",
                    "video/x-msvideo", "video/x-flv", "video/3gpp", "video/mpeg",
                    "audio/ogg", "audio/mp4", "audio/x-m4a", "audio/m4a"}


#: Characters that break a line or drive a terminal (C0 and C1 controls, DEL, line and
#: paragraph separators, bidirectional overrides): a file name shows them escaped.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def printable(name: str) -> str:
    """A file name as it can be shown: control characters written as escapes (``\\n``,
    ``\\x1b``, ``\\u202e``), so a name can neither add lines nor repaint a terminal."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), name)


def check_file(path: Path, max_bytes: int | None = None) -> int:
    """Size of a readable, non-empty file within ``max_bytes``; :class:`ToolError` otherwise."""
    try:
        if not path.exists():
            raise ToolError(f"{printable(path.name[:80])}: no such file.")
        if not path.is_file():
            raise ToolError(f"{printable(path.name[:80])}: not a regular file.")
        size = path.stat().st_size
    except OSError as exc:  # a name too long for the file system, an unreadable folder
        raise ToolError(f"{printable(path.name[:80])}: cannot be opened "
                        f"({exc.strerror or exc}).") from None
    if size == 0:
        raise ToolError(f"{printable(path.name)}: the file is empty.")
    if max_bytes is not None and size > max_bytes:
        raise ToolError(f"{printable(path.name)}: the file is too large ({megabytes(size)}; "
                        f"the limit is {megabytes(max_bytes)}, set by ASSISTANT_MAX_FILE_MB).")
    return size


#: Bytes in a megabyte, the one size unit the assistant uses (ASSISTANT_MAX_FILE_MB included).
MB = 1_000_000


def megabytes(size: float) -> str:
    """A size as people read it: ``209.7 MB`` (1 MB = 1,000,000 bytes)."""
    return f"{size / MB:.1f}".rstrip("0").rstrip(".") + " MB"


def sniff_kind(path: Path) -> str:
    """``image``, ``audio``, ``video``, ``text`` (UTF-8, no NUL bytes) or ``document``,
    from the file's bytes, not its name."""
    import filetype

    kind = filetype.guess(str(path))
    mime = kind.mime if kind else ""
    if mime in _IMAGE_MIMES:
        return "image"
    if mime in _CONTAINER_MIMES or mime.startswith("video/"):
        return _probe_streams(path) or "document"
    if mime.startswith("audio/"):
        return "audio"
    if not mime and _mpeg_audio_sync(path):
        # MPEG audio without an ID3 tag and raw ADTS AAC have no magic that filetype knows.
        return _probe_streams(path) or "document"
    return "text" if not mime and _looks_like_text(path) else "document"


def _looks_like_text(path: Path) -> bool:
    import codecs

    with path.open("rb") as file:
        head = file.read(_TEXT_SNIFF_BYTES)
    if b"\x00" in head:
        return False
    try:  # not final: a character cut at the end of the sample is fine
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _mpeg_audio_sync(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(2)
    return len(head) == 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def _probe_streams(path: Path) -> str | None:
    """``video`` if the container has a real video stream, ``audio`` if only audio, else None."""
    import av

    try:
        with av.open(str(path), options=_NO_HUGE_FRAMES) as container:
            video = [s for s in container.streams.video
                     if not s.disposition & av.stream.Disposition.attached_pic]
            if video and (video[0].frames != 1):
                return "video"
            if container.streams.audio:
                return "audio"
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def read_text_document(path: Path, max_chars: int = 200_000) -> str | None:
    """The file as text if it is UTF-8 text (no NUL bytes), else None."""
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")[:max_chars]
    except UnicodeDecodeError:
        return None


#: Photos larger than this (in pixels) are refused: a guard against decompression bombs.
MAX_IMAGE_PIXELS = 100_000_000


#: Video frames larger than this (in pixels) are refused before any is decoded: a decoder
#: holds several frames at once, so a small file of huge frames would take gigabytes
#: (16000×16000: 6.3 GB). 8192×4352 is the largest frame of H.264's and H.265's highest
#: levels, 8K video included.
MAX_VIDEO_PIXELS = 8192 * 4352


#: Options for opening any media file: the frames FFmpeg decodes while it reads a file's
#: streams stay within the limit too (a 16000×16000 video took 650 MB just to be opened).
_NO_HUGE_FRAMES = {"max_pixels": str(MAX_VIDEO_PIXELS)}


@dataclass(frozen=True)
class VideoInfo:
    """A video's first picture stream as the file holds it: ``frames`` is counted, not the
    header's claim (a header may say 2³¹ frames for a few seconds of video)."""

    width: int
    height: int
    frames: int


def probe_video(path: Path, max_pixels: int = MAX_VIDEO_PIXELS) -> VideoInfo:
    """Frame size and count of a video, read without decoding it (the packets of its
    picture stream are counted). :class:`ToolError` for a file without video and for
    frames over ``max_pixels``."""
    import av

    frames = 0
    try:
        with av.open(str(path), options={"max_pixels": str(max_pixels)}) as container:
            streams = [s for s in container.streams.video
                       if not s.disposition & av.stream.Disposition.attached_pic]
            if not streams:
                raise ToolError(f"{printable(path.name)}: no video stream.")
            stream = streams[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise ToolError(f"{printable(path.name)}: the video's frames are {width}×{height} "
                                f"pixels, more than the {max_pixels / 1_000_000:.1f} megapixels "
                                "a video frame may have.")
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError:
                pass  # damaged further on: the frames before the damage count
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ToolError(f"{printable(path.name)}: not a video that can be read (damaged, truncated "
                        f"or in an unknown format: {exc}).") from None
    return VideoInfo(width, height, frames)


def open_image(path: Path, *, min_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decode a photo as an 8-bit RGB ``PIL.Image`` the way a person sees it.

    EXIF orientation is applied; grayscale, palette, RGBA (onto white), CMYK and 16-bit
    images are converted. With ``min_size``, a large JPEG is decoded at a reduced scale
    (DCT scaling) that keeps its shorter side at least ``2 * min_size``, which is far
    faster and indistinguishable after the model's own resize. :class:`ToolError` for
    anything that is not a readable image of sane size.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ToolError(f"{printable(path.name)}: the image is {width}×{height} pixels, "
                                f"more than the {max_pixels // 1_000_000} megapixels allowed.")
            if min_size and image.format == "JPEG" and min(width, height) >= 4 * min_size:
                scale = min(width, height) / (2 * min_size)
                image.draft("RGB", (int(width / scale), int(height / scale)))
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise ToolError(f"{printable(path.name)}: the image is too large to decode safely "
                        "(a decompression bomb guard).") from None
    except UnidentifiedImageError:
        raise ToolError(f"{printable(path.name)}: not an image format that can be read.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ToolError(f"{printable(path.name)}: the image is damaged or truncated ({exc}).") from None


def _to_rgb(image):
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") else float(max(pixels.max(), 1.0))
        if mode in ("I", "F") and peak <= 255.0:
            peak = 255.0
        gray = np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


# -- audio ---------------------------------------------------------------------------------

def decode_audio(path: Path, rate: int = SAMPLE_RATE, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """The first audio stream of ``path`` as mono float32 in [-1, 1] at ``rate`` Hz.

    Channels are averaged after resampling (FFmpeg's own downmix would add them at
    +3 dB), whatever their layout. :class:`ToolError` for files without sound, damaged or
    truncated files, more than :data:`MAX_AUDIO_CHANNELS` channels, and audio over
    ``max_seconds``.
    """
    import av
    import numpy as np

    name = printable(path.name)
    parts: list[np.ndarray] = []
    samples = 0
    limit = int(max_seconds * rate)
    too_long = ToolError(f"{name}: the audio is longer than {_minutes(max_seconds)}, the most "
                         "this tool analyses; send a shorter clip.")
    try:
        with av.open(str(path), options=_NO_HUGE_FRAMES) as container:
            if not container.streams.audio:
                what = ("no sound track (the file holds only pictures or video)"
                        if container.streams.video else "no audio stream")
                raise ToolError(f"{name}: {what}.")
            stream = container.streams.audio[0]
            channels = stream.codec_context.layout.nb_channels
            if channels > MAX_AUDIO_CHANNELS:
                raise ToolError(f"{name}: the audio has {channels} channels; at most "
                                f"{MAX_AUDIO_CHANNELS} can be mixed down.")
            if container.duration is not None and container.duration / av.time_base > max_seconds + 1:
                raise too_long
            # Packed samples (one plane whatever the channels): PyAV 18 misreads planar
            # frames of eight channels or more (it counts a ninth plane and crashes).
            resampler = av.AudioResampler(format="flt", rate=rate)
            for frame in _joined_frames(container.decode(stream)):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(out.samples, -1)
                    parts.append(chunk.mean(axis=1) if chunk.shape[1] > 1 else chunk[:, 0])
                    samples += out.samples
                if samples > limit:
                    raise too_long
    except av.FFmpegError as exc:
        reason = "not an audio format that can be read" if not parts else "the audio data is damaged"
        raise ToolError(f"{name}: {reason} (the file may be truncated or corrupt: "
                        f"{exc.strerror or exc}).") from None
    wave = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
    if len(wave) < MIN_AUDIO_SECONDS * rate:
        raise ToolError(f"{name}: only {len(wave) / rate:.3f} s of sound could be decoded, too "
                        "little to analyse (the file may be truncated).")
    return np.clip(wave, -1.0, 1.0, out=wave)


#: Sample formats PyAV converts to and from numpy (every common decoder output).
_JOINABLE = frozenset({"dbl", "dblp", "flt", "fltp", "s16", "s16p", "s32", "s32p", "u8", "u8p"})


def _joined_frames(frames: Iterator[av.AudioFrame], seconds: float = 1.0) -> Iterator[av.AudioFrame | None]:
    """Decoded frames joined into frames of about ``seconds`` each, then ``None`` (so the
    resampler flushes what it holds). Resampling a few large frames gives the same samples
    as thousands of small ones (an OGG Vorbis packet is ~20 ms), several times faster."""
    import av
    import numpy as np

    pending: list[av.AudioFrame] = []

    def join() -> av.AudioFrame:
        first = pending[0]
        joined = av.AudioFrame.from_ndarray(np.concatenate([f.to_ndarray() for f in pending], axis=1),
                                            format=first.format, layout=first.layout)
        joined.sample_rate = first.sample_rate
        pending.clear()
        return joined

    for frame in frames:
        if frame.format.name not in _JOINABLE or (frame.format.is_planar and frame.layout.nb_channels >= 8):
            yield frame  # PyAV cannot read planar frames of eight channels or more
            continue
        if pending and (frame.format.name, frame.layout.name, frame.sample_rate) != (
                pending[0].format.name, pending[0].layout.name, pending[0].sample_rate):
            yield join()
        pending.append(frame)
        if sum(f.samples for f in pending) >= seconds * frame.sample_rate:
            yield join()
    if pending:
        yield join()
    yield None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"


# -- video ---------------------------------------------------------------------------------

def video_keyframes(path: Path, count: int) -> tuple[float, list[tuple[float, Any]]]:
    """The video's length in seconds, and ``count`` of its frames spread evenly over it (each
    from the middle of its slot) as ``(time in seconds, RGB PIL image)``, the way a player
    shows them (rotation applied). :class:`ToolError` for a file that cannot be read."""
    import cv2
    from PIL import Image

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ToolError(f"{path.name}: not a video that can be read (damaged, truncated or "
                            "in an unknown format).")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not (0 < fps < 1000) or frame_count <= 0:
            raise ToolError(f"{path.name}: the video's length or frame rate cannot be read "
                            "(is it damaged or truncated?).")
        wanted = sorted({min(frame_count - 1, int((i + 0.5) * frame_count / count))
                         for i in range(max(1, min(count, frame_count)))})
        frames = []
        for index in wanted:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if ok:
                frames.append((index / fps, Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))))
    finally:
        capture.release()
    if not frames:
        raise ToolError(f"{path.name}: no frame of the video could be decoded "
                        "(is it damaged or truncated?).")
    return frame_count / fps, frames
