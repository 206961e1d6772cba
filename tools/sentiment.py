"""Sentiment of Russian or English text with a transformers sequence classifier.

The model comes from ``ASSISTANT_SENTIMENT_MODEL``: a Hugging Face hub id (default
``blanchefort/rubert-base-cased-sentiment``) or a local directory saved with
``save_pretrained``. Texts longer than the model's window are read in overlapping
token windows whose class probabilities are averaged, weighted by their token counts.

``ASSISTANT_SENTIMENT_RUNTIME`` says what runs the model: ``onnx`` (ONNX Runtime, the default
on the CPU: about twice as fast as PyTorch there on short texts, see :mod:`tools.onnxrt`) or
``torch`` (the default on a GPU). An ONNX export is used only where its logits match
PyTorch's, and only for windows shorter than :data:`ONNX_MAX_TOKENS`: on long windows PyTorch
is faster on the CPU, so a long text's windows run there (its model loaded on first need).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from tools import onnxrt
from tools.base import (AttachmentResolver, ModelLoadError, ModelSource, Tool,
                        ToolConfig, ToolContext, ToolError, ToolResult, select_device,
                        short_reason, sorted_labels)
from tools.settings import Setting
from tools.hub import hub_spec, load_pretrained
from tools.media import read_text_document

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: Longest text accepted, in characters (about 25k tokens: some 50 windows).
MAX_CHARACTERS = 100_000
#: Longest window in tokens, special tokens included: what BERT classifiers are fine-tuned on.
MAX_WINDOW = 512
#: Tokens shared by consecutive windows, so no sentence is only ever seen cut in two.
WINDOW_OVERLAP = 32
#: Padded tokens per forward pass: bounds memory when many long texts come at once.
BATCH_TOKENS = 16_384
#: Windows this long or longer run on PyTorch even when ONNX Runtime runs the short ones:
#: measured slower there from about this length (benchmarks/bench_sentiment.py).
ONNX_MAX_TOKENS = 256

#: Label spellings of sentiment models (after lower-casing), by the name we report.
_LABEL_PREFIXES = {"pos": "positive", "neg": "negative", "neu": "neutral"}
#: Texts the ONNX export is checked on.
_PROBES = ["Отличная работа, всё получилось!", "This is terrible.", "Нормально."]
_CONTENTS = "config.json, the weights and the tokenizer files"

#: A message that asks for the tone of something (English and Russian).
ASKS_FOR_TONE = re.compile(
    r"\b(sentiment|tone|positive|negative|neutral|mood|review)\b"
    r"|(?<!\w)(тональн|позитивн|негативн|нейтральн|отзыв|настроени|эмоциональн|окраск|тон\w{0,2}\b)",
    re.IGNORECASE)
#: A quoted passage: «…», „…“, “…”, "…" or '…' (an apostrophe inside a word is not a quote).
QUOTED = re.compile(r"«([^»]+)»|„([^“”]+)[“”]|“([^”]+)”|\"([^\"]+)\"|(?<!\w)'(.+?)'(?!\w)", re.DOTALL)

RUNTIMES = ("onnx", "torch")


def _runtime(text: str) -> str:
    name = text.strip().lower()
    if name not in RUNTIMES:
        raise ValueError("not a runtime")
    return name


RUNTIME = Setting("ASSISTANT_SENTIMENT_RUNTIME", None, check=_runtime,
                  allowed="onnx or torch (empty: onnx on the CPU, torch on a GPU)")


class SentimentParams(BaseModel):
    text: str = Field(description="The text to judge.")

    @field_validator("text")
    @classmethod
    def _sensible(cls, text: str) -> str:
        if not text.strip():
            raise PydanticCustomError("empty_text", "the text is empty; give some words to judge")
        if len(text) > MAX_CHARACTERS:
            raise PydanticCustomError(
                "text_too_long", "the text is too long ({length} characters; the limit is {limit})",
                {"length": len(text), "limit": MAX_CHARACTERS})
        return text


class SentimentResult(ToolResult):
    """Every class's probability (``labels``, highest first) and the winning one."""

    label: str
    windows: int
    characters: int

    def summary(self) -> str:
        top, *rest = self.labels
        others = ", ".join(f"{item.label} {item.score:.0%}" for item in rest)
        text = f"Sentiment: {top.label} ({top.score:.0%})" + (f"; {others}." if others else ".")
        if self.windows > 1:
            text += (f" The text was long, so it was read in {self.windows} windows "
                     "and their scores averaged.")
        return text


