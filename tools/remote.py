"""The same tools' calls sent to a tools service (``ASSISTANT_TOOLS_URL``).

Everything that is a tool's own knowledge stays here, in the local tool: its name, schema,
routing, triggers, result lines, ``analyze`` flags. Only the work moves: :meth:`RemoteTool.call`
sends the validated arguments and the attachment's file to the service
(``adapters/tools_service``: uvicorn on one box, or Ray Serve on a cluster), shows its progress
lines through ``ctx.report`` as a local run would, downloads the files it wrote into
``ctx.output_dir``, and rebuilds the :class:`~tools.base.ToolResult` with the same type.

The wire format (one place, used by the service too): ``POST /tools/{name}`` with the file as
the body (arguments in the ``X-Tool-Arguments`` header, ASCII JSON) or, without a file, the JSON
body ``{"arguments": {...}}``; the answer is NDJSON: ``{"progress": [fraction, text]}`` lines,
blank keep-alive lines, then ``{"result": {...}, "type": ..., "job": ...}`` or
``{"error": text, "kind": ...}`` with the kind of error a local call raises.

httpx is imported when the first call is made (this module is imported with the tools).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from tools.base import (ATTACHMENT_ARGUMENT, BadCall, Cancelled, ModelLoadError, Tool, ToolContext,
                        ToolError, ToolResult, short_reason)
from tools.settings import Setting
from tools.media import megabytes

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Headers of a call with a file: its arguments (ASCII JSON) and the file's name (URL-quoted).
ARGUMENTS_HEADER = "x-tool-arguments"
FILE_NAME_HEADER = "x-file-name"
#: The service sends a blank line this often while a tool works (the client's cancel and
#: dead-server checks run on every line).
KEEPALIVE_S = 1.0
NDJSON = "application/x-ndjson"


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return text.rstrip("/")


def _names(text: str) -> tuple[str, ...]:
    from tools.registry import tool_names

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in tool_names()]
    if unknown:
        raise ValueError(f"no tool is named {', '.join(unknown)}")
    return names


URL = Setting("ASSISTANT_TOOLS_URL", None, check=_http_url, allowed="an http(s) URL")
TOKEN = Setting("ASSISTANT_TOOLS_TOKEN", None)
REMOTE_TOOLS = Setting("ASSISTANT_REMOTE_TOOLS", (), check=_names,
                       allowed="tool names separated by commas")
TIMEOUT = Setting("ASSISTANT_TOOLS_TIMEOUT", 30.0, float, minimum=1.0)


# -- the wire format: errors and results as JSON, both ways --------------------------------

ERROR_KINDS: dict[type[ToolError], str] = {BadCall: "bad_call", ModelLoadError: "model_load",
                                           ToolError: "tool_error"}


def error_event(exc: ToolError) -> dict[str, Any]:
    """A tool's error as a line of the answer (its kind kept, a model's load error whole)."""
    kind = next(name for cls, name in ERROR_KINDS.items() if isinstance(exc, cls))
    event: dict[str, Any] = {"error": str(exc), "kind": kind}
    if isinstance(exc, ModelLoadError):
        event["model"] = {"what": exc.what, "source": exc.source, "variable": exc.variable,
                          "reason": exc.reason}
    return event


def error_from(event: Mapping[str, Any]) -> ToolError:
    """The error a local call would have raised, from its line (:func:`error_event`)."""
    model = event.get("model")
    if event.get("kind") == "model_load" and isinstance(model, dict):
        return ModelLoadError(model["what"], model["source"], model["variable"], model["reason"])
    return (BadCall if event.get("kind") == "bad_call" else ToolError)(str(event.get("error")))


def result_event(result: ToolResult, job: str) -> dict[str, Any]:
    """A result as a line of the answer: its fields (files by name, fetched from ``job``) and
    its type."""
    data = result.to_json()
    data["outputs"] = [Path(output).name for output in result.outputs]
    return {"result": data, "type": type(result).__name__, "job": job}


def result_type(tool: Any, name: str) -> type[ToolResult]:
    """The result class ``name`` of ``tool``'s module (the type a local call returns)."""
    found = vars(sys.modules[type(tool).__module__]).get(name)
    if isinstance(found, type) and issubclass(found, ToolResult):
        return found
    raise ToolError(f"the service answered with a result type this assistant does not know ({name}); "
                    "is it running the same version?")


