"""`assistant doctor`: one screen that says what works and what to do about what doesn't.

Checks Ollama (reachable, the model pulled, native tool calling), where each tool's model
comes from (a local path, or a hub id and whether it is in the local cache — by looking at
files; no model is loaded), the device, and the database. Exit status 1 when something
needed is broken; a model that will be downloaded on first use is a warning, not a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Settings
from tools.base import ModelSource

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and the fix if any."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


# -- the language model ---------------------------------------------------------------------

def llm_checks(settings: Settings) -> list[Check]:
    """Ollama reachable, the model pulled, and whether it calls tools natively."""
    from assistant.llm import OllamaLLM

    status = OllamaLLM(settings).status()
    model = status.model
    if not status.reachable:
        detail = f"not reachable at {status.host}"
        if status.error and "not reachable" not in status.error:
            detail += f": {status.error}"
        return [Check("Ollama", FAIL, detail,
                      "start it: `ollama serve` (or set OLLAMA_HOST to where it listens)"),
                Check("LLM model", SKIP, f"{model}: not checked while Ollama is down")]
    checks = [Check("Ollama", OK, f"reachable at {status.host}")]
    if not status.model_available:
        detail = f"{model} is not available"
        if status.error and "ollama pull" not in status.error:
            detail += f": {status.error}"
        checks.append(Check("LLM model", FAIL, detail,
                            f"`ollama pull {model}` (or set ASSISTANT_LLM_MODEL)"))
        return checks
    checks.append(Check("LLM model", OK, f"{model} is pulled"))
    if status.tool_calling == "native":
        checks.append(Check("Tool calling", OK, f"{model} supports native tool calling"))
    elif status.tool_calling == "json-fallback":
        checks.append(Check("Tool calling", WARN,
                            f"{model} has no native tool calling; tools are chosen by a JSON "
                            "prompt instead (less reliable)",
                            "use a tool-capable model: `ollama pull llama3.1:8b` and "
                            "ASSISTANT_LLM_MODEL=llama3.1:8b"))
    else:
        checks.append(Check("Tool calling", WARN,
                            "unknown: this Ollama does not report model capabilities; it is "
                            "detected on the first reply", "update Ollama (0.6.4 or later)"))
    return checks


# -- the tools' models ----------------------------------------------------------------------

def model_checks(settings: Settings) -> list[Check]:
    """Where each tool's model comes from, and whether it is there (files only)."""
    return [
        _model_check("sentiment", settings.sentiment_model, _local_transformers, _hf_cached),
        _model_check("audio", settings.audio_model, _local_yamnet, _tfhub_cached),
        _model_check("image", settings.image_weights, _local_resnet, _torchvision_cached),
        _model_check("detect, video", settings.detection_model, _local_transformers, _hf_cached),
    ]


def _model_check(tools: str, source: ModelSource, local: Callable[[Path], str | None],
                 hub: Callable[[ModelSource], Check | None]) -> Check:
    name = f"Model: {tools}"
    path = Path(source.value).expanduser()
    offline = (f"for offline use: `assistant models fetch` on a machine with internet, or set "
               f"{source.variable} to a local copy")
    if path.exists():
        problem = local(path)
        if problem:
            return Check(name, FAIL, f"{path}: {problem}", f"fix the files or set {source.variable}")
        return Check(name, OK, f"found at {path} ({source.variable})")
    if source.variable != "ASSISTANT_MODELS_DIR":
        found = hub(source)
        if found is not None:
            found.name = name
            if found.status == WARN:
                found.fix = found.fix or offline
            return found
    return Check(name, FAIL, f"{path} does not exist ({source.variable})",
                 f"put the model there (see the README's models layout) or unset {source.variable}")


def _local_transformers(path: Path) -> str | None:
    if not (path / "config.json").is_file():
        return "no config.json (not a transformers save_pretrained directory)"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return "no weights (*.safetensors or *.bin)"
    return None


def _local_yamnet(path: Path) -> str | None:
    if path.is_file():
        return None if path.suffix == ".tflite" else "not a .tflite file"
    if (path / "yamnet.tflite").is_file() or (path / "saved_model.pb").is_file():
        return None
    return "neither yamnet.tflite nor a SavedModel (saved_model.pb) inside"


def _local_resnet(path: Path) -> str | None:
    if path.is_file():
        return None
    count = len(list(path.glob("*.pth")))
    return None if count == 1 else f"needs exactly one .pth file inside (found {count})"


