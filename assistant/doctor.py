"""`assistant doctor`: one screen that says what works and what to do about what doesn't.

Checks Ollama (reachable, the model pulled, native tool calling), where each tool's model
comes from (a local path, or a hub id and whether it is in the local cache — by looking at
files; no model is loaded), the models tools use on Ollama (vision), the device, and the database. Exit status 1 when something
needed is broken; a model that will be downloaded on first use is a warning, not a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Settings
from tools.base import ModelSource, ModelSpec, short_reason
from tools.registry import model_specs, tool_names, users_of

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and the fix if any."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


# -- the language model ---------------------------------------------------------------------

def llm_checks(settings: Settings) -> list[Check]:
    """Ollama reachable, the model pulled, and whether it calls tools natively (or the same of
    an OpenAI-compatible server, with ASSISTANT_LLM_API=openai)."""
    if settings.llm_api == "openai":
        return openai_checks(settings)
    from assistant.llm.ollama import OllamaLLM

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
    reason = status.tool_calling_reason
    if status.tool_calling == "unknown":
        checks.append(Check("Tool calling", WARN,
                            "unknown: this Ollama does not report model capabilities; it is "
                            "detected on the first reply", "update Ollama (0.6.4 or later)"))
    elif status.tool_calling == "native":
        checks.append(Check("Tool calling", OK, f"{model}: native tool calling ({reason})"))
    elif status.native_tools is False:
        checks.append(Check("Tool calling", WARN,
                            f"{model} has no native tool calling; tools are chosen by a "
                            "structured decision (JSON schema) instead, which weak models make less well",
                            "use a tool-capable model: `ollama pull llama3.1:8b` and "
                            "ASSISTANT_LLM_MODEL=llama3.1:8b"))
    else:  # a template that writes the tools into the last message, or the setting
        checks.append(Check("Tool calling", OK, f"{model}: structured decision ({reason})"))
    return checks


def openai_checks(settings: Settings) -> list[Check]:
    """The server at ASSISTANT_LLM_BASE_URL answers, takes the key (never shown), serves the model."""
    from assistant.llm.openai import OpenAILLM

    status = OpenAILLM(settings).status()
    key = "with an API key" if settings.llm_api_key else "without an API key"
    if not status.reachable:
        return [Check("LLM server", FAIL, status.error or f"not reachable at {status.host}",
                      "start it, or set ASSISTANT_LLM_BASE_URL to where it listens"),
                Check("LLM model", SKIP, f"{status.model}: not checked while the server is down")]
    if status.error and not status.model_available and "refused the API key" in status.error:
        return [Check("LLM server", FAIL, status.error, "set ASSISTANT_LLM_API_KEY to a key it accepts"),
                Check("LLM model", SKIP, f"{status.model}: not checked without a valid key")]
    checks = [Check("LLM server", OK, f"reachable at {status.host} ({key})")]
    if not status.model_available:
        checks.append(Check("LLM model", FAIL, status.error or f"{status.model} is not served",
                            "set ASSISTANT_LLM_MODEL to a model the server lists"))
        return checks
    checks.append(Check("LLM model", OK, f"{status.model} is served"))
    checks.append(Check("Tool calling", SKIP, "not reported by an OpenAI-compatible server; learnt from the "
                        "first reply (without it, tools are chosen by a JSON prompt)"))
    return checks


# -- the tools' models ----------------------------------------------------------------------

def model_checks(settings: Settings) -> list[Check]:
    """Where each tool's model comes from, and whether it is there (files only; the checks
    are the tools' own, from their ``ModelSpec``). Models of tools that run on a tools
    service are that service's business (see :func:`service_checks`)."""
    remote = set(_remote_tools(settings))
    return [_model_check(", ".join(users_of(spec)), spec, settings.model(spec.variable))
            if not set(users_of(spec)) <= remote
            else Check(f"Model: {', '.join(users_of(spec))}", SKIP, "on the tools service")
            for spec in model_specs()]


def _remote_tools(settings: Settings) -> list[str]:
    if not settings.tools_url:
        return []
    return list(settings.remote_tools) or tool_names()


def service_checks(settings: Settings) -> list[Check]:
    """With ASSISTANT_TOOLS_URL: the service answers, takes the token, and runs each tool
    meant to run there."""
    from tools.base import ToolError
    from tools.remote import ToolsService

    if not settings.tools_url:
        return []
    service = ToolsService(settings.tools_url, settings.tools_token, settings.tools_timeout)
    try:
        health = service.health()
    except ToolError as exc:
        fix = ("set ASSISTANT_TOOLS_TOKEN to the service's token" if "token" in str(exc)
               else "start it (`assistant serve-tools` or `serve run deploy/serve.yaml`) or fix "
                    "ASSISTANT_TOOLS_URL")
        return [Check("Tools service", FAIL, str(exc), fix)]
    finally:
        service.close()
    token = "token accepted" if settings.tools_token else "no token (loopback)"
    checks = [Check("Tools service", OK, f"{settings.tools_url}: {token}, device "
                                         f"{health.get('device')}")]
    for name in _remote_tools(settings):
        if name in health.get("tools", []):
            loaded = "model loaded" if health.get("loaded", {}).get(name) else "loads on first use"
            checks.append(Check(f"Remote tool: {name}", OK, f"served ({loaded})"))
        else:
            checks.append(Check(f"Remote tool: {name}", FAIL, f"not served by {settings.tools_url}",
                                "serve it there (`--tools`) or leave it out of ASSISTANT_REMOTE_TOOLS"))
    return checks


