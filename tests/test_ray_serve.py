"""The tools service on a real Ray Serve: deploy/serve.yaml deployed with ``serve run`` on one
local Ray (2 CPUs, no dashboard, a small object store, loopback), the same client as for
``serve-tools``. Skipped without the ``[serve]`` extra; under CI=true it must run."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from assistant.runtime import build_tools
from tools.base import ToolContext, ToolError
from tools.registry import ToolRegistry
from tools.remote import RemoteTool, ToolsService

from tests.serving import TOKEN, ray_config, start_ray_serve, stop_ray_serve

try:
    import ray  # noqa: F401
except ImportError as exc:  # the [serve] extra is not installed
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true: the Ray Serve tests need the [serve] extra") from exc
    pytest.skip(f"Ray Serve is not installed ({exc}); pip install -e \".[serve]\"",
                allow_module_level=True)


@pytest.fixture(scope="module")
def ray_service(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Ray with the tools deployed from the config file; torn down after."""
    url = start_ray_serve(ray_config(models_dir, tmp_path_factory.mktemp("ray")))
    yield url
    stop_ray_serve()


@pytest.fixture(scope="module")
def local_tools(models_dir: Path) -> ToolRegistry:
    return build_tools(Settings.from_env({"ASSISTANT_MODELS_DIR": str(models_dir), "ASSISTANT_DEVICE": "cpu"}))


def test_the_tools_on_ray_serve_give_what_they_give_here(ray_service: str, local_tools: ToolRegistry,
                                                         media: Path, tmp_path: Path) -> None:
    """Photos (batched DETR), a video, audio and text: the same results and files as here;
    progress; a wrong token is one sentence."""
    service = ToolsService(ray_service, TOKEN, timeout=120)
    store = AttachmentStore()
    photo = store.register(media / "images" / "inet_zebra.jpg")
    clip = store.register(media / "video" / "car_traffic_small.mp4")
    siren = store.register(media / "audio" / "us8k_siren_102853-8-0-0.wav")
    calls = [("image", {"attachment_id": photo.id}), ("detect", {"attachment_id": photo.id, "threshold": 0.05}),
             ("video", {"attachment_id": clip.id, "max_frames": 2, "threshold": 0.05}),
             ("audio", {"attachment_id": siren.id}), ("sentiment", {"text": "Очень понравилось!"})]
    for name, arguments in calls:
        progress: list[tuple[float, str]] = []
        local = local_tools.get(name).call(arguments, ToolContext(store, tmp_path / "here"))
        remote = RemoteTool(local_tools.get(name), service).call(
            arguments, ToolContext(store, tmp_path / "there", lambda f, m: progress.append((f, m))))
        assert type(remote) is type(local)
        assert remote.model_dump(exclude={"outputs"}) == local.model_dump(exclude={"outputs"}), name
        for mine, theirs in zip(local.outputs, remote.outputs, strict=True):
            assert Path(theirs).read_bytes() == Path(mine).read_bytes()
        if name == "video":
            assert progress and progress[-1] == (1.0, "done")

    # Four photos at once: DETR sees them together (one shape: one forward pass).
    results: list[object] = [None] * 4

    def detect(index: int) -> None:
        results[index] = RemoteTool(local_tools.get("detect"), service).call(
            {"attachment_id": photo.id, "threshold": 0.05}, ToolContext(store, tmp_path / f"p{index}"))

    threads = [threading.Thread(target=detect, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    single = local_tools.get("detect").call({"attachment_id": photo.id, "threshold": 0.05},
                                            ToolContext(store, tmp_path / "single"))
    for result in results:
        assert result.labels == single.labels  # type: ignore[attr-defined]

    with pytest.raises(ToolError, match="refused the token"):
        RemoteTool(local_tools.get("image"), ToolsService(ray_service, "nope")).call(
            {"attachment_id": photo.id}, ToolContext(store, tmp_path))