def _hf_cached(source: ModelSource) -> Check | None:
    """A Hugging Face hub id: is it in the local cache?"""
    if not _HUB_ID.match(source.value):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(source.value, "config.json")
    weights = any(isinstance(try_to_load_from_cache(source.value, name), str)
                  for name in ("model.safetensors", "pytorch_model.bin"))
    if isinstance(config, str) and weights:
        return Check("", OK, f"{source.value} in the Hugging Face cache ({Path(config).parent})")
    return Check("", WARN, f"{source.value} is not in the Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}); it will download on first use")


def _tfhub_cached(source: ModelSource) -> Check | None:
    """A TF Hub handle: is it in TF Hub's module cache (TFHUB_CACHE_DIR or the temp dir)?"""
    if not source.value.startswith(("https://", "http://")):
        return None
    cache = Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")
    module = cache / hashlib.sha1(source.value.encode("utf8")).hexdigest()
    if (module / "saved_model.pb").is_file():
        return Check("", OK, f"{source.value} in the TF Hub cache ({module})")
    return Check("", WARN, f"{source.value} is not in the TF Hub cache ({cache}); it will "
                           "download on first use",
                 "set TFHUB_CACHE_DIR to a lasting folder (the default is in the temp dir), or "
                 f"{source.variable} to a local yamnet.tflite or SavedModel for offline use")


def _torchvision_cached(source: ModelSource) -> Check | None:
    """A torchvision weights name: is its file in the torch hub checkpoints folder?"""
    from torchvision.models import ResNet18_Weights

    if source.value not in ResNet18_Weights.__members__:
        return None
    import torch

    url = ResNet18_Weights[source.value].url
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    cached = checkpoints / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return Check("", OK, f"ResNet18 {source.value} in the torch hub cache ({cached})")
    return Check("", WARN, f"ResNet18 {source.value} is not in the torch hub cache ({checkpoints}); "
                           "it will download on first use")


# -- device and database --------------------------------------------------------------------

def device_check(settings: Settings) -> Check:
    from tools.base import ToolError, select_device

    setting = (f"ASSISTANT_DEVICE={settings.device}" if settings.device
               else "ASSISTANT_DEVICE unset: automatic")
    try:
        device = select_device(settings.device)
    except ToolError as exc:
        return Check("Device", FAIL, str(exc), "use ASSISTANT_DEVICE=cpu or leave it unset")
    except ImportError as exc:
        return Check("Device", FAIL, f"PyTorch cannot be imported ({exc})", "reinstall the project")
    if device.startswith("cuda"):
        import torch

        return Check("Device", OK, f"CUDA: {torch.cuda.get_device_name(device)} ({setting})")
    return Check("Device", OK, f"CPU ({setting}; no CUDA device is used)")


def database_check(settings: Settings) -> Check:
    path = settings.db_path
    if path is None:
        return Check("Database", FAIL, "no path", "set ASSISTANT_DB")
    fix = "set ASSISTANT_DB to a writable path"
    if path.exists():
        if not path.is_file():
            return Check("Database", FAIL, f"{path} is not a file", fix)
        if not os.access(path, os.R_OK | os.W_OK):
            return Check("Database", FAIL, f"{path} is not writable", fix)
        return Check("Database", OK, f"{path} (exists, writable)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return Check("Database", FAIL, f"{path} cannot be created ({folder} is not writable)", fix)
    return Check("Database", OK, f"{path} (will be created on first use)")


# -- the report -----------------------------------------------------------------------------

def collect(settings: Settings) -> list[Check]:
    return [*llm_checks(settings), *model_checks(settings), device_check(settings),
            database_check(settings)]


_MARKS = {OK: ("✔", "green"), WARN: ("!", "yellow"), FAIL: ("✘", "red"), SKIP: ("–", "dim")}


def _print_plain(checks: list[Check]) -> None:
    for check in checks:
        print(f"[{check.status}] {check.name}: {check.detail}")
        if check.fix:
            print(f"       fix: {check.fix}")


def _print_rich(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="assistant doctor", title_justify="left", show_lines=False)
    for column in ("", "check", "details", "what to do"):
        table.add_column(column)
    for check in checks:
        mark, style = _MARKS[check.status]
        table.add_row(f"[{style}]{mark}[/]", check.name, escape(check.detail),
                      f"[{style}]{escape(check.fix)}[/]" if check.fix else "")
    Console().print(table)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`assistant doctor`: print the report; 1 if anything needed fails."""
    checks = collect(settings)
    (_print_rich if sys.stdout.isatty() else _print_plain)(checks)
    failed = [check.name for check in checks if check.status == FAIL]
    warned = [check.name for check in checks if check.status == WARN]
    if failed:
        print(f"\nNot ready: {', '.join(failed)} – see what to do above.")
        return 1
    print("\nReady" + (f" (with warnings: {', '.join(warned)})." if warned else ": everything works."))
    return 0
