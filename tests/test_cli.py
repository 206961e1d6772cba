"""The command line as a user runs it: `assistant --help`, `assistant analyze`, `models fetch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "tensorflow", "transformers", "cv2")


def assistant(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assistant", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=timeout)


def analyze_json(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    proc = assistant("analyze", "--json", *args, env=env, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc, rows


@pytest.mark.parametrize("argv", [["--help"], ["analyze", "--help"], ["chat", "--help"],
                                  ["telegram", "--help"], ["models", "fetch", "--help"]])
def test_help_does_not_import_heavy_libraries(argv: list[str]) -> None:
    code = ("import sys\nfrom cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: assistant" in proc.stdout
    assert proc.stdout.strip().endswith("HEAVY="), proc.stdout[-200:]


def test_analyze_without_inputs_is_a_usage_error() -> None:
    proc = assistant("analyze")
    assert proc.returncode == 2
    assert "give one or more FILEs" in proc.stderr


def test_bad_configuration_is_reported_without_traceback() -> None:
    proc = assistant("analyze", "--text", "x", env={"ASSISTANT_VIDEO_FPS": "fast"})
    assert proc.returncode == 2
    assert "ASSISTANT_VIDEO_FPS='fast': allowed is a number of at least 0.01" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_analyze_real_media_json(models_env: Path, media: Path, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("Замечательная работа! Всё получилось.", encoding="utf-8")
    inputs = [media / "images" / "inet_zebra.jpg", media / "audio" / "voice_note_ru.oga",
              media / "video" / "car_traffic_small.mp4", note]
    proc, rows = analyze_json("--max-frames", "2", "--threshold", "0.01",
                              "--output-dir", str(tmp_path / "out"), *map(str, inputs),
                              "--text", "Этот проект отличный!")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_input = {row["input"]: row for row in rows}
    assert by_input["Этот проект отличный!"]["tool"] == "sentiment"
    assert by_input[str(inputs[0])]["tool"] == "image"
    assert by_input[str(inputs[1])]["tool"] == "audio"
    assert by_input[str(inputs[1])]["labels"][0]["label"] == "Speech"
    assert by_input[str(inputs[2])]["tool"] == "video"
    assert by_input[str(inputs[3])]["tool"] == "sentiment"
    for row in rows:
        scores = [label["score"] for label in row["labels"]]
        assert scores and scores == sorted(scores, reverse=True), row
    video = by_input[str(inputs[2])]
    assert all("count" in label for label in video["labels"])
    assert video["outputs"] and Path(video["outputs"][0]).is_file()


def test_analyze_human_output_and_tool_choice(models_env: Path, media: Path, tmp_path: Path) -> None:
    photo = media / "images" / "street_scooters.jpg"
    proc = assistant("analyze", "--tool", "detect", "--threshold", "0.01", str(photo), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(photo))
    assert "annotated:" in proc.stdout
    annotated = [line.split("annotated:", 1)[1].strip() for line in proc.stdout.splitlines()
                 if "annotated:" in line]
    assert Path(tmp_path, annotated[0]).is_file()


def test_analyze_bad_inputs_are_reported_and_others_still_run(
        models_env: Path, media: Path, tmp_path: Path) -> None:
    good = media / "images" / "inet_goldfish.jpg"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:2000])
    fake_photo = tmp_path / "fake.jpg"  # text inside: sentiment by content, image refuses it
    fake_photo.write_text("hello", encoding="utf-8")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 40)
    broken_audio = tmp_path / "broken.ogg"
    broken_audio.write_bytes((media / "audio" / "librosa_bird_robin.ogg").read_bytes()[:300])
    missing = tmp_path / "missing.png"
    inputs = [good, empty, truncated, garbage, broken_audio, missing]
    proc, rows = analyze_json(*map(str, inputs))
    assert proc.returncode == 1
    assert [row["input"] for row in rows] == [str(p) for p in inputs]
    assert rows[0]["tool"] == "image" and len(rows[0]["labels"]) == 5
    errors = {Path(row["input"]).name: row["error"] for row in rows[1:]}
    assert "empty" in errors["empty.jpg"]
    assert "damaged or truncated" in errors["truncated.jpg"]
    assert "no tool analyses" in errors["garbage.bin"]
    assert "broken.ogg" in errors["broken.ogg"] or "audio" in errors["broken.ogg"].lower()
    assert "no such file" in errors["missing.png"]

    proc, rows = analyze_json("--tool", "image", str(fake_photo), str(media / "audio" / "siren.m4a"))
    assert proc.returncode == 1
    assert "not an image" in rows[0]["error"] or "needs an image" in rows[0]["error"]
    assert "is an audio file; this tool needs an image" in rows[1]["error"]


def test_analyze_refuses_files_over_the_size_limit(models_env: Path, media: Path) -> None:
    photo = media / "images" / "street_scooters.jpg"
    proc, rows = analyze_json(str(photo), env={"ASSISTANT_MAX_FILE_MB": "0.5"})
    assert proc.returncode == 1
    assert "too large" in rows[0]["error"] and "ASSISTANT_MAX_FILE_MB" in rows[0]["error"]


def test_missing_model_says_which_and_what_to_set(tmp_path: Path, media: Path) -> None:
    env = {"ASSISTANT_MODELS_DIR": str(tmp_path / "nowhere"), "HF_HUB_OFFLINE": "1"}
    proc, rows = analyze_json(str(media / "images" / "inet_pizza.jpg"), "--text", "да", env=env)
    assert proc.returncode == 1
    assert len(rows) == 2
    for row in rows:
        assert "Could not load the" in row["error"] and "ASSISTANT_MODELS_DIR" in row["error"]


def test_models_fetch_offline_ends_with_a_clear_message(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"),
           "TFHUB_CACHE_DIR": str(tmp_path / "tfhub"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = assistant("models", "fetch", "--to", str(tmp_path / "models"), env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    failed = next(line for line in proc.stderr.splitlines() if line.startswith("Could not fetch: "))
    for model in ("sentiment", "audio (YAMNet)", "image (ResNet18)", "object detection (DETR)",
                  "the en voice", "the ru voice"):
        assert model in failed
    assert "ASSISTANT_MODELS_DIR" in proc.stderr


@pytest.mark.parametrize("command", ["chat", "telegram"])
def test_a_bad_voice_setting_stops_the_commands_that_speak(command: str) -> None:
    proc = assistant(command, env={"ASSISTANT_TTS_VOICES": "en=lessac", "TELEGRAM_BOT_TOKEN": "1:x"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ASSISTANT_TTS_VOICES='en=lessac'" in proc.stderr and "Piper voice name" in proc.stderr
