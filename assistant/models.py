"""`assistant models fetch`: download every default model so the machine can run offline."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from assistant.config import (DEFAULT_AUDIO_MODEL, DEFAULT_DETECTION_MODEL, DEFAULT_IMAGE_WEIGHTS,
                              DEFAULT_SENTIMENT_MODEL, MODELS_DIR_LAYOUT, Settings)

#: Weight formats the tools load; other framework files in a hub repository are skipped.
_HF_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]


def _fetch_hf(repo_id: str) -> Callable[[Path | None], Path]:
    def fetch(dest: Path | None) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_dir=dest, allow_patterns=_HF_PATTERNS))
    return fetch


def _fetch_resnet18(dest: Path | None) -> Path:
    import torch
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights[DEFAULT_IMAGE_WEIGHTS]
    model_dir = str(dest) if dest else None
    torch.hub.load_state_dict_from_url(weights.url, model_dir=model_dir, progress=True, check_hash=True)
    return (dest or Path(torch.hub.get_dir()) / "checkpoints") / Path(weights.url).name


def _fetch_yamnet(dest: Path | None) -> Path:
    from tools.base import import_tensorflow

    import_tensorflow()
    import tensorflow_hub as hub

    cached = Path(hub.resolve(DEFAULT_AUDIO_MODEL))
    if dest is None:
        return cached
    shutil.copytree(cached, dest, dirs_exist_ok=True)
    return dest


#: (what, tool key in the models-dir layout, source, fetcher)
FETCHERS: list[tuple[str, str, str, Callable[[Path | None], Path]]] = [
    ("sentiment", "sentiment", DEFAULT_SENTIMENT_MODEL, _fetch_hf(DEFAULT_SENTIMENT_MODEL)),
    ("audio (YAMNet)", "audio", DEFAULT_AUDIO_MODEL, _fetch_yamnet),
    ("image (ResNet18)", "image", f"torchvision ResNet18_Weights.{DEFAULT_IMAGE_WEIGHTS}", _fetch_resnet18),
    ("object detection (DETR)", "detection", DEFAULT_DETECTION_MODEL, _fetch_hf(DEFAULT_DETECTION_MODEL)),
]


def run(args: argparse.Namespace, settings: Settings) -> int:
    target = Path(args.to).expanduser().resolve() if args.to else None
    failed = []
    for what, key, source, fetch in FETCHERS:
        dest = target / MODELS_DIR_LAYOUT[key] if target else None
        print(f"Fetching the {what} model from {source} ...", flush=True)
        try:
            path = fetch(dest)
        except Exception as exc:  # network, disk, or hub errors: report and go on with the others
            failed.append(what)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"  failed: {reason[:300]}", file=sys.stderr, flush=True)
        else:
            print(f"  ok: {path}", flush=True)
    if failed:
        print(f"\nCould not fetch: {', '.join(failed)}. Check the internet connection (or proxy) and "
              "run this again. A machine without internet can use a models directory made "
              "elsewhere with `assistant models fetch --to DIR`: copy it over and set "
              "ASSISTANT_MODELS_DIR=DIR.", file=sys.stderr)
        return 1
    if target:
        print(f"\nAll models are in {target}. Use them with:\n  export ASSISTANT_MODELS_DIR={target}")
    else:
        print("\nAll models are in the local caches; the assistant can now run offline.")
    return 0