# -- the client ---------------------------------------------------------------------------

class ToolsService:
    """A tools service at ``url``: its health and the tools' calls (thread-safe)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT.default) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._client: httpx.Client | None = None
        self._health: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                self._client = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(
                    self.timeout, connect=min(self.timeout, 5.0)))
            return self._client

    def health(self, fresh: bool = False, what: str = "the tools service") -> dict[str, Any]:
        """``GET /health``: the tools served, the models loaded, the device, the file limit
        (asked once; errors name ``what`` asked)."""
        if self._health is None or fresh:
            with self._errors(what):
                response = self.client.get("/health")
                self._check(response, what)
                self._health = response.json()
        return self._health

    def serves(self, name: str) -> None:
        """:class:`ToolError` unless the service runs the tool ``name``."""
        if name not in self.health(what=f"the {name} tool").get("tools", []):
            raise ToolError(f"The tools service at {self.url} does not run the {name} tool "
                            f"(it runs: {', '.join(self.health().get('tools', [])) or 'none'}).")

    def call(self, tool: Tool[Any], arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Run ``tool`` on the service as :meth:`Tool.call` runs it here: the same checks and
        errors, progress through ``ctx``, its files into ``ctx.output_dir``, the same result."""
        params = tool.validate(arguments).model_dump(mode="json", exclude_none=True)
        path = None
        if ATTACHMENT_ARGUMENT in params:
            path = ctx.attachments.path_of(params[ATTACHMENT_ARGUMENT], tool.kinds)
        self.serves(tool.name)
        limit = int(self.health().get("max_file_bytes") or 0)
        if path is not None and limit and path.stat().st_size > limit:
            raise ToolError(f"{path.name} is {megabytes(path.stat().st_size)}; the {tool.name} tool's "
                            f"service at {self.url} takes files up to {megabytes(limit)}.")
        with self._errors(f"the {tool.name} tool"):
            with self._request(tool.name, params, path) as response:
                self._check(response, f"the {tool.name} tool")
                event = self._answer(tool.name, response.iter_lines(), ctx)
            if "error" in event:
                raise error_from(event)
            result = result_type(tool, event["type"]).model_validate(event["result"])
        outputs = self._fetch(event["job"], result.outputs, ctx.output_dir)
        return result.model_copy(update={"outputs": outputs})

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- the parts of a call ---------------------------------------------------------------

    def _request(self, name: str, params: dict[str, Any], path: Path | None) -> Any:
        if path is None:
            return self.client.stream("POST", f"/tools/{name}", json={"arguments": params})
        headers = {ARGUMENTS_HEADER: json.dumps(params), FILE_NAME_HEADER: quote(path.name),
                   "Content-Type": "application/octet-stream"}
        return self.client.stream("POST", f"/tools/{name}", headers=headers,
                                  content=_chunks(path))

    def _answer(self, name: str, lines: Iterator[str], ctx: ToolContext) -> dict[str, Any]:
        """Progress lines to ``ctx.report`` until the result or error line; leaving early (a
        cancel) closes the stream, which stops the job on the service."""
        for line in lines:
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise Cancelled()  # as a local run stops; leaving closes the stream
            if not line.strip():
                continue
            event = json.loads(line)
            if "progress" in event:
                ctx.report(*event["progress"])
            elif "result" in event or "error" in event:
                return event
        raise ToolError(f"The {name} tool's service at {self.url} stopped answering in the middle "
                        "of the job; try again.")

    def _fetch(self, job: str, names: list[str], folder: Path) -> list[str]:
        """The job's files, downloaded into ``folder``; the result stands without those that
        could not be fetched (a service that died just now), which are logged."""
        import httpx

        paths = []
        try:
            for name in names:
                paths.append(str(self._download(job, name, folder)))
            self.client.delete(f"/jobs/{job}")
        except (httpx.HTTPError, ToolError) as exc:
            log.warning("files of job %s at %s not fetched: %s", job, self.url, short_reason(exc))
        return paths

    def _download(self, job: str, name: str, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        partial = target.with_name(target.name + ".part")
        with self.client.stream("GET", f"/jobs/{job}/files/{quote(name)}") as response:
            self._check(response, "the tools service")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        partial.replace(target)
        return target

    def _check(self, response: httpx.Response, what: str) -> None:
        """A refused request as one sentence naming ``what`` and the URL."""
        if response.status_code == 200:
            return
        response.read()
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text.strip()[:200] or f"HTTP {response.status_code}"}
        if response.status_code == 401:
            why = "is wrong" if self.token else "is not set"
            raise ToolError(f"{_service_of(what)} at {self.url} refused the token "
                            f"(ASSISTANT_TOOLS_TOKEN {why}).")
        if "kind" in body and response.status_code in (400, 404, 413, 422):
            raise error_from(body)
        raise ToolError(f"{_service_of(what)} at {self.url} refused the call: {body.get('error')}")

    def _errors(self, what: str) -> Any:
        return _http_errors(self.url, _service_of(what), self.timeout)


