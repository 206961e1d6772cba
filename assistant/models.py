"""`assistant models fetch`: download every tool's default model so the machine can run offline.

The models and how each is fetched are declared by the tools (their ``ModelSpec``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from assistant.config import Settings
from tools.base import short_reason
from tools.registry import model_specs


def run(args: argparse.Namespace, settings: Settings) -> int:
    target = Path(args.to).expanduser().resolve() if args.to else None
    failed = []
    for spec in model_specs():
        dest = target / spec.folder if target else None
        print(f"Fetching the {spec.what} model from {spec.fetch_source or spec.default} ...", flush=True)
        try:
            path = spec.fetch(dest)
        except Exception as exc:  # network, disk, or hub errors: report and go on with the others
            failed.append(spec.what)
            print(f"  failed: {short_reason(exc)}", file=sys.stderr, flush=True)
        else:
            print(f"  ok: {path}", flush=True)
    failed += _fetch_voices(settings, target)
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


def _fetch_voices(settings: Settings, target: Path | None) -> list[str]:
    """Download the voices of ASSISTANT_TTS_VOICES (voice replies); the names that failed."""
    import os

    from assistant.voice import VoiceConfig, fetch_voice

    config, _ = VoiceConfig.read(os.environ, settings.models_dir)
    failed = []
    for language, voice in config.voices.items():
        print(f"Fetching the {language} voice {voice} (Piper) ...", flush=True)
        try:
            path = fetch_voice(voice, target)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failed.append(f"the {language} voice")
            print(f"  failed: {short_reason(exc)}", file=sys.stderr, flush=True)
        else:
            print(f"  ok: {path}", flush=True)
    return failed
