"""`assistant analyze`: run the matching tool on files or text, without the language model.

Each input is handled on its own: a bad one is reported and the others still run;
the exit status is 1 if any input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assistant.attachments import Attachment, AttachmentStore
from assistant.config import Settings
from assistant.runtime import build_tools
from tools.base import Progress, Tool, ToolContext, ToolError, ToolResult
from tools.media import printable
from tools.registry import ToolRegistry, analyze_options


class Analyzer:
    """Runs tools on CLI inputs and prints each outcome as soon as it is known."""

    def __init__(self, args: argparse.Namespace, settings: Settings, tools: ToolRegistry) -> None:
        self.args, self.settings, self.tools = args, settings, tools
        self.store = AttachmentStore(max_bytes=settings.max_file_bytes)
        self.output_dir = Path(args.output_dir or ".").expanduser()
        self.failures = 0
        self._load_errors: dict[str, ToolError] = {}

    def run(self) -> int:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.args.text:
            self._texts(self.args.text)
        for name in self.args.files:
            self._file(name)
        return 1 if self.failures else 0

    # -- inputs -----------------------------------------------------------------

    def _texts(self, texts: list[str]) -> None:
        blank = [text for text in texts if not text.strip()]
        for text in blank:
            self._error(text, "the text is empty.")
        texts = [text for text in texts if text.strip()]
        if not texts:
            return
        try:
            tool = self._loaded("sentiment")
            batched = getattr(tool, "classify", None)  # here; on a tools service, text by text
            results = batched(texts) if batched else [
                tool.call({"text": text}, ToolContext(self.store, self.output_dir)) for text in texts]
        except ToolError as exc:
            for text in texts:
                self._error(text, str(exc))
            return
        for text, result in zip(texts, results):
            self._print(text, result)

    def _file(self, name: str) -> None:
        try:
            attachment = self.store.register(name)
            tool = self._loaded(self._choose(attachment))
            with self._progress(attachment) as progress:
                # A tool whose model runs on Ollama (vision) asks the configured language model's server.
                ctx = ToolContext(self.store, self.output_dir, progress, llm_model=self.settings.llm_model)
                result = tool.call(self._arguments(tool, attachment), ctx)
        except ToolError as exc:
            self._error(name, str(exc))
        except Exception as exc:  # a bug in a tool must not cost the other inputs
            self._error(name, f"unexpected error ({type(exc).__name__}: {exc}).")
        else:
            self._print(name, result)

    def _choose(self, attachment: Attachment) -> str:
        """--tool if given (or the tool sharing its model that takes this kind: detect on a
        video means video), else the tool that runs on this kind by itself."""
        wanted = self.args.tool
        if wanted:
            tool = self.tools.get(wanted)
            if attachment.kind in tool.kinds or tool.model is None:
                return wanted
            siblings = [other for other in self.tools if other.model is not None
                        and other.model.variable == tool.model.variable and attachment.kind in other.kinds]
            return siblings[0].name if siblings else wanted
        routed = self.tools.routed(attachment.kind, "")  # no words: what every such file gets
        if not routed:
            raise ToolError(f"{attachment.name}: no tool analyses {attachment.kind} files "
                            "(photos, audio, video and UTF-8 text can be analysed).")
        return routed[0].name

    def _arguments(self, tool: Tool, attachment: Attachment) -> dict[str, Any]:
        """The tool's routed arguments for the file, and the analyze options it has."""
        arguments = tool.routed_arguments(attachment.id, self.store)
        for option in analyze_options():
            value = getattr(self.args, option.param, None)
            if value is not None and option.param in tool.Params.model_fields:
                arguments[option.param] = value
        return arguments

    def _loaded(self, name: str) -> Any:
        """The tool with its model loaded; a model that failed once is not retried per input."""
        if name in self._load_errors:
            raise self._load_errors[name]
        tool = self.tools.get(name)
        try:
            tool.ensure_loaded()
        except ToolError as exc:
            self._load_errors[name] = exc
            raise
        return tool

    # -- output -----------------------------------------------------------------

    def _print(self, name: str, result: ToolResult) -> None:
        if self.args.json:
            print(json.dumps({"input": name, **result.to_json()}, ensure_ascii=False), flush=True)
            return
        print(f"{printable(name)}\n  {result.summary()}")
        for output in result.outputs:
            print(f"  annotated: {printable(output)}")
        print(flush=True)

    def _error(self, name: str, message: str) -> None:
        self.failures += 1
        if self.args.json:
            print(json.dumps({"input": name, "error": message}, ensure_ascii=False), flush=True)
        else:
            print(f"{printable(name)}\n  error: {printable(message)}\n", flush=True)

    @contextmanager
    def _progress(self, attachment: Attachment) -> Iterator[Progress | None]:
        """A progress bar on standard error for long work, when it is a terminal."""
        if not sys.stderr.isatty():
            yield None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        with Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                 TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(attachment.name, total=1.0)
            update: Callable[[float, str], None] = (
                lambda fraction, message: bar.update(task, completed=fraction,
                                                     description=f"{attachment.name}: {message}"))
            yield update


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.files and not args.text:
        print("assistant analyze: give one or more FILEs or --text \"...\" "
              "(see `assistant analyze --help`).", file=sys.stderr)
        return 2
    return Analyzer(args, settings, build_tools(settings)).run()
