"""A tool is one file: a tiny tool written into a temporary package, and nothing else edited,
is discovered, configured, fetched, checked, routed, offered to the model and run from the CLI."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage

from tools import registry

#: The whole tool: a byte counter with a "model" (a file holding a number), one setting, one
#: analyze flag, routes of its own (documents) and a text trigger (text files, when asked).
TOOL_MODULE = '''
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from tools.base import (AnalyzeOption, ModelSpec, TextTrigger, Tool, ToolConfig,
                        ToolContext, ToolResult, sorted_labels)
from tools.settings import Setting


def _fetch(dest: Path | None) -> Path:
    dest = dest or Path.home() / ".cache" / "bytes-model"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "scale.txt").write_text("1")
    return dest


def _check_local(path: Path) -> str | None:
    return None if (path / "scale.txt").is_file() else "no scale.txt"


class BytesParams(BaseModel):
    attachment_id: str
    unit: int | None = Field(None, ge=1, description="Bytes per unit.")


UNIT = Setting("ASSISTANT_BYTES_UNIT", 1, int, minimum=1)


class BytesTool(Tool[BytesParams]):
    name = "bytes"
    description = "Count the bytes of a file."
    Params = BytesParams
    kinds = frozenset({"document", "text"})
    routes = frozenset({"document"})
    trigger = TextTrigger(frozenset({"text"}), re.compile(r"\\bbytes\\b"))
    model = ModelSpec("byte counter", "builtin", "ASSISTANT_BYTES_MODEL", "bytes", _fetch,
                      _check_local)
    settings = (UNIT,)
    analyze_options = (AnalyzeOption("--unit", "unit", int, "N", "bytes per unit"),)

    def __init__(self, source, unit: int) -> None:
        super().__init__()
        self._source, self._unit = source, unit

    @classmethod
    def create(cls, config: ToolConfig) -> BytesTool:
        return cls(config.source, config.values[UNIT.variable])

    def source(self) -> str:
        return self._source.value

    def _load(self) -> int:
        return int((Path(self._source.value) / "scale.txt").read_text())

    def run(self, params: BytesParams, ctx: ToolContext) -> ToolResult:
        size = ctx.attachments.path_of(params.attachment_id, self.kinds).stat().st_size
        units = size * self._model / (params.unit or self._unit)
        return ToolResult(tool=self.name, labels=sorted_labels([(f"{units:g} units", 1.0)]))
'''


@pytest.fixture()
def bytes_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``extra_tools`` holding the one tool module, searched after ``tools``."""
    package = tmp_path / "pkg" / "extra_tools"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bytes.py").write_text(textwrap.dedent(TOOL_MODULE))
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(registry, "TOOL_PACKAGES", [*registry.TOOL_PACKAGES, "extra_tools"])
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") and name != "ASSISTANT_SHARED_DIR":
            monkeypatch.delenv(name)
    registry._discover.cache_clear()
    yield "extra_tools"
    registry._discover.cache_clear()
    for name in [name for name in sys.modules if name.split(".")[0] == "extra_tools"]:
        del sys.modules[name]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "bytes"
    path.mkdir(parents=True)
    (path / "scale.txt").write_text("2")
    return path


def test_one_file_is_a_tool_with_its_settings_and_model(bytes_tool: str, model_dir: Path) -> None:
    from assistant import doctor
    from assistant.config import Settings

    assert registry.tool_names()[-1] == "bytes" and "sentiment" in registry.tool_names()
    assert "ASSISTANT_BYTES_UNIT" in [s.variable for s in registry.tool_settings()]
    assert "--unit" in [option.flag for option in registry.analyze_options()]

    settings, problems = Settings.read({"ASSISTANT_BYTES_UNIT": "4"})
    assert problems == [] and settings.tool_value("ASSISTANT_BYTES_UNIT") == 4
    _, problems = Settings.read({"ASSISTANT_BYTES_UNIT": "0"})
    assert problems == ["ASSISTANT_BYTES_UNIT='0': allowed is a whole number of at least 1"]

    settings, _ = Settings.read({"ASSISTANT_MODELS_DIR": str(model_dir.parent)})
    assert settings.model("ASSISTANT_BYTES_MODEL").value == str(model_dir)  # its folder
    (check,) = [c for c in doctor.model_checks(settings) if c.name == "Model: bytes"]
    assert (check.status, check.detail) == ("ok", f"found at {model_dir} (ASSISTANT_MODELS_DIR)")
    settings, _ = Settings.read({"ASSISTANT_BYTES_MODEL": str(model_dir.parent / "nowhere")})
    (check,) = [c for c in doctor.model_checks(settings) if c.name == "Model: bytes"]
    assert check.status == "fail" and "ASSISTANT_BYTES_MODEL" in check.detail


