"""Running the tools in this process for the service: each call in a worker thread, its progress
as events, stopped between frames or chunks when the caller goes away.

Used by ``assistant serve-tools`` (the whole service in one process) and by the model
deployments of Ray Serve (each one runs its own tools this way).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

from tools.base import BadCall, ToolContext, ToolError, ToolResult, select_device
from tools.registry import ToolRegistry


class Stopped(Exception):
    """The caller went away: raised in the tool at its next progress report."""


class Upload:
    """The one file of a call, under the attachment id its caller gave it."""

    def __init__(self, attachment_id: str, path: Path) -> None:
        self.attachment_id, self.path = attachment_id, path

    def path_of(self, attachment_id: str, kinds: Collection[str]) -> Path:
        """The uploaded file (its kind was checked by the caller, who registered it)."""
        if attachment_id != self.attachment_id:
            raise BadCall(f"Unknown attachment id {attachment_id!r} (this call sent "
                          f"{self.attachment_id!r}).")
        return self.path


class _NoFile:
    def path_of(self, attachment_id: str, kinds: Collection[str]) -> Path:
        raise BadCall(f"Unknown attachment id {attachment_id!r} (this call sent no file).")


class LocalBackend:
    """The tools of ``registry`` (those in ``names``, or all), run in this process; not those
    whose model runs on the language model's server (vision: its clients ask Ollama themselves).

    ``batched``: wraps a tool's loaded model in one that takes concurrent calls (Ray Serve's
    DETR batches); the tools' calls then run side by side instead of one at a time."""

    def __init__(self, registry: ToolRegistry, names: Collection[str] = (),
                 device: str | None = None, batched: Callable[[Any], Any] | None = None) -> None:
        self.tools = {tool.name: tool for tool in registry
                      if (not names or tool.name in names) and not tool.on_model_server}
        self.batched = batched
        self._wrapped: set[str] = set()
        self._wrapping = threading.Lock()
        self._device_setting = device
        self._device: str | None = None
        self.running = 0  # calls whose tool is still at work (a stopped one until it stops)
        self._count = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def describe(self) -> list[dict[str, Any]]:
        """Each tool's name, the attachment kinds it takes and its function schema."""
        return [{"name": tool.name, "kinds": sorted(tool.kinds), "schema": tool.schema()}
                for tool in self.tools.values()]

    async def health(self) -> dict[str, Any]:
        if self._device is None:  # imports torch: once, off the event loop
            self._device = await asyncio.to_thread(self._select_device)
        return {"loaded": {name: tool.loaded for name, tool in self.tools.items()},
                "device": self._device, "running": self.running}

    def _select_device(self) -> str:
        try:
            return select_device(self._device_setting)
        except ToolError as exc:
            return f"unusable: {exc}"

    async def run(self, name: str, arguments: dict[str, Any], upload: Upload | None,
                  output_dir: Path) -> AsyncIterator[dict[str, Any]]:
        """Events of one call: ``{"progress": (fraction, text)}``, then ``{"result": ToolResult}``
        or ``{"error": ToolError}``. Closing the iterator early stops the tool at its next
        progress report (the thread then ends by itself)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def report(fraction: float, message: str) -> None:
            if stop.is_set():
                raise Stopped
            loop.call_soon_threadsafe(events.put_nowait, {"progress": (fraction, message)})

        def work() -> None:
            ctx = ToolContext(upload or _NoFile(), output_dir, progress=report)
            try:
                event = self._call(name, arguments, ctx)
            except Stopped:
                return
            if not stop.is_set():
                with contextlib.suppress(RuntimeError):  # the server stopped meanwhile
                    loop.call_soon_threadsafe(events.put_nowait, event)

        threading.Thread(target=work, name=f"tool {name}", daemon=True).start()
        try:
            while True:
                event = await events.get()
                yield event
                if "progress" not in event:
                    return
        finally:
            stop.set()

    def _run(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        tool = self.tools[name]
        if self.batched is None:
            return tool.call(arguments, ctx)  # one call of a tool at a time
        params = tool.validate(arguments)
        with self._wrapping:
            if name not in self._wrapped:
                tool.ensure_loaded()
                tool._model = self.batched(tool._model)  # noqa: SLF001 - what ``run`` uses
                self._wrapped.add(name)
        return tool.run(params, ctx)

    def _call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """The result or error event of one call (counted in :attr:`running` while it runs)."""
        with self._count:
            self.running += 1
        try:
            return {"result": self._run(name, arguments, ctx)}
        except ToolError as exc:
            return {"error": exc}
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - a tool's bug is its caller's error line
            return {"error": ToolError(f"{name} failed unexpectedly: {type(exc).__name__}: {exc}")}
        finally:
            with self._count:
                self.running -= 1



def result_files(result: ToolResult) -> dict[str, bytes]:
    """The files a result names, by name (for a caller on another machine)."""
    return {Path(output).name: Path(output).read_bytes() for output in result.outputs}
