"""Sentiment of Russian or English text with a transformers sequence classifier.

The model comes from ``ASSISTANT_SENTIMENT_MODEL``: a Hugging Face hub id (default
``blanchefort/rubert-base-cased-sentiment``) or a local directory saved with
``save_pretrained``. Texts longer than the model's window are read in overlapping
token windows whose class probabilities are averaged, weighted by their token counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from tools.base import (AttachmentResolver, ModelLoadError, ModelSource, Tool, ToolConfig,
                        ToolContext, ToolError, ToolResult, select_device, short_reason,
                        sorted_labels)
from tools.hub import hub_spec, load_pretrained
from tools.media import read_text_document

#: Longest text accepted, in characters (about 25k tokens: some 50 windows).
MAX_CHARACTERS = 100_000
#: Longest window in tokens, special tokens included: what BERT classifiers are fine-tuned on.
MAX_WINDOW = 512
#: Tokens shared by consecutive windows, so no sentence is only ever seen cut in two.
WINDOW_OVERLAP = 32
#: Padded tokens per forward pass: bounds memory when many long texts come at once.
BATCH_TOKENS = 16_384

#: Label spellings of sentiment models (after lower-casing), by the name we report.
_LABEL_PREFIXES = {"pos": "positive", "neg": "negative", "neu": "neutral"}


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
    """A tokenizer and model ready to run, and what the results need from them."""

    def __init__(self, tokenizer: Any, model: Any, device: str, labels: list[str]) -> None:
        self.tokenizer, self.model, self.device, self.labels = tokenizer, model, device, labels
        positions = getattr(model.config, "max_position_embeddings", MAX_WINDOW)
        self.window = min(tokenizer.model_max_length, positions, MAX_WINDOW)


class SentimentTool(Tool[SentimentParams]):
    name = "sentiment"
    description = ("Judge whether a Russian or English text is positive, neutral or negative, "
                   "with probabilities.")
    Params = SentimentParams
    kinds: ClassVar[frozenset[str]] = frozenset({"text"})
    routes: ClassVar[frozenset[str]] = frozenset({"text"})  # UTF-8 text documents
    model = hub_spec("sentiment", "blanchefort/rubert-base-cased-sentiment",
                     "ASSISTANT_SENTIMENT_MODEL", "sentiment")

    def __init__(self, source: ModelSource, device: str | None = None) -> None:
        super().__init__()
        self._source, self._device = source, device

    @classmethod
    def create(cls, config: ToolConfig) -> SentimentTool:
        assert config.source is not None
        return cls(config.source, device=config.device)

    def routed_arguments(self, attachment_id: str, attachments: AttachmentResolver) -> dict[str, Any]:
        """A text document is judged by its text."""
        text = read_text_document(attachments.path_of(attachment_id, self.kinds), MAX_CHARACTERS)
        if text is None:
            raise ToolError(f"{attachment_id} is not UTF-8 text, so sentiment cannot read it.")
        return {"text": text}

    def source(self) -> str:
        return self._source.value

    # -- loading ----------------------------------------------------------------

    def _fail(self, reason: str) -> ModelLoadError:
        return ModelLoadError("sentiment", self._source.value, self._source.variable, reason)

    def _load(self) -> _Loaded:
        device = select_device(self._device)
        tokenizer, model = load_pretrained(
            self._source, "sentiment", "config.json, the weights and the tokenizer files",
            _from_pretrained)
        if not tokenizer.is_fast:
            raise self._fail("its tokenizer has no fast version (tokenizer.json), "
                             "which splitting long texts into windows needs")
        labels = self._normalised_labels(model.config.id2label)
        try:
            model = model.to(device).eval()
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory
            raise self._fail(f"could not move it to {device} ({short_reason(exc)})") from None
        return _Loaded(tokenizer, model, device, labels)

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
        import torch

        loaded: _Loaded = self._model
        windows = loaded.tokenizer(texts, truncation=True, max_length=loaded.window,
                                   stride=WINDOW_OVERLAP, return_overflowing_tokens=True)
        owners = list(windows.pop("overflow_to_sample_mapping"))
        features = [{key: windows[key][i] for key in windows.keys()} for i in range(len(owners))]
        tokens = torch.tensor([len(item["input_ids"]) for item in features], dtype=torch.float32)
        probabilities = self._probabilities(loaded, features)

        weighted = torch.zeros(len(texts), probabilities.shape[1])
        weighted.index_add_(0, torch.tensor(owners), probabilities * tokens[:, None])
        totals = torch.zeros(len(texts)).index_add_(0, torch.tensor(owners), tokens)
        scores = (weighted / totals[:, None]).tolist()
        counts = torch.bincount(torch.tensor(owners), minlength=len(texts)).tolist()

        results = []
        for text, row, count in zip(texts, scores, counts):
            labels = sorted_labels(zip(loaded.labels, row))
            results.append(SentimentResult(tool=self.name, labels=labels, label=labels[0].label,
                                           windows=count, characters=len(text)))
        return results

    @staticmethod
    def _probabilities(loaded: _Loaded, features: list[dict[str, list[int]]]) -> Any:
        """Class probabilities of every window, in input order.

        Windows are run longest first in batches of similar length, so little is padded.
        """
        import torch

        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        out = torch.empty(len(features), len(loaded.labels))
        with torch.inference_mode():
            start = 0
            while start < len(order):
                longest = len(features[order[start]]["input_ids"])
                size = max(1, BATCH_TOKENS // longest)
                chunk = order[start:start + size]
                batch = loaded.tokenizer.pad([features[i] for i in chunk], return_tensors="pt")
                batch = {key: value.to(loaded.device) for key, value in batch.items()}
                logits = loaded.model(**batch).logits.float()
                out[chunk] = torch.softmax(logits, dim=-1).cpu()
                start += size
        return out


def _from_pretrained(location: str, local_files_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
    model = AutoModelForSequenceClassification.from_pretrained(location,
                                                               local_files_only=local_files_only)
    return tokenizer, model