def _model_check(tools: str, spec: ModelSpec, source: ModelSource) -> Check:
    name = f"Model: {tools}"
    path = Path(source.value).expanduser()
    offline = (f"for offline use: `assistant models fetch` on a machine with internet, or set "
               f"{source.variable} to a local copy")
    if path.exists():
        problem = spec.check_local(path)
        if problem:
            return Check(name, FAIL, f"{path}: {problem}", f"fix the files or set {source.variable}")
        return Check(name, OK, f"found at {path} ({source.variable})")
    if source.variable != "ASSISTANT_MODELS_DIR":
        found = spec.check_cached(source.value)
        if found is not None:
            return Check(name, found.status, found.detail,
                         found.fix or (offline if found.status == WARN else ""))
    return Check(name, FAIL, f"{path} does not exist ({source.variable})",
                 f"put the model there (see the README's models layout) or unset {source.variable}")


def tool_checks(settings: Settings) -> list[Check]:
    """The tools' models that live on a server (a vision model on Ollama): which, and whether
    it is there, as each tool checks it for the configured language model."""
    from assistant.runtime import build_tools

    checks = []
    for tool in build_tools(settings):
        found = tool.check(settings.llm_model)
        if found is not None:
            checks.append(Check(f"Tool: {tool.name}", found.status, found.detail, found.fix))
    return checks


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
    """Can the database be opened (or created) at ASSISTANT_DB, and is it sound (``PRAGMA
    quick_check``, read only)? Tried for real: a path that does not exist yet is created and
    removed again, with any folders made for it."""
    import sqlite3

    from assistant.database import inspect_database

    path = settings.db_path
    if path is None:
        return Check("Database", FAIL, "no path", "set ASSISTANT_DB")
    fix = "set ASSISTANT_DB to a writable path"
    if path.exists():
        if not path.is_file():
            return Check("Database", FAIL, f"{path} is not a file", fix)
        if not os.access(path, os.R_OK | os.W_OK):
            return Check("Database", FAIL, f"{path} is not writable", fix)
        problem = inspect_database(path)
        if problem is not None:  # damaged, or unreadable
            return Check("Database", FAIL, f"{path} {problem.problem}", problem.todo)
        return Check("Database", OK, f"{path} (exists, writable, its structure checked)")
    made: list[Path] = []
    folder = path.parent
    try:
        missing = [folder, *folder.parents]
        for parent in reversed([p for p in missing if not p.exists()]):
            parent.mkdir()
            made.append(parent)
        sqlite3.connect(str(path)).close()
        path.unlink()
    except (OSError, sqlite3.Error) as exc:
        return Check("Database", FAIL, f"{path} cannot be created ({short_reason(exc)})", fix)
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                pass
    return Check("Database", OK, f"{path} (will be created on first use)")


def voice_checks(settings: Settings) -> list[Check]:
    """Each voice of ASSISTANT_TTS_VOICES: there, to be downloaded, or missing (files only)."""
    from assistant.voice import VoiceConfig, check_voice

    config, problems = VoiceConfig.read(os.environ, settings.models_dir)
    checks = settings_checks(problems)
    for language, voice in config.voices.items():
        status, detail = check_voice(voice, config.models_dir)
        fix = {OK: "", WARN: "for offline use: `assistant models fetch` where there is internet",
               FAIL: "fix ASSISTANT_TTS_VOICES, or `assistant models fetch`"}[status]
        checks.append(Check(f"Voice: {language}", status, detail, fix))
    return checks


def settings_checks(problems: list[str]) -> list[Check]:
    """Each bad setting as a failed check."""
    return [Check("Setting", FAIL, problem, "fix or unset it (see the README's configuration table)")
            for problem in problems]


# -- the report -----------------------------------------------------------------------------

def collect(settings: Settings, problems: list[str] | None = None) -> list[Check]:
    """Every check; ``problems`` are the bad settings (each then has its default)."""
    return [*settings_checks(problems or []), *llm_checks(settings), *service_checks(settings),
            *model_checks(settings), *voice_checks(settings), *tool_checks(settings), device_check(settings),
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


def run(args: argparse.Namespace, settings: Settings, problems: list[str] | None = None) -> int:
    """`assistant doctor`: print the report; 1 if anything needed fails."""
    checks = collect(settings, problems)
    (_print_rich if sys.stdout.isatty() else _print_plain)(checks)
    failed = [check.name for check in checks if check.status == FAIL]
    warned = [check.name for check in checks if check.status == WARN]
    if failed:
        print(f"\nNot ready: {', '.join(failed)} – see what to do above.")
        return 1
    print("\nReady" + (f" (with warnings: {', '.join(warned)})." if warned else ": everything works."))
    return 0
