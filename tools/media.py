"""What kind of media a file holds, judged by its content, and the input limits.

Decoding lives with the tool that needs it (audio in ``tools.audio``, images in
``tools.image``); this module only looks at files.
"""

from __future__ import annotations

from pathlib import Path

from tools.base import ToolError

KINDS = ("image", "audio", "video", "document")

_IMAGE_MIMES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                "image/tiff", "image/x-icon", "image/vnd.microsoft.icon"}
#: Containers that may hold audio only or video: probed to tell which.
_CONTAINER_MIMES = {"video/mp4", "video/quicktime", "video/x-matroska", "video/webm",
                    "video/x-msvideo", "video/x-flv", "video/3gpp", "video/mpeg",
                    "audio/ogg", "audio/mp4", "audio/x-m4a", "audio/m4a"}


def check_file(path: Path, max_bytes: int | None = None) -> int:
    """Size of a readable, non-empty file within ``max_bytes``; :class:`ToolError` otherwise."""
    if not path.exists():
        raise ToolError(f"{path.name}: no such file.")
    if not path.is_file():
        raise ToolError(f"{path.name}: not a regular file.")
    size = path.stat().st_size
    if size == 0:
        raise ToolError(f"{path.name}: the file is empty.")
    if max_bytes is not None and size > max_bytes:
        raise ToolError(f"{path.name}: the file is too large ({size / 1e6:.1f} MB; "
                        f"the limit is {max_bytes / 1e6:.0f} MB, set by ASSISTANT_MAX_FILE_MB).")
    return size


def sniff_kind(path: Path) -> str:
    """``image``, ``audio``, ``video`` or ``document``, from the file's bytes, not its name."""
    import filetype

    kind = filetype.guess(str(path))
    mime = kind.mime if kind else ""
    if mime in _IMAGE_MIMES:
        return "image"
    if mime in _CONTAINER_MIMES or mime.startswith("video/"):
        return _probe_streams(path) or "document"
    if mime.startswith("audio/"):
        return "audio"
    if not mime:
        # MPEG audio without an ID3 tag and raw ADTS AAC have no magic filetype knows.
        return _probe_streams(path) or "document"
    return "document"


def _probe_streams(path: Path) -> str | None:
    """``video`` if the container has a real video stream, ``audio`` if only audio, else None."""
    import av

    try:
        with av.open(str(path)) as container:
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
