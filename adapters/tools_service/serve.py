"""`assistant serve-tools`: the tools service on one machine (the GPU box), with uvicorn."""

from __future__ import annotations

import argparse
import sys

from assistant.config import Settings
from tools.registry import tool_names

DEFAULT_PORT = 8765


def chosen_tools(text: str | None) -> list[str]:
    """``--tools a,b`` as names (all tools when not given); ValueError naming unknown ones."""
    if not text:
        return tool_names()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in tool_names()]
    if unknown or not names:
        raise ValueError(f"--tools: no tool is named {', '.join(unknown) or repr(text)} "
                         f"(the tools: {', '.join(tool_names())})")
    return names


def run(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.tools_service.app import create_app, is_loopback

    try:
        names = chosen_tools(args.tools)
    except ValueError as exc:
        print(f"assistant serve-tools: {exc}", file=sys.stderr)
        return 2
    if not settings.tools_token and not is_loopback(args.host):
        print(f"assistant serve-tools: refusing to serve on {args.host} without a token: anyone "
              "who can reach it could run the tools. Set ASSISTANT_TOOLS_TOKEN (the clients set "
              "the same), or serve on 127.0.0.1.", file=sys.stderr)
        return 2
    import uvicorn

    from adapters.tools_service.local import LocalBackend
    from assistant.runtime import build_tools

    backend = LocalBackend(build_tools(settings, local=True), names, settings.device)
    app = create_app(backend, token=settings.tools_token, max_file_bytes=settings.max_file_bytes)
    print(f"assistant serve-tools: {', '.join(names)} on http://{args.host}:{args.port} "
          f"({'bearer token required' if settings.tools_token else 'this machine only'}); "
          "Ctrl-C stops it.", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=2)
    return 0
