"""Wiring: build the tools from settings. The only place that knows every tool class."""

from __future__ import annotations

from assistant.config import Settings
from tools.registry import ToolRegistry


def build_tools(settings: Settings) -> ToolRegistry:
    """All tools, configured from ``settings``; nothing heavy is imported or loaded here."""
    from tools.audio import AudioTool
    from tools.detection import detection_tools
    from tools.image import ImageTool
    from tools.sentiment import SentimentTool

    return ToolRegistry([
        SentimentTool(settings.sentiment_model, device=settings.device),
        AudioTool(settings.audio_model),
        ImageTool(settings.image_weights, device=settings.device),
        *detection_tools(settings.detection_model, device=settings.device,
                         threshold=settings.detection_threshold,
                         video_fps=settings.video_fps, video_max_frames=settings.video_max_frames),
    ])
