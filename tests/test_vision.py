"""The vision tool against Ollama's protocol (the scripted fake Ollama: no vision-language model
can be had here): what a request carries, which model is asked, what the person sees, errors."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from adapters.repl import PlainUI
from assistant.agent import Agent
from assistant.config import Settings
from assistant.llm.ollama import OllamaLLM
from assistant.memory import Memory
from assistant.turns import Turn
from tests.conftest import ROOT
from tests.fake_ollama import TOOLS, VISION, VISION_ONLY, FakeOllama, answer, failure, unused_url
from tests.scripted_llm import FakeTool, ScriptedLLM, say
from tools.base import ModelServer
from tools.registry import ToolRegistry
from tools.vision import DEFAULT_QUESTION, MAX_SIDE_LIMIT, VisionTool

SIGN = "A red stop sign; the text reads STOP. Behind it, a quiet street. Two cars are parked."


@pytest.fixture()
def ollama() -> FakeOllama:
    server = FakeOllama({"llama3.1:8b": TOOLS, "qwen2.5vl:3b": VISION,
                         "llama3.2-vision:11b": VISION_ONLY}).start()
    server.model_info["llama3.2-vision:11b"] = {"general.architecture": "mllama",
                                                "mllama.vision.image_size": 560}
    yield server
    server.stop()


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    """A 3000×2000 photo (downscaled for the model) with an EXIF rotation: seen as 2000×3000."""
    path = tmp_path / "sign.jpg"
    image = Image.new("RGB", (3000, 2000), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90°
    image.save(path, quality=90, exif=exif)
    return path


def vision_tool(url: str, model: str | None = None, **options) -> VisionTool:
    return VisionTool(ModelServer(url, 8192, "5m"), model, **options)


def make_agent(tmp_path: Path, vision: VisionTool, llm) -> tuple[Agent, ToolRegistry]:
    tools = ToolRegistry([FakeTool("image", frozenset({"image"}), "tabby"),
                          FakeTool("video", frozenset({"video"}), "car"), vision])
    agent = Agent(tools, Memory(tmp_path / "memory.sqlite3"), llm, output_root=tmp_path / "outputs")
    return agent, tools


def sent_images(ollama: FakeOllama, model: str) -> list[Image.Image]:
    """The images of every chat request to ``model``, decoded (each must be a JPEG)."""
    images = []
    for request in ollama.images_sent(model):
        for data in request:
            image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            assert image.format == "JPEG"
            images.append(image)
    return images


def test_a_photo_goes_to_the_vision_model_with_the_question_only(tmp_path: Path, ollama: FakeOllama,
                                                                 photo: Path) -> None:
    ollama.scripts["qwen2.5vl:3b"] = [answer(SIGN)]
    llm = ScriptedLLM([say("It is a stop sign.")])
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "qwen2.5vl:3b"), llm)
    image = agent.attachments("c").register(photo, kind="image")
    progress: list[str] = []

    reply = agent.respond(Turn("c", "What does the sign say?", [image]),
                          on_progress=lambda fraction, text: progress.append(text))

    (sent,) = sent_images(ollama, "qwen2.5vl:3b")
    assert sent.size == (683, 1024)  # the long side fits the input; upright (EXIF applied)
    (body,) = ollama.chat_requests()
    prompt = body["messages"][0]["content"]
    assert prompt.endswith("Request: What does the sign say?") and "tabby" not in prompt
    assert body["options"]["num_predict"] == 300 and body["options"]["num_ctx"] == 8192
    assert reply.text == "It is a stop sign."
    assert reply.results == ["image · tabby 87%",
                             "vision · A red stop sign; the text reads STOP. Behind it, a quiet street."]
    assert "image: image, vision; video: video, vision" in llm.calls[0].messages[0].content  # the system prompt
    assert "vision" in [schema["function"]["name"] for schema in llm.calls[0].tools or []]  # it may be called
    told = [m for m in llm.calls[0].messages if getattr(m, "name", None) == "vision"]
    assert json.loads(told[0].content) == {  # the whole answer, for the chat model
        "tool": "vision", "outputs": [], "model": "qwen2.5vl:3b", "question": "What does the sign say?",
        "answer": SIGN, "side": 1024, "frames": []}
    assert any("qwen2.5vl:3b" in text for text in progress)


def test_without_a_question_it_asks_for_a_description(tmp_path: Path, ollama: FakeOllama) -> None:
    ollama.scripts["qwen2.5vl:3b"] = [answer("A small grey square.")]
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(small)
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "qwen2.5vl:3b"), ScriptedLLM([say("Grey.")]))
    image = agent.attachments("c").register(small, kind="image")

    reply = agent.respond(Turn("c", "", [image]))

    (sent,) = sent_images(ollama, "qwen2.5vl:3b")
    assert sent.size == (300, 200)  # never enlarged
    assert ollama.chat_requests()[0]["messages"][0]["content"].endswith(DEFAULT_QUESTION)
    assert "vision · A small grey square." in reply.results


def test_the_conversations_own_model_looks_when_it_has_vision(tmp_path: Path, ollama: FakeOllama,
                                                              photo: Path) -> None:
    ollama.script += [answer(SIGN), answer("Это знак «STOP».")]  # the vision request comes first
    settings = Settings(ollama_host=ollama.url, llm_model="qwen2.5vl:3b", db_path=tmp_path / "db")
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url), OllamaLLM(settings))
    image = agent.attachments("c").register(photo, kind="image")

    reply = agent.respond(Turn("c", "Что написано на знаке?", [image]))

    assert len(sent_images(ollama, "qwen2.5vl:3b")) == 1
    assert "Request: Что написано на знаке?" in ollama.chat_requests()[0]["messages"][0]["content"]
    assert reply.text == "Это знак «STOP»." and reply.results[-1].startswith("vision · A red stop sign")
    assert "qwen2.5vl:3b" in [m.name for m in agent.models() if m.vision]
    assert "vision: sees images" in next(m for m in agent.models() if m.name == "qwen2.5vl:3b").describe()


def test_a_model_without_vision_is_never_sent_images(tmp_path: Path, ollama: FakeOllama, photo: Path) -> None:
    ollama.script.append(answer("A tabby cat, I think."))
    settings = Settings(ollama_host=ollama.url, llm_model="llama3.1:8b", db_path=tmp_path / "db")
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url), OllamaLLM(settings))
    image = agent.attachments("c").register(photo, kind="image")

    reply = agent.respond(Turn("c", "What is it?", [image]))

    assert ollama.images_sent() == [[]]  # only the chat request, without images
    request = ollama.chat_requests()[0]
    assert "image: image;" in request["messages"][0]["content"]
    assert "image" in [tool["function"]["name"] for tool in request["tools"]]
    assert "vision" not in json.dumps(request)  # nor does the model read of it, or think it ran
    assert reply.results == ["image · tabby 87%"]  # vision is not routed
    off = agent.unavailable_tools("c")["vision"]
    assert "llama3.1:8b cannot see images" in off and "`ollama pull qwen2.5vl:3b`" in off
    assert "no vision" in next(m for m in agent.models() if m.name == "llama3.1:8b").describe()


def test_a_vision_model_set_up_that_cannot_see_is_not_sent_images(tmp_path: Path, ollama: FakeOllama,
                                                                  photo: Path) -> None:
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "llama3.1:8b"), ScriptedLLM([say("A cat.")]))
    image = agent.attachments("c").register(photo, kind="image")

    reply = agent.respond(Turn("c", "", [image]))

    assert ollama.chat_requests() == []
    assert reply.results[-1] == ("vision · error: llama3.1:8b cannot see images (Ollama does not report "
                                 "vision for it); set ASSISTANT_VISION_MODEL to a vision model, e.g. "
                                 "`ollama pull qwen2.5vl:3b`.")


@pytest.mark.parametrize(("model", "reply", "down", "said"), [
    ("llava:7b", None, False, "The vision model llava:7b is not in Ollama – run `ollama pull llava:7b`."),
    ("qwen2.5vl:3b", failure(500, "failed to process inputs: image: unknown format"), False,
     "The vision model qwen2.5vl:3b could not look at it: failed to process inputs: image: unknown format."),
    ("qwen2.5vl:3b", failure(503, "server busy, please try again.  maximum pending requests exceeded"),
     False, "Ollama is busy (too many requests queued) – try again in a moment."),
    ("qwen2.5vl:3b", None, True, "Ollama is not reachable at {url}, so no vision model could look at it "
                                 "– start it with `ollama serve`."),
])
def test_errors_are_one_sentence_and_the_other_results_stay(tmp_path: Path, ollama: FakeOllama, photo: Path,
                                                            model: str, reply, down: bool, said: str) -> None:
    if reply is not None:
        ollama.scripts[model] = [reply]
    url = unused_url() if down else ollama.url
    llm = ScriptedLLM([say("The classifier says tabby; the vision model failed.")])
    agent, _ = make_agent(tmp_path, vision_tool(url, model), llm)
    image = agent.attachments("c").register(photo, kind="image")

    answered = agent.respond(Turn("c", "", [image]))

    assert answered.results == ["image · tabby 87%", f"vision · error: {said.format(url=url)}"]
    assert answered.text == "The classifier says tabby; the vision model failed."


def test_the_no_llm_mode_does_not_call_ollama(tmp_path: Path, ollama: FakeOllama, photo: Path) -> None:
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "qwen2.5vl:3b"), None)
    image = agent.attachments("c").register(photo, kind="image")

    reply = agent.respond(Turn("c", "", [image]))

    assert ollama.requests == [] and reply.results == ["image · tabby 87%"]
    assert agent.unavailable_tools("c") == {"vision": "vision needs Ollama, which the no-LLM mode does not call."}
    out = io.StringIO()
    PlainUI(io.StringIO(), out, io.StringIO()).show_tools(agent, agent.unavailable_tools("c"))  # /tools
    assert "vision: A vision model answers" in out.getvalue()
    assert "  off: vision needs Ollama, which the no-LLM mode does not call." in out.getvalue()


@pytest.mark.parametrize(("model", "requests"), [("qwen2.5vl:3b", 1), ("llama3.2-vision:11b", 3)])
def test_a_video_is_seen_as_keyframes(tmp_path: Path, ollama: FakeOllama, media: Path, model: str,
                                      requests: int) -> None:
    ollama.scripts[model] = [answer("Cars drive along a road.")] * requests
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, model, frames=3), ScriptedLLM([say("Traffic.")]))
    clip = agent.attachments("c").register(media / "video" / "car_traffic_small.mp4", kind="video")

    reply = agent.respond(Turn("c", "Is it busy?", [clip]))

    assert [len(images) for images in ollama.images_sent(model)] == [3 // requests] * requests
    sizes = {image.size for image in sent_images(ollama, model)}
    assert sizes == {(640, 360)}  # the frames as they are (smaller than the input side)
    prompt = ollama.chat_requests()[0]["messages"][0]["content"]
    assert prompt.endswith("Request: Say what happens in the video, and any text you can read. Then: Is it busy?")
    assert reply.results == ["video · car 87%", "vision · " + (
        "Cars drive along a road." if requests == 1 else "At 5 s: Cars drive along a road. At 15 s: Cars drive along a road.")]


def test_a_tiling_model_gets_twice_its_input_side(tmp_path: Path, ollama: FakeOllama, photo: Path) -> None:
    ollama.scripts["llama3.2-vision:11b"] = [answer("A red square.")]
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "llama3.2-vision:11b", max_side=MAX_SIDE_LIMIT),
                          ScriptedLLM([say("Red.")]))
    image = agent.attachments("c").register(photo, kind="image")

    agent.respond(Turn("c", "", [image]))

    (sent,) = sent_images(ollama, "llama3.2-vision:11b")
    assert max(sent.size) == 1120  # 2 × the 560 px Ollama reports


def cli_env(ollama: FakeOllama, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ASSISTANT_")}
    return {**env, "OLLAMA_HOST": ollama.url, "ASSISTANT_DB": str(tmp_path / "db.sqlite3"),
            "ASSISTANT_CACHE_DIR": os.environ.get("ASSISTANT_CACHE_DIR", str(tmp_path)), **extra}


def test_analyze_asks_the_vision_model(tmp_path: Path, ollama: FakeOllama, photo: Path) -> None:
    ollama.scripts["qwen2.5vl:3b"] = [answer(SIGN)]
    done = subprocess.run(
        [sys.executable, "-m", "assistant", "analyze", "--tool", "vision", "--json",
         "--question", "What does it say?", str(photo)],
        cwd=ROOT, env=cli_env(ollama, tmp_path, ASSISTANT_VISION_MODEL="qwen2.5vl:3b",
                              ASSISTANT_VISION_MAX_SIDE="2048"),
        capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["tool"], result["model"], result["answer"], result["side"]) == (
        "vision", "qwen2.5vl:3b", SIGN, 2048)
    assert result["question"] == "What does it say?"
    (sent,) = sent_images(ollama, "qwen2.5vl:3b")
    assert sent.size == (1365, 2048)


def test_analyze_without_a_vision_model_says_how_to_get_one(tmp_path: Path, ollama: FakeOllama,
                                                           photo: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import main

    for name, value in cli_env(ollama, tmp_path, ASSISTANT_LLM_MODEL="llama3.1:8b").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ASSISTANT_VISION_MODEL", raising=False)

    assert main(["analyze", "--tool", "vision", "--json", str(photo)]) == 1

    error = json.loads(capsys.readouterr().out)["error"]
    assert error.startswith("No vision model: llama3.1:8b cannot see images") and "qwen2.5vl:3b" in error
    assert ollama.chat_requests() == []
    monkeypatch.setenv("OLLAMA_HOST", unused_url())
    assert main(["analyze", "--tool", "vision", "--json", str(photo)]) == 1
    assert "Ollama is not reachable" in json.loads(capsys.readouterr().out)["error"]


def test_doctor_says_which_vision_model_and_how_to_enable_one(ollama: FakeOllama) -> None:
    from assistant import doctor

    def check(**env: str) -> doctor.Check:
        settings = Settings.from_env({"OLLAMA_HOST": ollama.url, **env})
        (found,) = [c for c in doctor.tool_checks(settings) if c.name == "Tool: vision"]
        return found

    assert check(ASSISTANT_VISION_MODEL="qwen2.5vl:3b").status == "ok"
    assert check(ASSISTANT_LLM_MODEL="qwen2.5vl:3b").detail == "qwen2.5vl:3b (the language model): sees images"
    off = check(ASSISTANT_LLM_MODEL="llama3.1:8b")
    assert off.status == "skip" and "`ollama pull qwen2.5vl:3b`" in off.fix  # optional: off, not broken
    missing = check(ASSISTANT_VISION_MODEL="llava:7b")
    assert missing.status == "fail" and "ollama pull llava:7b" in missing.fix
    _, problems = Settings.read({"ASSISTANT_VISION_MAX_SIDE": "4096"})
    assert problems == ["ASSISTANT_VISION_MAX_SIDE='4096': allowed is a whole number from 224 to 2048"]


def test_cancel_stops_the_vision_model_mid_answer(tmp_path: Path, ollama: FakeOllama, photo: Path) -> None:
    import threading

    ollama.scripts["qwen2.5vl:3b"] = [answer(SIGN)]
    agent, _ = make_agent(tmp_path, vision_tool(ollama.url, "qwen2.5vl:3b"), ScriptedLLM([]))
    image = agent.attachments("c").register(photo, kind="image")
    cancel = threading.Event()

    def on_progress(fraction: float, text: str) -> None:
        if "answering" in text:
            cancel.set()  # the person presses /cancel while the vision model answers

    reply = agent.respond(Turn("c", "", [image]), on_progress=on_progress, cancel=cancel)

    assert reply.results[-1] == "vision · error: cancelled by the user while it ran"
    assert len(ollama.chat_requests()) == 1  # the stream was left after its first words
    assert reply.notes == ["cancelled"]


def test_vision_stays_here_when_the_tools_run_on_a_service(tmp_path: Path) -> None:
    from assistant.runtime import build_tools
    from tools.remote import RemoteTool

    for remote in ((), ("image", "vision")):  # every tool, or vision named among them
        tools = build_tools(Settings(tools_url=unused_url(), remote_tools=remote, db_path=tmp_path / "db"))

        assert isinstance(tools.get("image"), RemoteTool)
        assert isinstance(tools.get("vision"), VisionTool)  # it asks Ollama itself, with the turn's model


def test_with_the_openai_api_the_conversations_model_is_not_taken_for_ollamas(ollama: FakeOllama) -> None:
    """ASSISTANT_LLM_API=openai: the conversation's model is not one of Ollama's, so vision is off
    (saying why) unless ASSISTANT_VISION_MODEL names a vision model of the Ollama it can ask."""
    server = ModelServer(ollama.url, 8192, "5m", serves_chat=False)
    off = VisionTool(server, None)
    reason = off.unavailable("gpt-4o-mini")
    assert reason is not None and "OpenAI-compatible server" in reason and "ASSISTANT_VISION_MODEL" in reason
    check = off.check("gpt-4o-mini")
    assert check.status == "skip" and "Ollama" not in check.detail
    assert VisionTool(server, "qwen2.5vl:3b").unavailable("gpt-4o-mini") is None
