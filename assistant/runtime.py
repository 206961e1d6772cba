"""Wiring: build the tools from settings (the registry finds them; no list to edit here), here
or, with ASSISTANT_TOOLS_URL, on a tools service (``tools/remote.py``)."""

from __future__ import annotations

from assistant.config import Settings
from tools.base import ModelServer
from tools.registry import ToolRegistry, model_specs, tool_settings
from tools.remote import ToolsService, remote_registry


def build_tools(settings: Settings, *, local: bool = False) -> ToolRegistry:
    """All tools, configured from ``settings``; nothing heavy is imported or loaded here.

    With ``settings.tools_url`` (and not ``local``: the tools service itself), the tools of
    ``settings.remote_tools`` (all when empty) run on that service."""
    values = {setting.variable: settings.tool_value(setting.variable) for setting in tool_settings()}
    sources = {spec.variable: settings.model(spec.variable) for spec in model_specs()}
    server = ModelServer(settings.ollama_host, settings.llm_num_ctx, settings.llm_keep_alive,
                         serves_chat=settings.llm_api == "ollama")
    tools = ToolRegistry.build(sources, values, settings.device, server)
    if settings.tools_url and not local:
        service = ToolsService(settings.tools_url, settings.tools_token, settings.tools_timeout)
        tools = ToolRegistry(remote_registry(tools, service, settings.remote_tools))
    tools.capacity = settings.heavy_jobs
    return tools
