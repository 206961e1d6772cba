"""Sentiment tool speed: our warm tool against the honest peer, a warm transformers
``pipeline`` (a fresh pipeline per call is kept as a reference column).

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
import time
from pathlib import Path

from common import CONFIGS, emit, median_ms, scratch_dir, timed

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


def bench(arch: str) -> None:
    import torch

    from tools.base import ModelSource
    from tools.sentiment import SentimentTool

    _, import_s = timed(_import_libraries)
    model_dir = build(arch, scratch_dir(f"sentiment-{arch}") / "model")
    tool = SentimentTool(ModelSource(str(model_dir), "ASSISTANT_SENTIMENT_MODEL"), device="cpu")
    _, load_s = timed(tool.ensure_loaded)
    texts = iter(SHORT * 1000)

    # torch uses every core by default; on a busy 2-core machine one thread can be faster.
    default_threads = torch.get_num_threads()
    short_ms = {}
    for threads in sorted({1, default_threads}, reverse=True):
        torch.set_num_threads(threads)
        short_ms[threads] = median_ms(lambda: tool.classify([next(texts)]), repeat=30, warmup=3)
        short_cpu_ms = median_ms(lambda: tool.classify([next(texts)]), repeat=30,
                                 clock=time.process_time)
        batch_ms = median_ms(lambda: tool.classify(BATCH), repeat=5)
        long_ms = median_ms(lambda: tool.classify([LONG]), repeat=1)
        emit("sentiment", arch=arch, path="ours", threads=threads, import_s=import_s,
             load_s=load_s, short_ms=short_ms[threads], short_cpu_ms=short_cpu_ms,
             batch32_texts_per_s=len(BATCH) / (batch_ms / 1000), long_text_ms=long_ms,
             long_text_windows=tool.classify([LONG])[0].windows, load_avg=os.getloadavg()[0])
    torch.set_num_threads(default_threads)

    from transformers import pipeline

    def naive() -> object:  # what the plain library examples do per request
        return pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")(
            next(texts))

    naive_ms = median_ms(naive, repeat=5)
    warm_pipeline = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    pipeline_ms = median_ms(lambda: warm_pipeline(next(texts)), repeat=30, warmup=3)
    emit("sentiment", arch=arch, path="naive", threads=default_threads,
         naive_pipeline_per_call_ms=naive_ms, warm_pipeline_ms=pipeline_ms,
         warm_pipeline_over_ours=pipeline_ms / short_ms[default_threads],
         per_call_over_ours=naive_ms / short_ms[default_threads], load_avg=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHES, help="one architecture in this process")
    args = parser.parse_args()
    if args.arch:
        bench(args.arch)
        return
    for arch in ARCHES:
        subprocess.run([sys.executable, __file__, "--arch", arch], check=True)


if __name__ == "__main__":
    main()