class _Loaded:
    """A tokenizer and model ready to run, and what the results need from them.

    ``logits(inputs)`` runs the model on a padded batch of numpy token arrays; on ONNX
    Runtime, ``long_logits()`` gives the PyTorch model for long windows (made on first use).
    """

    def __init__(self, tokenizer: Any, config: Any, labels: list[str]) -> None:
        self.tokenizer, self.labels = tokenizer, labels
        positions = getattr(config, "max_position_embeddings", MAX_WINDOW)
        self.window = min(tokenizer.model_max_length, positions, MAX_WINDOW)
        self.runtime = ""
        self.logits: Any = None
        self.long_logits: Callable[[], Any] | None = None

    def logits_for(self, tokens: int) -> Any:
        """What runs a batch of windows of ``tokens`` tokens."""
        if self.long_logits is not None and tokens >= ONNX_MAX_TOKENS:
            return self.long_logits()
        return self.logits

    def windows(self, texts: list[str]) -> tuple[list[dict[str, list[int]]], list[int]]:
        """Every text's token windows, and the text each window belongs to."""
        windows = self.tokenizer(texts, truncation=True, max_length=self.window,
                                 stride=WINDOW_OVERLAP, return_overflowing_tokens=True)
        owners = list(windows.pop("overflow_to_sample_mapping"))
        return [{key: windows[key][i] for key in windows.keys()} for i in range(len(owners))], owners

    def padded(self, features: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
        """A padded batch of windows as numpy token arrays."""
        return dict(self.tokenizer.pad(features, return_tensors="np"))


class _TorchLogits:
    """The PyTorch model as ``logits(inputs)``."""

    def __init__(self, model: Any, device: str) -> None:
        self.model, self.device = model, device

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = {key: torch.from_numpy(value).to(self.device) for key, value in inputs.items()}
            return self.model(**batch).logits.float().cpu().numpy()


class SentimentTool(Tool[SentimentParams]):
    name = "sentiment"
    description = ("Judge whether a Russian or English text is positive, neutral or negative, "
                   "with probabilities.")
    Params = SentimentParams
    kinds: ClassVar[frozenset[str]] = frozenset({"text"})
    routes: ClassVar[frozenset[str]] = frozenset({"text"})  # UTF-8 text documents
    model = hub_spec("sentiment", "blanchefort/rubert-base-cased-sentiment",
                     "ASSISTANT_SENTIMENT_MODEL", "sentiment")
    settings = (RUNTIME, onnxrt.CACHE_DIR)

    def __init__(self, source: ModelSource, device: str | None = None,
                 runtime: str | None = None, cache: Path | None = None) -> None:
        super().__init__()
        self._source, self._device, self._runtime, self._cache = source, device, runtime, cache

    @classmethod
    def create(cls, config: ToolConfig) -> SentimentTool:
        assert config.source is not None
        return cls(config.source, device=config.device, runtime=config.values.get(RUNTIME.variable),
                   cache=config.values.get(onnxrt.CACHE_DIR.variable))

    def routed_arguments(self, attachment_id: str, attachments: AttachmentResolver) -> dict[str, Any]:
        """A text document is judged by its text."""
        text = read_text_document(attachments.path_of(attachment_id, self.kinds), MAX_CHARACTERS)
        if text is None:
            raise ToolError(f"{attachment_id} is not UTF-8 text, so sentiment cannot read it.")
        return {"text": text}

    @classmethod
    def text_arguments(cls, text: str) -> dict[str, Any] | None:
        """A message asking for the tone of a passage it quotes (``Какая тональность у отзыва:
        «…»``, ``Is this review positive: '…'``) is judged by that passage, whatever the
        model decides; the longest quote, if the question comes before it."""
        quotes = [(match.start(), next(group for group in match.groups() if group is not None))
                  for match in QUOTED.finditer(text)]
        quotes = [(start, quote.strip()) for start, quote in quotes if len(quote.split()) >= 2]
        if not quotes:
            return None
        start, quote = max(quotes, key=lambda item: len(item[1]))
        if not cls.asked_for(text[:start]) or len(quote) > MAX_CHARACTERS:
            return None
        return {"text": quote}

    @classmethod
    def asked_for(cls, text: str) -> bool:
        """A message about tone, sentiment, a review (English or Russian)."""
        return bool(ASKS_FOR_TONE.search(text))

    def source(self) -> str:
        return self._source.value

    # -- loading ----------------------------------------------------------------

    def _fail(self, reason: str) -> ModelLoadError:
        return ModelLoadError("sentiment", self._source.value, self._source.variable, reason)

    def _load(self) -> _Loaded:
        device = select_device(self._device)
        tokenizer, config, location = load_pretrained(self._source, "sentiment", _CONTENTS,
                                                      _tokenizer_and_config)
        if not tokenizer.is_fast:
            raise self._fail("its tokenizer has no fast version (tokenizer.json), "
                             "which splitting long texts into windows needs")
        loaded = _Loaded(tokenizer, config, self._normalised_labels(config.id2label))
        if (self._runtime or ("onnx" if device == "cpu" else "torch")) == "onnx":
            try:
                loaded.runtime, loaded.logits = "onnx", self._onnx(loaded, _model_dir(location)).logits
                loaded.long_logits = functools.cache(lambda: _TorchLogits(self._torch_model("cpu"), "cpu"))
                return loaded
            except onnxrt.NotExportable as exc:
                if self._runtime == "onnx":
                    raise self._fail(f"ASSISTANT_SENTIMENT_RUNTIME=onnx, but {exc}") from None
                log.warning("sentiment: %s; it runs on PyTorch.", exc)
        loaded.runtime, loaded.logits = "torch", _TorchLogits(self._torch_model(device), device)
        return loaded

    def _onnx(self, loaded: _Loaded, directory: Path) -> onnxrt.OnnxModel:
        """The model's checked ONNX export: cached, or made now (seconds to a minute, once)."""
        cache = self._cache or onnxrt.default_cache()
        exported = onnxrt.cached(cache, directory)
        if exported is not None:
            return exported
        model = self._torch_model("cpu")
        probes = [loaded.padded(loaded.windows(_PROBES)[0]),  # a padded batch, and a full window
                  loaded.padded(loaded.windows([" ".join(_PROBES) * 200])[0][:1])]
        return onnxrt.export(cache, directory, model, probes, _TorchLogits(model, "cpu"),
                             loaded.window)

    def _torch_model(self, device: str) -> Any:
        model = load_pretrained(self._source, "sentiment", _CONTENTS, _model)
        try:
            return model.to(device).eval()
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory
            raise self._fail(f"could not move it to {device} ({short_reason(exc)})") from None

    def _normalised_labels(self, id2label: dict[int, str]) -> list[str]:
        """The model's classes as positive / neutral / negative, in class-index order."""
        names = []
        for index in sorted(id2label):
            raw = str(id2label[index]).strip().lower()
            name = next((full for prefix, full in _LABEL_PREFIXES.items() if raw.startswith(prefix)),
                        None)
            if name is None or name in names:
                raise self._fail(f"its classes {list(id2label.values())} are not "
                                 "positive / neutral / negative")
            names.append(name)
        return names

    # -- running ----------------------------------------------------------------

    def classify(self, texts: list[str]) -> list[SentimentResult]:
        """Sentiment of each text, batched; :class:`ToolError` if any text is unusable."""
        checked = [self.validate({"text": text}).text for text in texts]  # type: ignore[attr-defined]
        self.ensure_loaded()
        with self._lock:
            return self._classify(checked)

    def run(self, params: SentimentParams, ctx: ToolContext) -> SentimentResult:
        return self._classify([params.text])[0]

    def _classify(self, texts: list[str]) -> list[SentimentResult]:
        import numpy as np

        loaded: _Loaded = self._model
        features, owners = loaded.windows(texts)
        tokens = np.array([len(item["input_ids"]) for item in features], dtype=np.float64)
        probabilities = self._probabilities(loaded, features)

        weighted = np.zeros((len(texts), probabilities.shape[1]))
        np.add.at(weighted, owners, probabilities * tokens[:, None])
        totals = np.bincount(owners, weights=tokens, minlength=len(texts))
        scores = (weighted / totals[:, None]).tolist()
        counts = np.bincount(owners, minlength=len(texts)).tolist()

        results = []
        for text, row, count in zip(texts, scores, counts):
            labels = sorted_labels(zip(loaded.labels, row))
            results.append(SentimentResult(tool=self.name, labels=labels, label=labels[0].label,
                                           windows=count, characters=len(text)))
        return results

    @staticmethod
    def _probabilities(loaded: _Loaded, features: list[dict[str, list[int]]]) -> np.ndarray:
        """Class probabilities of every window, in input order.

        Windows are run longest first in batches of similar length, so little is padded.
        """
        import numpy as np

        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        out = np.empty((len(features), len(loaded.labels)))
        start = 0
        while start < len(order):
            longest = len(features[order[start]]["input_ids"])
            size = max(1, BATCH_TOKENS // longest)
            chunk = order[start:start + size]
            run = loaded.logits_for(longest)
            logits = run(loaded.padded([features[i] for i in chunk])).astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[chunk] = exp / exp.sum(axis=1, keepdims=True)
            start += size
        return out


def _tokenizer_and_config(location: str, local_files_only: bool) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
    config = AutoConfig.from_pretrained(location, local_files_only=local_files_only)
    return tokenizer, config, location


def _model(location: str, local_files_only: bool) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(location,
                                                              local_files_only=local_files_only)


def _model_dir(location: str) -> Path:
    """The directory a model was loaded from: ``location`` itself, or a hub id's snapshot
    in the Hugging Face cache."""
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import try_to_load_from_cache

    return Path(str(try_to_load_from_cache(location, "config.json"))).parent
