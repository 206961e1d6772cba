"""The command line: the composition root above the channels (adapters) and the core."""

from cli.main import main

__all__ = ["main"]
