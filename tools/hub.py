"""Loading Hugging Face models from a local ``save_pretrained`` directory or a hub id.

A hub id is served from the local cache when it is there (no network); otherwise the hub
is asked once, with a short timeout, before the real download — so an offline machine
gets a clear :class:`ModelLoadError` in seconds instead of minutes of retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tools.base import ModelCheck, ModelLoadError, ModelSource, ModelSpec, short_reason

HUB_TIMEOUT = 10.0

T = TypeVar("T")


def load_pretrained(source: ModelSource, what: str, contents: str,
                    load: Callable[[str, bool], T]) -> T:
    """``load(location, local_files_only)`` from ``source``: a local directory, or a hub id.

    ``what`` names the model in messages; ``contents`` says what such a directory holds.
    Every failure becomes one :class:`ModelLoadError`.
    """
    def fail(reason: str) -> ModelLoadError:
        return ModelLoadError(what, source.value, source.variable, reason)

    location = _location(source.value, contents, fail)
    try:
        return load(location, True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        if Path(location).is_dir():
            raise fail(short_reason(exc)) from None
    _check_hub(location, fail)  # not in the local cache: is there a hub to fetch it from?
    try:
        return load(location, False)
    except Exception as exc:  # noqa: BLE001
        raise fail(short_reason(exc)) from None


def _location(value: str, contents: str, fail: Callable[[str], ModelLoadError]) -> str:
    """A local directory, or a hub id; a path that does not exist is an error here."""
    value = value.strip()
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise fail(f"the directory has no config.json; expected a model saved with "
                       f"save_pretrained ({contents})")
        return str(path)
    if path.exists():
        raise fail(f"it is a file; expected a directory saved with save_pretrained ({contents})")
    if not value or _is_path_not_hub_id(value):
        raise fail("no such directory")
    return value


def _is_path_not_hub_id(value: str) -> bool:
    """Is a model source that names nothing on disk written as a file-system path rather than
    a Hugging Face hub id (``org/name``, one slash)? Relative or absolute, ``~``, Windows
    (``C:``, ``\\``), or more than one ``/``. Such a value is a missing directory, not
    something to ask the hub for."""
    return (value.startswith((".", "/", "~", "\\")) or value.count("/") > 1
            or (len(value) > 1 and value[1] == ":"))


def _check_hub(repo_id: str, fail: Callable[[str], ModelLoadError]) -> None:
    """Fail in seconds, not minutes of retries, when the hub cannot be reached."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise fail("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT)
    except RepositoryNotFoundError:
        raise fail("no such model on the Hugging Face hub (or it is private), "
                   "and no such local directory") from None
    except Exception:  # noqa: BLE001 - DNS, connection, timeout, proxy errors
        raise fail("the Hugging Face hub cannot be reached (offline?) and the model "
                   "is not in the local cache") from None


# -- models fetch and doctor, for models on the Hugging Face hub --------------------------------

#: Weight formats the tools load; other framework files in a hub repository are skipped.
_FETCH_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_spec(what: str, default: str, variable: str, folder: str) -> ModelSpec:
    """The :class:`ModelSpec` of a transformers model on the Hugging Face hub."""
    def fetch(dest: Path | None) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(default, local_dir=dest, allow_patterns=_FETCH_PATTERNS))

    return ModelSpec(what, default, variable, folder, fetch, check_saved_pretrained, check_hub_cache)


def check_saved_pretrained(path: Path) -> str | None:
    """What is missing from a transformers ``save_pretrained`` directory (None: nothing)."""
    if not (path / "config.json").is_file():
        return "no config.json (not a transformers save_pretrained directory)"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return "no weights (*.safetensors or *.bin)"
    return None


def check_hub_cache(value: str) -> ModelCheck | None:
    """A hub id: is it in the local Hugging Face cache? (files only; nothing is loaded)"""
    if not _HUB_ID.match(value):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(value, "config.json")
    weights = any(isinstance(try_to_load_from_cache(value, name), str)
                  for name in ("model.safetensors", "pytorch_model.bin"))
    if isinstance(config, str) and weights:
        return ModelCheck("ok", f"{value} in the Hugging Face cache ({Path(config).parent})")
    return ModelCheck("warn", f"{value} is not in the Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}); it will download on first use")
