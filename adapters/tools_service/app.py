"""The tools over HTTP: one ASGI app (Starlette), whatever runs the tools behind it.

- ``GET /health``: the tools served, which models are loaded, the device, the file limit.
- ``GET /tools``: each tool's name, attachment kinds and function schema.
- ``POST /tools/{name}``: a call (the wire format is ``tools/remote.py``'s); the answer streams
  as NDJSON: progress lines, blank keep-alive lines, then the result or the error.
- ``GET /jobs/{job}/files/{name}``: a file the call wrote (an annotated photo or video);
  ``DELETE /jobs/{job}`` when fetched (unfetched jobs go after an hour).

Every request needs ``Authorization: Bearer <ASSISTANT_TOOLS_TOKEN>`` when a token is set;
without one, only loopback clients are served. A caller that goes away stops its call.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.tools_service.local import Upload
from tools.base import ATTACHMENT_ARGUMENT, BadCall, ToolError, ToolResult
from tools.media import megabytes
from tools.remote import (ARGUMENTS_HEADER, FILE_NAME_HEADER, KEEPALIVE_S, NDJSON, error_event,
                          result_event)

#: Jobs whose files were not fetched are deleted after this many seconds.
JOB_TTL_S = 3600.0


class Backend(Protocol):
    """What runs the tools: this process (``LocalBackend``) or Ray Serve deployments."""

    names: list[str]

    def describe(self) -> list[dict[str, Any]]: ...

    async def health(self) -> dict[str, Any]: ...

    def run(self, name: str, arguments: dict[str, Any], upload: Upload | None,
            output_dir: Path) -> AsyncIterator[dict[str, Any]]: ...


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(backend: Backend, *, token: str | None, max_file_bytes: int,
               jobs_dir: Path | None = None) -> ASGIApp:
    """The service's ASGI app over ``backend``; uploads and written files under ``jobs_dir``
    (a fresh temporary folder when None)."""
    jobs = Path(jobs_dir or tempfile.mkdtemp(prefix="assistant-tools-"))
    service = _Service(backend, jobs, max_file_bytes)
    app = Starlette(routes=[
        Route("/health", service.health, methods=["GET"]),
        Route("/tools", service.tools, methods=["GET"]),
        Route("/tools/{name}", service.call, methods=["POST"]),
        Route("/jobs/{job}/files/{file}", service.file, methods=["GET"]),
        Route("/jobs/{job}", service.forget, methods=["DELETE"]),
    ])
    return _Guard(app, token)


class _Guard:
    """The bearer token when one is set; loopback clients only when none is."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        if self.token is None:
            client = (scope.get("client") or ("", 0))[0]
            if is_loopback(client):
                return None
            return _error(403, "this tools service has no ASSISTANT_TOOLS_TOKEN, so it serves "
                               "only this machine", "auth")
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return None
        return _error(401, "missing or wrong bearer token", "auth")


class _TooLarge(ToolError):
    """A file over the service's limit (HTTP 413)."""