def test_models_fetch_gets_its_model(bytes_tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    monkeypatch.setattr(registry, "TOOL_PACKAGES", [bytes_tool])  # only it: nothing downloads
    registry._discover.cache_clear()
    voice = tmp_path / "voice.onnx"  # a local voice file is only checked, not downloaded
    voice.write_bytes(b"onnx")
    Path(f"{voice}.json").write_text("{}")
    monkeypatch.setenv("ASSISTANT_TTS_VOICES", f"en={voice}")
    assert main(["models", "fetch", "--to", str(tmp_path / "fetched")]) == 0
    assert "Fetching the byte counter model from builtin" in capsys.readouterr().out
    assert (tmp_path / "fetched" / "bytes" / "scale.txt").is_file()


def test_it_is_routed_offered_to_the_model_and_run(bytes_tool: str, model_dir: Path, make_agent,
                                                   tmp_path: Path) -> None:
    from assistant.config import Settings
    from assistant.runtime import build_tools
    from assistant.turns import Turn
    from tests.scripted_llm import ScriptedLLM, say

    settings = Settings.from_env({"ASSISTANT_BYTES_MODEL": str(model_dir)})
    tools = build_tools(settings)
    assert [tool.name for tool in tools.routed("document", "")] == ["bytes"]
    assert "bytes" in [tool.name for tool in tools.routed("text", "how many bytes?")]
    assert "bytes" not in [tool.name for tool in tools.routed("text", "how does it feel?")]

    llm = ScriptedLLM([say("It has 20 units.")])
    agent = make_agent(llm, tools)
    assert "bytes" in [schema["function"]["name"] for schema in agent.schemas]
    system = agent.system_prompt(native=True)
    assert "document: bytes" in system and "text: sentiment, bytes when asked" in system

    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01" * 5)  # 10 bytes, a "model" scale of 2
    attachment = agent.attachments("c").register(blob)
    assert attachment.kind == "document"
    reply = agent.respond(Turn("c", "What is this?", [attachment]))

    assert reply.text == "It has 20 units." and reply.results == ["bytes · 20 units 100%"]
    (result,) = [m for m in llm.calls[0].messages if isinstance(m, ToolMessage)]
    assert result.name == "bytes" and json.loads(result.content)["labels"][0]["label"] == "20 units"


def test_assistant_analyze_runs_it(bytes_tool: str, model_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    monkeypatch.setenv("ASSISTANT_BYTES_MODEL", str(model_dir))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00" * 12)
    assert main(["analyze", "--tool", "bytes", "--unit", "3", "--json", str(blob)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) == {"input": str(blob), "tool": "bytes", "outputs": [],
                                "labels": [{"label": "8 units", "score": 1.0}]}


def test_a_photo_gets_its_class_before_the_detection_asked_for() -> None:
    """The fast line first: classification runs before the detection the text asks for, so the
    person sees what the photo shows while DETR is still looking (tool classes, no models)."""
    from assistant.config import Settings
    from assistant.runtime import build_tools

    registry = build_tools(Settings.from_env({}))
    assert [tool.name for tool in registry.routed("image", "what is in this photo?")] == ["image", "detect"]
    assert [tool.name for tool in registry.routed("image", "nice")] == ["image"]
