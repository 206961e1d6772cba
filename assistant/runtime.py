"""Wiring: build the tools from settings (the registry finds them; no list to edit here)."""

from __future__ import annotations

from assistant.config import Settings
from tools.registry import ToolRegistry, model_specs, tool_settings


def build_tools(settings: Settings) -> ToolRegistry:
    """All tools, configured from ``settings``; nothing heavy is imported or loaded here."""
    values = {setting.variable: settings.tool_value(setting.variable) for setting in tool_settings()}
    sources = {spec.variable: settings.model(spec.variable) for spec in model_specs()}
    return ToolRegistry.build(sources, values, settings.device)