class _Service:
    def __init__(self, backend: Backend, jobs: Path, max_file_bytes: int) -> None:
        self.backend, self.jobs, self.max_file_bytes = backend, jobs, max_file_bytes

    async def health(self, request: Request) -> Response:
        return JSONResponse({"tools": self.backend.names, "max_file_bytes": self.max_file_bytes,
                             **await self.backend.health()})

    async def tools(self, request: Request) -> Response:
        return JSONResponse({"tools": self.backend.describe()})

    async def call(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.backend.names:
            return _error(404, f"this service does not run a tool named {name!r} (it runs: "
                               f"{', '.join(self.backend.names) or 'none'})", "bad_call")
        self._sweep()
        job = uuid.uuid4().hex
        folder = self.jobs / job
        (folder / "out").mkdir(parents=True)
        try:
            arguments, upload = await self._read(request, folder)
        except ToolError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return JSONResponse(error_event(exc), status_code=413 if isinstance(exc, _TooLarge) else 400)
        events = self.backend.run(name, arguments, upload, folder / "out")
        return StreamingResponse(self._lines(events, folder, job), media_type=NDJSON)

    async def _read(self, request: Request, folder: Path) -> tuple[dict[str, Any], Upload | None]:
        """The call's arguments and its file (written under ``folder``, at most the limit)."""
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(await request.body())
                arguments = body["arguments"]
            except (ValueError, KeyError, TypeError):
                raise BadCall('The body is not JSON of the form {"arguments": {...}}.') from None
            if not isinstance(arguments, dict):
                raise BadCall("The arguments are not a JSON object.")
            return arguments, None
        try:
            arguments = json.loads(request.headers.get(ARGUMENTS_HEADER, ""))
        except ValueError:
            raise BadCall(f"The {ARGUMENTS_HEADER} header is not JSON.") from None
        attachment = arguments.get(ATTACHMENT_ARGUMENT) if isinstance(arguments, dict) else None
        if not isinstance(attachment, str):
            raise BadCall(f"A call with a file names it by {ATTACHMENT_ARGUMENT} in its arguments.")
        declared = int(request.headers.get("content-length") or 0)
        if declared > self.max_file_bytes:
            raise self._too_large(declared)
        name = Path(unquote(request.headers.get(FILE_NAME_HEADER, "") or "file")).name or "file"
        path = folder / "in" / name
        path.parent.mkdir()
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_file_bytes:
                    raise self._too_large(size)
                out.write(chunk)
        if size == 0:
            raise BadCall(f"{name}: the file is empty.")
        return arguments, Upload(attachment, path)

    def _too_large(self, size: int) -> ToolError:
        return _TooLarge(f"The file is larger than this service takes ({megabytes(size)}; at most "
                         f"{megabytes(self.max_file_bytes)}, ASSISTANT_MAX_FILE_MB).")

    async def _lines(self, events: AsyncIterator[dict[str, Any]], folder: Path,
                     job: str) -> AsyncIterator[bytes]:
        """The backend's events as NDJSON lines, a blank line each second it is quiet; a
        caller who goes away closes ``events`` (the tool stops) and the job's folder goes."""
        keep = False
        try:
            async with aclosing(events):
                next_event = asyncio.ensure_future(anext(events))
                try:
                    while True:
                        done, _ = await asyncio.wait({next_event}, timeout=KEEPALIVE_S)
                        if not done:
                            yield b"\n"
                            continue
                        event = next_event.result()
                        if "progress" in event:
                            next_event = asyncio.ensure_future(anext(events))
                            yield _line({"progress": list(event["progress"])})
                            continue
                        if "error" in event:
                            yield _line(error_event(event["error"]))
                            return
                        result = self._keep(event, folder / "out")
                        keep = bool(result.outputs)
                        yield _line(result_event(result, job))
                        return
                finally:
                    next_event.cancel()
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _keep(event: dict[str, Any], out: Path) -> ToolResult:
        """The result, its files in ``out`` (those sent from another machine written there)."""
        for name, data in event.get("files", {}).items():
            (out / Path(name).name).write_bytes(data)
        result: ToolResult = event["result"]
        return result

    async def file(self, request: Request) -> Response:
        job, name = request.path_params["job"], Path(request.path_params["file"]).name
        path = self.jobs / Path(job).name / "out" / name
        if not path.is_file():
            return _error(404, f"no file {name!r} in job {job!r} (fetched and deleted, or expired)",
                          "tool_error")
        return FileResponse(path)

    async def forget(self, request: Request) -> Response:
        shutil.rmtree(self.jobs / Path(request.path_params["job"]).name, ignore_errors=True)
        return Response(status_code=204)

    def _sweep(self) -> None:
        """Delete the folders of jobs older than :data:`JOB_TTL_S` (files never fetched)."""
        now = time.time()
        for folder in self.jobs.iterdir():
            try:
                if now - folder.stat().st_mtime > JOB_TTL_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def _error(status: int, message: str, kind: str) -> Response:
    return JSONResponse({"error": message, "kind": kind}, status_code=status)
