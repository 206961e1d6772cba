"""A transformers model on ONNX Runtime: exported once from PyTorch, checked against it, cached.

The export (``torch.onnx.export``, the torch.export-based exporter) takes seconds to a minute,
so it is kept in ``ASSISTANT_CACHE_DIR`` (default: the user's cache directory,
``~/.cache/local-assistant`` on Linux) under ``onnx/``: one folder per model directory, with
the fingerprint of what it was made from (the model's files, the libraries' versions), so a
changed model or library is exported again and replaces the old export. An export is used
only when its logits match PyTorch's on the probe inputs within :data:`TOLERANCE`; that
verdict is kept too, so a model that does not match is not exported again on every start.

Nothing heavy is imported here: onnxruntime when a model is opened, torch for an export.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.base import short_reason
from tools.settings import Setting

#: Largest difference of a logit between PyTorch and ONNX Runtime for the export to be used.
TOLERANCE = 1e-4
#: What the export is made by and run with: a new version of any means a new export.
_LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
_MODEL, _VERDICT = "model.onnx", "verdict.json"

if TYPE_CHECKING:
    import numpy as np

#: A padded batch: token arrays by input name.
Inputs = Mapping[str, "np.ndarray"]


class NotExportable(Exception):
    """This model cannot run on ONNX Runtime here (why, in words)."""


def default_cache() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("local-assistant", appauthor=False)


CACHE_DIR = Setting("ASSISTANT_CACHE_DIR", None, Path)


def fingerprint(model_dir: Path) -> str:
    """What an export of ``model_dir`` is made from: its files (name, size, time) and the
    versions of the libraries that export and run it."""
    files = sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns)
                   for path in model_dir.iterdir() if path.is_file())
    return hashlib.sha256(json.dumps([files, [_version(name) for name in _LIBRARIES]])
                          .encode()).hexdigest()


def _version(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} missing"


class OnnxModel:
    """An ONNX Runtime session of one exported model: ``logits(inputs)``."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # At most 4 threads, as the audio tool, and no spinning: a busy machine (Ollama next
        # to us) loses more to threads waiting on each other than one short text gains.
        options.intra_op_num_threads = min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: keep its warnings off the terminal
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [item.name for item in self.session.get_inputs()]

    def logits(self, inputs: Inputs) -> np.ndarray:
        import numpy as np

        feed = {name: np.asarray(inputs[name], dtype=np.int64) for name in self.inputs}
        return self.session.run(None, feed)[0]


def cached(cache: Path, model_dir: Path) -> OnnxModel | None:
    """The checked export of ``model_dir`` when it is in ``cache`` and still current; None
    when it must be made; :class:`NotExportable` when it was found not to match."""
    folder = _folder(cache, model_dir)
    try:
        verdict = json.loads((folder / _VERDICT).read_text())
    except (OSError, ValueError):
        return None
    if verdict.get("fingerprint") != fingerprint(model_dir):
        return None
    if not verdict.get("matches"):
        raise NotExportable(verdict.get("reason", "its export did not match PyTorch"))
    try:
        return OnnxModel(folder / _MODEL)
    except Exception:  # noqa: BLE001 - a damaged cache entry is made again
        return None


def export(cache: Path, model_dir: Path, model: Any, probes: list[Inputs],
           reference: Callable[[Inputs], np.ndarray], max_tokens: int) -> OnnxModel:
    """Export ``model`` (a PyTorch transformers model whose output has ``logits``, for inputs
    of up to ``max_tokens`` tokens), check its logits against ``reference`` on every probe,
    and keep both in ``cache``; :class:`NotExportable` if it cannot be exported or does not match (that
    verdict is cached too)."""
    folder = _folder(cache, model_dir)
    stamp = fingerprint(model_dir)
    work = folder.with_name(f".{folder.name}-{os.getpid()}")
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        verdict = _export_and_check(model, probes, reference, max_tokens, work / _MODEL)
        if not verdict["matches"]:
            for path in work.iterdir():
                path.unlink()
        (work / _VERDICT).write_text(json.dumps({"fingerprint": stamp, **verdict}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        ready = cached(cache, model_dir)  # another process may have just saved the same export
        if ready is None:
            raise NotExportable(f"its export could not be saved in {cache} ({exc})") from None
        return ready
    if not verdict["matches"]:
        raise NotExportable(verdict["reason"])
    return OnnxModel(folder / _MODEL)


def _folder(cache: Path, model_dir: Path) -> Path:
    """One cache folder per model directory: a changed model replaces its old export."""
    return cache / "onnx" / hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:32]


def _export_and_check(model: Any, probes: list[Inputs], reference: Callable[[Inputs], np.ndarray],
                      max_tokens: int, path: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    sample = probes[0]
    names = list(sample)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=max_tokens)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on dynamic axes
            program = torch.onnx.export(
                model.eval(), (), kwargs={name: torch.from_numpy(np.asarray(sample[name]))
                                          for name in names},
                input_names=names, output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: tokens} for name in names},
                dynamo=True, optimize=True, verbose=False)
            program.save(str(path))
        exported = OnnxModel(path)
    except Exception as exc:  # noqa: BLE001 - any failure means: run on PyTorch
        return {"matches": False, "reason": f"it could not be exported to ONNX ({short_reason(exc)})"}
    difference = max(float(np.abs(exported.logits(probe) - reference(probe)).max())
                     for probe in probes)
    if difference > TOLERANCE:
        return {"matches": False, "difference": difference,
                "reason": f"its ONNX export's logits differ from PyTorch's by {difference:.1e} "
                          f"(more than {TOLERANCE:g})"}
    return {"matches": True, "difference": difference}
