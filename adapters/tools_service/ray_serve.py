"""The tools service on a Ray cluster: ``serve run deploy/serve.yaml`` (the ``[serve]`` extra).

One deployment per model (``detect`` and ``video`` share DETR: ``detect_video``), each running
its tools as ``assistant serve-tools`` does (:class:`LocalBackend`), so each can have its own
replicas, GPU fraction and autoscaling (set in the config file). The ingress (``tools``) is the
same ASGI app as ``serve-tools``, over handles to those deployments. In the DETR deployment,
the frames and photos of concurrent calls go through the model together (``@serve.batch``),
grouped by image shape and threshold.

Settings come from the environment of the replicas (the config file's ``runtime_env``
``env_vars``): the same ``ASSISTANT_*`` variables as everywhere.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from adapters.tools_service.app import create_app
from adapters.tools_service.local import LocalBackend, Upload, result_files
from assistant.config import Settings
from assistant.runtime import build_tools
from tools.registry import model_specs, users_of
from tools.remote import error_event, error_from

#: The DETR deployment's batches: at most this many images, waiting at most this long for more.
DETR_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}


def deployment_names() -> dict[str, tuple[str, ...]]:
    """Each model's deployment name and its tools (``detect_video``: detect, video)."""
    return {"_".join(users_of(spec)): tuple(users_of(spec)) for spec in model_specs()}


class ModelServer:
    """One model's tools on a replica; a call's events are plain data (no exceptions cross)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        settings = Settings.from_env()
        self.backend = LocalBackend(build_tools(settings, local=True), names, settings.device,
                                    batched=self._batched_model if "detect" in names else None)
        self.loop: asyncio.AbstractEventLoop | None = None  # the replica's, known once it runs
        self.detr = {"images": 0, "forward_passes": 0, "largest_batch": 0}  # the batching, in health

    async def health(self) -> dict[str, Any]:
        return {**await self.backend.health(), **({"detr": self.detr} if self.detr["images"] else {})}

    async def run(self, name: str, arguments: dict[str, Any], attachment_id: str | None,
                  file_name: str, data: bytes | None) -> AsyncIterator[dict[str, Any]]:
        self.loop = asyncio.get_running_loop()
        folder = Path(tempfile.mkdtemp(prefix="assistant-job-"))
        try:
            upload = None
            if attachment_id is not None and data is not None:
                (folder / "in").mkdir()
                path = folder / "in" / Path(file_name).name
                path.write_bytes(data)
                upload = Upload(attachment_id, path)
            (folder / "out").mkdir()
            async for event in self.backend.run(name, arguments, upload, folder / "out"):
                if "error" in event:
                    yield error_event(event["error"])
                elif "result" in event:
                    yield {**event, "files": result_files(event["result"])}
                else:
                    yield event
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- DETR: images of concurrent calls in one forward pass -------------------------------

    def _batched_model(self, detr: Any) -> Any:
        return _BatchedDetr(detr, self)

    @serve.batch(**DETR_BATCH)
    async def detect_batch(self, requests: list[tuple[Any, Any, float, Any]]) -> list[Any]:
        """``(detr, image, threshold, size)`` requests → each one's detections; images of one
        shape, threshold and size share a forward pass."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, (_, image, threshold, size) in enumerate(requests):
            shape = image.shape if hasattr(image, "shape") else (image.height, image.width)
            groups.setdefault((tuple(shape), threshold, repr(size)), []).append(index)
        found: list[Any] = [None] * len(requests)
        for indices in groups.values():
            detr, _, threshold, size = requests[indices[0]]
            images = [requests[index][1] for index in indices]
            results = await asyncio.to_thread(detr.detect_many, images, threshold, size)
            self.detr["images"] += len(images)
            self.detr["forward_passes"] += 1
            self.detr["largest_batch"] = max(self.detr["largest_batch"], len(images))
            for index, result in zip(indices, results):
                found[index] = result
        return found


class _BatchedDetr:
    """The DETR model as the tools see it (``detect``), each image sent to the batch."""

    def __init__(self, detr: Any, server: ModelServer) -> None:
        self.detr, self.server = detr, server

    def detect(self, image: Any, threshold: float, size: Any = None) -> Any:
        assert self.server.loop is not None  # a call is running
        call = self.server.detect_batch((self.detr, image, threshold, size))
        return asyncio.run_coroutine_threadsafe(call, self.server.loop).result()


class ToolsIngress:
    """The HTTP API (the ASGI app of ``serve-tools``) over the model deployments."""

    def __init__(self, **handles: DeploymentHandle) -> None:
        self.handles = handles

    def __serve_build_asgi_app__(self) -> Any:
        settings = Settings.from_env()
        return create_app(_RayBackend(self.handles, build_tools(settings, local=True)),
                          token=settings.tools_token, max_file_bytes=settings.max_file_bytes)


class _RayBackend:
    """What runs the tools: the model deployments, through their handles."""

    def __init__(self, handles: dict[str, DeploymentHandle], registry: Any) -> None:
        self.deployment_of = {tool: handles[deployment]
                              for deployment, tools in deployment_names().items()
                              if deployment in handles for tool in tools}
        self.local = LocalBackend(registry, list(self.deployment_of))  # schemas only: nothing loads

    @property
    def names(self) -> list[str]:
        return list(self.deployment_of)

    def describe(self) -> list[dict[str, Any]]:
        return self.local.describe()

    async def health(self) -> dict[str, Any]:
        handles = list({id(handle): handle for handle in self.deployment_of.values()}.values())
        answers = await asyncio.gather(*(handle.health.remote() for handle in handles))
        loaded = {name: state for answer in answers for name, state in answer["loaded"].items()}
        devices = sorted({answer["device"] for answer in answers})
        detr = [answer["detr"] for answer in answers if "detr" in answer]
        return {"loaded": loaded, "device": ", ".join(devices),
                "running": sum(answer["running"] for answer in answers), **({"detr": detr[0]} if detr else {})}

    async def run(self, name: str, arguments: dict[str, Any], upload: Upload | None,
                  output_dir: Path) -> AsyncIterator[dict[str, Any]]:
        data = await asyncio.to_thread(upload.path.read_bytes) if upload is not None else None
        stream = self.deployment_of[name].options(stream=True).run.remote(
            name, arguments, upload.attachment_id if upload else None,
            upload.path.name if upload else "", data)
        try:
            async for event in stream:
                yield {**event, "error": error_from(event)} if "error" in event else event
        finally:
            stream.cancel()


def build(options: dict[str, Any] | None = None) -> Any:
    """The application: every model's deployment and the ingress (``import_path`` of the config
    file points here; deployment options are the config file's)."""
    model = serve.deployment(ModelServer)
    handles = {name: model.options(name=name).bind(tools) for name, tools in deployment_names().items()}
    return serve.deployment(serve.ingress()(ToolsIngress)).options(name="tools").bind(**handles)


app = build()
