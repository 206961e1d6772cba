"""`assistant doctor`: what works, what does not, and the fix, with the exit status."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest

from assistant import doctor
from assistant.config import Settings
from tests.fake_ollama import NO_TOOLS, FakeOllama, unused_url


def run_doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = doctor.run(argparse.Namespace(command="doctor"), Settings.from_env())
    return status, capsys.readouterr().out


def line(out: str, name: str) -> str:
    return next(text for text in out.splitlines() if f"] {name}:" in text)


def test_ollama_down_fails_with_the_fix(models_env, monkeypatch, capsys) -> None:
    host = unused_url()
    monkeypatch.setenv("OLLAMA_HOST", host)
    status, out = run_doctor(capsys)

    assert status == 1
    assert line(out, "Ollama").startswith("[fail]") and host in line(out, "Ollama")
    assert "fix: start it: `ollama serve`" in out
    assert line(out, "LLM model").startswith("[skip]")
    assert "Not ready: Ollama" in out


def test_everything_ready(models_env, models_dir: Path, fake_ollama: FakeOllama, monkeypatch,
                          capsys, piper_voice: Path) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake_ollama.url)
    status, out = run_doctor(capsys)

    assert status == 0, out
    assert line(out, "Ollama").startswith("[ok]")
    assert line(out, "LLM model") == "[ok] LLM model: llama3.1:8b is pulled"
    assert line(out, "Tool calling").startswith("[ok]")
    for tools, folder in (("sentiment", "sentiment"), ("audio", "yamnet"), ("image", "resnet18"),
                          ("detect, video", "detr-resnet-50")):
        assert line(out, f"Model: {tools}") == (f"[ok] Model: {tools}: found at {models_dir / folder} "
                                                "(ASSISTANT_MODELS_DIR)")
    assert line(out, "Voice: en") == f"[ok] Voice: en: {models_dir / 'piper' / piper_voice.name}"
    assert line(out, "Device").startswith("[ok] Device: CPU (ASSISTANT_DEVICE=cpu")
    assert line(out, "Database").startswith("[ok]")
    assert "Ready: everything works." in out


def test_model_not_pulled_and_no_tool_calling(models_env, fake_ollama: FakeOllama, monkeypatch,
                                              capsys) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake_ollama.url)
    monkeypatch.setenv("ASSISTANT_LLM_MODEL", "mistral:7b")
    status, out = run_doctor(capsys)
    assert status == 1
    assert line(out, "LLM model").startswith("[fail] LLM model: mistral:7b is not available")
    assert "fix: `ollama pull mistral:7b`" in out

    fake_ollama.models = {"llama3:latest": NO_TOOLS}
    monkeypatch.setenv("ASSISTANT_LLM_MODEL", "llama3")
    status, out = run_doctor(capsys)
    assert status == 0, out  # the JSON fallback works: a warning, not a failure
    assert line(out, "Tool calling").startswith("[warn]")
    assert "ASSISTANT_LLM_MODEL=llama3.1:8b" in out
    assert "with warnings: Tool calling" in out


def test_hub_models_cached_or_downloaded_on_first_use(models_env, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    """Hub ids are looked up in the local caches by their files; nothing is loaded."""
    from huggingface_hub import constants

    for variable in ("ASSISTANT_MODELS_DIR", "ASSISTANT_SENTIMENT_MODEL", "ASSISTANT_IMAGE_WEIGHTS",
                     "ASSISTANT_DETECTION_MODEL", "ASSISTANT_AUDIO_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", unused_url())
    hf_cache, tfhub_cache, torch_home = tmp_path / "hf", tmp_path / "tfhub", tmp_path / "torch"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tfhub_cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))

    _, out = run_doctor(capsys)
    for tools, variable in (("sentiment", "ASSISTANT_SENTIMENT_MODEL"), ("audio", "ASSISTANT_AUDIO_MODEL"),
                            ("image", "ASSISTANT_IMAGE_WEIGHTS"),
                            ("detect, video", "ASSISTANT_DETECTION_MODEL")):
        assert line(out, f"Model: {tools}").startswith("[warn]")
        assert "will download on first use" in line(out, f"Model: {tools}")
        assert variable in out
    assert "TFHUB_CACHE_DIR" in out

    # the same models, now in the caches, in each cache's own layout
    snapshot = hf_cache / "models--facebook--detr-resnet-50" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (hf_cache / "models--facebook--detr-resnet-50" / "refs").mkdir()
    (hf_cache / "models--facebook--detr-resnet-50" / "refs" / "main").write_text("abc123")
    yamnet = tfhub_cache / hashlib.sha1(b"https://tfhub.dev/google/yamnet/1").hexdigest()
    yamnet.mkdir(parents=True)
    (yamnet / "saved_model.pb").write_bytes(b"graph")
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"weights")

    _, out = run_doctor(capsys)
    assert line(out, "Model: detect, video") == (f"[ok] Model: detect, video: facebook/detr-resnet-50 "
                                                 f"in the Hugging Face cache ({snapshot})")
    assert line(out, "Model: audio").startswith("[ok]") and str(yamnet) in out
    assert line(out, "Model: image").startswith("[ok]") and "resnet18-f37072fd.pth" in out
    assert line(out, "Model: sentiment").startswith("[warn]")


def test_broken_local_paths_and_database(models_env, models_dir: Path, tmp_path: Path, monkeypatch,
                                         capsys) -> None:
    monkeypatch.setenv("OLLAMA_HOST", unused_url())
    monkeypatch.setenv("ASSISTANT_IMAGE_WEIGHTS", str(tmp_path / "missing.pth"))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    monkeypatch.setenv("ASSISTANT_SENTIMENT_MODEL", str(empty))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ASSISTANT_DB", str(blocker / "db.sqlite3"))
    _, out = run_doctor(capsys)

    assert line(out, "Model: image") == (f"[fail] Model: image: {tmp_path / 'missing.pth'} does not "
                                         "exist (ASSISTANT_IMAGE_WEIGHTS)")
    assert line(out, "Model: sentiment").startswith("[fail]") and "no config.json" in out
    assert line(out, "Model: audio").startswith("[ok]")
    assert line(out, "Database").startswith("[fail]") and "set ASSISTANT_DB" in out


def test_cli_exit_status(models_env, monkeypatch, capsys) -> None:
    from cli.main import main

    monkeypatch.setenv("OLLAMA_HOST", unused_url())
    assert main(["doctor"]) == 1
    assert "ollama serve" in capsys.readouterr().out


def test_voices_missing_to_download_or_badly_set(models_env, tmp_path: Path, monkeypatch, capsys) -> None:
    """A voice file that is not there fails; a voice name not on the machine will download on
    first use (a warning); a bad ASSISTANT_TTS_VOICES is listed like any bad setting."""
    monkeypatch.setenv("OLLAMA_HOST", unused_url())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("ASSISTANT_TTS_VOICES", f"en={tmp_path / 'gone.onnx'},ru=ru_RU-irina-medium")
    status, out = run_doctor(capsys)
    assert status == 1
    assert line(out, "Voice: en").startswith("[fail]") and "gone.onnx" in line(out, "Voice: en")
    assert line(out, "Voice: ru").startswith("[warn]") and "download on first use" in line(out, "Voice: ru")

    monkeypatch.setenv("ASSISTANT_TTS_VOICES", "russian")
    status, out = run_doctor(capsys)
    assert status == 1 and "ASSISTANT_TTS_VOICES='russian'" in out
