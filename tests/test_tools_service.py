"""The tools on a tools service: the client (``tools/remote.py``) against a real
``assistant serve-tools`` in a subprocess on a free loopback port (real YAMNet and Whisper,
random-weight stand-ins of the others), compared with the same tools run here."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from assistant.runtime import build_tools
from tools.base import BadCall, Cancelled, ToolContext, ToolError
from tools.registry import ToolRegistry
from tools.remote import RemoteTool, ToolsService

from tests.serving import TOKEN, Server, free_port, service_env


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("service")
    running = Server(service_env(models_dir, tmp, ASSISTANT_MAX_FILE_MB="2"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def local_tools(models_dir: Path) -> ToolRegistry:
    return build_tools(Settings.from_env({"ASSISTANT_MODELS_DIR": str(models_dir), "ASSISTANT_DEVICE": "cpu"}))


@pytest.fixture()
def service(server: Server) -> Iterator[ToolsService]:
    client = ToolsService(server.url, TOKEN)
    yield client
    client.close()


CASES = {  # tool: (media file, extra arguments)
    "image": ("images/ext_tabby_cat.jpg", {}),
    "detect": ("images/inet_zebra.jpg", {"threshold": 0.05}),
    "video": ("video/car_traffic_small.mp4", {"max_frames": 3, "threshold": 0.05}),
    "audio": ("audio/us8k_siren_102853-8-0-0.wav", {}),
    "speech": ("audio/voice_note_ru.oga", {}),
}


def run_both(tool_name: str, arguments: dict[str, Any], local_tools: ToolRegistry,
             service: ToolsService, store: AttachmentStore, tmp_path: Path) -> tuple[Any, Any, list, list]:
    here: list[tuple[float, str]] = []
    there: list[tuple[float, str]] = []
    local = local_tools.get(tool_name).call(
        arguments, ToolContext(store, tmp_path / "local", lambda f, m: here.append((f, m))))
    remote = RemoteTool(local_tools.get(tool_name), service).call(
        arguments, ToolContext(store, tmp_path / "remote", lambda f, m: there.append((f, m))))
    return local, remote, here, there


@pytest.mark.parametrize("tool_name", list(CASES))
def test_a_remote_call_gives_what_a_local_one_gives(tool_name: str, local_tools: ToolRegistry,
                                                   service: ToolsService, media: Path, tmp_path: Path) -> None:
    """The same result type and fields, the same progress, the same files (downloaded)."""
    name, extra = CASES[tool_name]
    store = AttachmentStore()
    attachment = store.register(media / name)
    local, remote, here, there = run_both(tool_name, {"attachment_id": attachment.id, **extra},
                                          local_tools, service, store, tmp_path)
    assert type(remote) is type(local)
    assert remote.model_dump(exclude={"outputs"}) == local.model_dump(exclude={"outputs"})
    assert remote.result_line() == local.result_line()
    assert there == here
    assert [Path(p).name for p in remote.outputs] == [Path(p).name for p in local.outputs]
    for mine, theirs in zip(local.outputs, remote.outputs):
        assert Path(theirs).parent == tmp_path / "remote"
        assert Path(theirs).read_bytes() == Path(mine).read_bytes()


def test_sentiment_without_a_file(local_tools: ToolRegistry, service: ToolsService, tmp_path: Path) -> None:
    store = AttachmentStore()
    local, remote, _, _ = run_both("sentiment", {"text": "Отличный проект, спасибо!"}, local_tools,
                                   service, store, tmp_path)
    assert remote == local


def test_the_errors_are_those_of_a_local_call(local_tools: ToolRegistry, service: ToolsService,
                                             media: Path, tmp_path: Path) -> None:
    store = AttachmentStore()
    photo = store.register(media / "images" / "ext_tabby_cat.jpg")
    ctx = ToolContext(store, tmp_path)
    remote = RemoteTool(local_tools.get("video"), service)
    with pytest.raises(BadCall, match="needs a video"):  # checked here, as locally
        remote.call({"attachment_id": photo.id}, ctx)
    with pytest.raises(BadCall, match="Invalid arguments for sentiment"):
        RemoteTool(local_tools.get("sentiment"), service).call({"text": "   "}, ctx)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2000)
    clip = store.register(broken, kind="video")
    with pytest.raises(ToolError) as caught:  # found there: the tool's own message
        remote.call({"attachment_id": clip.id}, ctx)
    with pytest.raises(ToolError) as here:
        local_tools.get("video").call({"attachment_id": clip.id}, ctx)
    def without_folders(text: str) -> str:  # the file is in a folder of its own there
        return re.sub(r"'/[^']*/broken.mp4'", "'broken.mp4'", text)

    assert without_folders(str(caught.value)) == without_folders(str(here.value))


def test_a_file_over_the_services_limit_is_one_clear_sentence(local_tools: ToolRegistry, service: ToolsService,
                                                              server: Server, media: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes((media / "images" / "street_scooters.jpg").read_bytes() + b"\x00" * 1_500_000)
    store = AttachmentStore()
    attachment = store.register(big)
    with pytest.raises(ToolError) as caught:
        RemoteTool(local_tools.get("detect"), service).call({"attachment_id": attachment.id},
                                                            ToolContext(store, tmp_path))
    assert str(caught.value) == (f"big.jpg is 2.5 MB; the detect tool's service at {server.url} "
                                 "takes files up to 2 MB.")
    # The service itself refuses it too, without reading it all.
    response = httpx.post(f"{server.url}/tools/detect", content=big.read_bytes(),
                          headers={"Authorization": f"Bearer {TOKEN}",
                                   "x-tool-arguments": '{"attachment_id": "att_1"}'})
    assert response.status_code == 413 and "at most 2 MB" in response.json()["error"]


def test_a_wrong_or_missing_token(local_tools: ToolRegistry, server: Server, tmp_path: Path) -> None:
    for token, word in (("wrong", "is wrong"), (None, "is not set")):
        client = ToolsService(server.url, token)
        with pytest.raises(ToolError) as caught:
            RemoteTool(local_tools.get("sentiment"), client).call({"text": "хорошо"},
                                                                  ToolContext(AttachmentStore(), tmp_path))
        assert str(caught.value) == (f"The sentiment tool's service at {server.url} refused the token "
                                     f"(ASSISTANT_TOOLS_TOKEN {word}).")


def test_the_tools_and_health(server: Server, service: ToolsService) -> None:
    health = service.health(fresh=True)
    assert set(health["tools"]) == {"audio", "detect", "image", "sentiment", "speech", "video"}
    assert health["device"] == "cpu" and health["max_file_bytes"] == 2_000_000
    listed = httpx.get(f"{server.url}/tools", headers={"Authorization": f"Bearer {TOKEN}"}).json()["tools"]
    video = next(item for item in listed if item["name"] == "video")
    assert video["kinds"] == ["video"] and video["schema"]["function"]["name"] == "video"


def test_cancel_stops_the_job_on_the_service(local_tools: ToolRegistry, service: ToolsService,
                                            media: Path, tmp_path: Path) -> None:
    """Cancelling closes the stream; the service stops the tool at its next frame (long before
    the 60 frames it was asked for) and is free for the next call."""
    store = AttachmentStore()
    clip = store.register(media / "video" / "car_traffic_small.mp4")
    cancel = threading.Event()
    progress: list[float] = []

    def report(fraction: float, message: str) -> None:
        progress.append(fraction)
        cancel.set()

    remote = RemoteTool(local_tools.get("video"), service)
    with pytest.raises(Cancelled, match="cancelled by the user while it ran"):
        remote.call({"attachment_id": clip.id, "fps": 30, "max_frames": 60, "threshold": 0.5},
                    ToolContext(store, tmp_path, report, cancel=cancel))
    deadline = time.monotonic() + 30
    while service.health(fresh=True)["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.health(fresh=True)["running"] == 0
    assert len(progress) < 60


def test_a_service_killed_mid_job(local_tools: ToolRegistry, models_dir: Path, media: Path,
                                  tmp_path: Path) -> None:
    doomed = Server(service_env(models_dir, tmp_path), "--tools", "video")
    store = AttachmentStore()
    clip = store.register(media / "video" / "car_traffic_small.mp4")
    client = ToolsService(doomed.url, TOKEN)

    def kill(fraction: float, message: str) -> None:
        if doomed.process.poll() is None:
            doomed.process.kill()
            doomed.process.wait()

    try:
        with pytest.raises(ToolError) as caught:
            RemoteTool(local_tools.get("video"), client).call(
                {"attachment_id": clip.id, "fps": 30, "max_frames": 60}, ToolContext(store, tmp_path, kill))
    finally:
        doomed.stop()
    assert str(caught.value).startswith(f"The video tool's service at {doomed.url} ")
    with pytest.raises(ToolError, match=f"The video tool's service at {doomed.url} cannot be reached"):
        RemoteTool(local_tools.get("video"), ToolsService(doomed.url, TOKEN)).call(
            {"attachment_id": clip.id}, ToolContext(store, tmp_path))


def test_a_turn_keeps_what_it_found_when_the_service_is_down(models_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                             media: Path, tmp_path: Path) -> None:
    """The photo's class (here) is kept and shown; the video's tool (remote, down) is one line."""
    from assistant.agent import build_agent
    from assistant.turns import Turn

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ASSISTANT_TOOLS_URL", url)
    monkeypatch.setenv("ASSISTANT_REMOTE_TOOLS", "video")
    agent = build_agent(Settings.from_env(), use_llm=False)
    store = agent.attachments("c")
    photo = store.register(media / "images" / "ext_tabby_cat.jpg")
    clip = store.register(media / "video" / "car_traffic_small.mp4")
    reply = agent.respond(Turn(conversation_id="c", text="", attachments=[photo, clip]))
    lines = "\n".join(reply.results)
    assert lines.startswith("image · ")
    assert f"The video tool's service at {url} cannot be reached (is it running?)." in lines


def test_serve_tools_refuses_other_interfaces_without_a_token(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    monkeypatch.delenv("ASSISTANT_TOOLS_TOKEN", raising=False)
    assert main(["serve-tools", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without a token" in capsys.readouterr().err
    assert main(["serve-tools", "--tools", "video,nope"]) == 2
    assert "no tool is named nope" in capsys.readouterr().err


def test_doctor_checks_the_service_the_token_and_each_remote_tool(
        models_env: Path, server: Server, fake_ollama: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from assistant import doctor

    monkeypatch.setenv("OLLAMA_HOST", fake_ollama.url)
    monkeypatch.setenv("ASSISTANT_TOOLS_URL", server.url)
    monkeypatch.setenv("ASSISTANT_REMOTE_TOOLS", "video,speech")
    for token in (TOKEN, "wrong"):
        monkeypatch.setenv("ASSISTANT_TOOLS_TOKEN", token)
        status = doctor.run(argparse.Namespace(command="doctor"), Settings.from_env())
        out = capsys.readouterr().out
        lines = {text.split(":", 1)[0]: text for text in out.splitlines() if text.startswith("[")}
        if token == TOKEN:
            assert status == 0, out
            assert lines["[ok] Tools service"].endswith("token accepted, device cpu")
            for name in ("video", "speech"):  # loaded if an earlier test called it
                assert re.search(rf"^\[ok\] Remote tool: {name}: served \((model loaded|loads on first use)\)$",
                                 out, re.MULTILINE)
            assert "[skip] Model: speech: on the tools service" in out
            assert "[ok] Model: detect, video: found at" in out  # detect runs here
            assert "[ok] Model: image: found at" in out
        else:
            assert status == 1
            assert lines["[fail] Tools service"] == (
                f"[fail] Tools service: The tools service at {server.url} refused the token "
                "(ASSISTANT_TOOLS_TOKEN is wrong).")
            assert "fix: set ASSISTANT_TOOLS_TOKEN to the service's token" in out
