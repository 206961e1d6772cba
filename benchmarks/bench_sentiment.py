"""Sentiment tool speed: our warm tool (ONNX Runtime, its default on a CPU, and on PyTorch)
against the honest peer, a warm transformers ``pipeline``, measured interleaved in one run
(a fresh pipeline per call is kept as a reference column).

Two stand-ins with random weights and the real rubert-tiny2 tokenizer: (a) the real
rubert-tiny2 architecture, (b) a rubert-base architecture (12 layers, 768 wide), the size
of the default ``blanchefort/rubert-base-cased-sentiment``. Each runs in its own process,
so its peak RSS is its own.

    .venv/bin/python benchmarks/bench_sentiment.py [--arch tiny2|base]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import CONFIGS, emit, interleaved_medians, median_ms, scratch_dir, timed

ARCHES = ("tiny2", "base")
SHORT = [
    "Этот проект отличный!",
    "Мне совсем не понравилось выполнение задания.",
    "Результат нормальный, но можно улучшить.",
    "Просто ужасно — я не доволен.",
    "Замечательная работа! Всё получилось.",
]
BATCH = (SHORT * 7)[:32]
LONG = " ".join(SHORT) * 100  # about 3,000 tokens


def build(arch: str, dst: Path) -> Path:
    """The stand-in model for ``arch``, saved with ``save_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = CONFIGS / "rubert-tiny2-russian-sentiment"
    config = AutoConfig.from_pretrained(source)
    if arch == "base":
        config.num_hidden_layers, config.hidden_size = 12, 768
        config.num_attention_heads, config.intermediate_size = 12, 3072
        config.max_position_embeddings = 512
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(dst)
    AutoTokenizer.from_pretrained(source).save_pretrained(dst)
    return dst


def _import_libraries() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401


def bench(arch: str, repeat: int) -> None:
    import torch

    from tools.base import ModelSource
    from tools.sentiment import SentimentTool

    _, import_s = timed(_import_libraries)
    scratch = scratch_dir(f"sentiment-{arch}")
    model_dir = build(arch, scratch / "model")
    source = ModelSource(str(model_dir), "ASSISTANT_SENTIMENT_MODEL")
    # Ours as it runs by default on a CPU (ONNX Runtime: exported and checked on the first
    # load, read from the cache afterwards), and ours told to run on PyTorch.
    tools = {runtime: SentimentTool(source, device="cpu", runtime=runtime, cache=scratch / "cache")
             for runtime in ("onnx", "torch")}
    _, export_s = timed(tools["onnx"].ensure_loaded)
    _, cached_load_s = timed(SentimentTool(source, device="cpu", runtime="onnx",
                                           cache=scratch / "cache").ensure_loaded)
    _, torch_load_s = timed(tools["torch"].ensure_loaded)
    assert tools["onnx"]._model.runtime == "onnx", "the ONNX export was not used"

    from transformers import pipeline

    warm = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    texts = iter(SHORT * 10_000)
    short = interleaved_medians({
        "ours": lambda: tools["onnx"].classify([next(texts)]),
        "ours_torch": lambda: tools["torch"].classify([next(texts)]),
        "warm_pipeline": lambda: warm(next(texts)),
    }, repeat=repeat)
    batch = interleaved_medians({
        "ours": lambda: tools["onnx"].classify(BATCH),
        "ours_torch": lambda: tools["torch"].classify(BATCH),
        "warm_pipeline": lambda: warm(BATCH, batch_size=len(BATCH)),
    }, repeat=6, rounds=2, warmup=1)
    long_ms = {name: median_ms(lambda t=tool: t.classify([LONG]), repeat=3)
               for name, tool in (("ours", tools["onnx"]), ("ours_torch", tools["torch"]))}

    # One window of n tokens on each runtime: where ONNX Runtime stops being the faster one
    # (tools.sentiment.ONNX_MAX_TOKENS).
    loaded = tools["onnx"]._model
    by_length = {}
    for tokens in (64, 128, 256, 384, 512):
        window = loaded.padded(loaded.windows([LONG])[0][:1])
        window = {key: value[:, :tokens] for key, value in window.items()}
        times = interleaved_medians({"onnx": lambda w=window: loaded.logits(w),
                                     "torch": lambda w=window: tools["torch"]._model.logits(w)},
                                    repeat=6, rounds=2, warmup=1)
        by_length[f"window{tokens}_onnx_over_torch"] = times["onnx"] / times["torch"]

    def per_call() -> object:  # what the plain library examples do per request
        return pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")(
            next(texts))

    per_call_ms = median_ms(per_call, repeat=5)
    emit("sentiment", arch=arch, threads=torch.get_num_threads(), import_s=import_s,
         onnx_export_s=export_s, onnx_cached_load_s=cached_load_s, torch_load_s=torch_load_s,
         short_ms=short["ours"], short_torch_ms=short["ours_torch"],
         warm_pipeline_ms=short["warm_pipeline"], per_call_pipeline_ms=per_call_ms,
         warm_pipeline_over_ours=short["warm_pipeline"] / short["ours"],
         batch32_texts_per_s=len(BATCH) / (batch["ours"] / 1000),
         batch32_torch_texts_per_s=len(BATCH) / (batch["ours_torch"] / 1000),
         batch32_pipeline_texts_per_s=len(BATCH) / (batch["warm_pipeline"] / 1000),
         long_text_ms=long_ms["ours"], long_text_torch_ms=long_ms["ours_torch"],
         long_text_windows=tools["onnx"].classify([LONG])[0].windows, **by_length,
         load_avg=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHES, help="one architecture in this process")
    parser.add_argument("--repeat", type=int, default=30, help="timed short texts per path")
    args = parser.parse_args()
    if args.arch:
        bench(args.arch, args.repeat)
        return
    for arch in ARCHES:
        subprocess.run([sys.executable, __file__, "--arch", arch, "--repeat", str(args.repeat)],
                       check=True)


if __name__ == "__main__":
    main()