class _http_errors:
    """Turns httpx's errors (server down, timeout, connection lost) into one sentence naming
    ``what`` and the URL."""

    def __init__(self, url: str, what: str, timeout: float) -> None:
        self.url, self.what, self.timeout = url, what, timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        import httpx

        if exc is None or not isinstance(exc, httpx.HTTPError):
            return False
        if isinstance(exc, httpx.ConnectError):
            why = "cannot be reached (is it running?)"
        elif isinstance(exc, httpx.TimeoutException):
            why = f"did not answer within {self.timeout:g} s (ASSISTANT_TOOLS_TIMEOUT)"
        else:
            why = f"broke off ({short_reason(exc)})"
        raise ToolError(f"{self.what} at {self.url} {why}.") from None


def _service_of(what: str) -> str:
    """``the video tool`` → ``The video tool's service``; ``the tools service`` → ``The tools service``."""
    subject = f"{what}'s service" if what.endswith("tool") else what
    return subject[:1].upper() + subject[1:]


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(size):
            yield chunk


class RemoteTool:
    """A tool whose work runs on a tools service. Its knowledge (the :class:`Tool` contract:
    name, schema, routing, triggers, validation, result types) is the local tool's; only
    :meth:`call` and the model's state go to the service."""

    def __init__(self, local: Tool[Any], service: ToolsService) -> None:
        self.local, self.service = local, service

    def __getattr__(self, name: str) -> Any:
        if name in _CONTRACT:
            return getattr(self.local, name)
        raise AttributeError(f"{self.local.name} runs on {self.service.url}: {name} is not "
                             "part of the tool contract")

    def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return self.service.call(self.local, arguments, ctx)

    def ensure_loaded(self) -> None:
        """The tool is served there (its model loads there, on its first call)."""
        self.service.serves(self.local.name)

    @property
    def loaded(self) -> bool:
        try:
            return bool(self.service.health(fresh=True).get("loaded", {}).get(self.local.name))
        except ToolError:
            return False

    def source(self) -> str:
        return f"{self.service.url} (tools service)"


#: What :class:`RemoteTool` takes from the local tool: the public contract of :class:`Tool`.
_CONTRACT = (frozenset(name for name in dir(Tool) if not name.startswith("_")) - {"run", "create"}
             | {"name", "description", "Params"})


def remote_registry(tools: Any, service: ToolsService, names: tuple[str, ...] = ()) -> list[Any]:
    """``tools`` with those named in ``names`` (every one when empty) sent to ``service``, but
    for those whose model runs on the language model's server (they ask it from here)."""
    return [RemoteTool(tool, service) if (not names or tool.name in names) and not tool.on_model_server
            else tool for tool in tools]

