"""The sentiment tool on stand-in models: the real rubert-tiny2 architecture, config and
tokenizer with random weights, and a tiny model built here (no network)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.attachments import AttachmentStore
from assistant.config import Settings
from tests.conftest import ROOT
from tests.model_builders import build_sentiment
from tools import onnxrt
from tools.base import ModelLoadError, ModelSource, ToolContext, ToolError
from tools.sentiment import SentimentResult, SentimentTool

#: The five short Russian texts of shared/media/README.md.
TEXTS = [
    "Этот проект отличный!",
    "Мне совсем не понравилось выполнение задания.",
    "Результат нормальный, но можно улучшить.",
    "Просто ужасно — я не доволен.",
    "Замечательная работа! Всё получилось.",
]
#: Several thousand tokens, praise first and complaints after: several windows that differ.
LONG_TEXT = f"{TEXTS[4]} " * 60 + f"{TEXTS[3]} " * 300
VARIABLE = "ASSISTANT_SENTIMENT_MODEL"


def tool_for(path: Path | str, runtime: str | None = None) -> SentimentTool:
    """The tool as the settings build it on a CPU (ONNX Runtime unless ``runtime`` says)."""
    return SentimentTool(ModelSource(str(path), VARIABLE), device="cpu", runtime=runtime,
                         cache=Path(os.environ["ASSISTANT_CACHE_DIR"]))


@pytest.fixture(scope="session")
def config_dir(shared_models: Path) -> Path:
    return shared_models / "configs" / "rubert-tiny2-russian-sentiment"


@pytest.fixture(scope="session")
def tiny2_dir(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Path:
    """The real rubert-tiny2 architecture and tokenizer, random weights."""
    return build_sentiment(tmp_path_factory.mktemp("rubert-tiny2"), config_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Path:
    """Two small layers, and upper-case labels as blanchefort/rubert-base-cased-sentiment has."""
    from transformers import AutoConfig

    path = build_sentiment(tmp_path_factory.mktemp("tiny"), config_dir, tiny=True, seed=1)
    config = AutoConfig.from_pretrained(path)
    config.id2label = {0: "NEUTRAL", 1: "POSITIVE", 2: "NEGATIVE"}
    config.label2id = {name: index for index, name in config.id2label.items()}
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny2(tiny2_dir: Path) -> SentimentTool:
    return tool_for(tiny2_dir)


@pytest.fixture()
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(AttachmentStore(), tmp_path)


def reference_scores(model_dir: Path, texts: list[str]) -> list[dict[str, float]]:
    """What the transformers text-classification pipeline gives, labels lower-cased."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    return [{item["label"].lower(): item["score"] for item in row} for row in classifier(texts)]


# -- loading -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "tiny2"])
def test_loads_and_classifies(which: str, request: pytest.FixtureRequest) -> None:
    tool = tool_for(request.getfixturevalue(f"{which}_dir"))
    assert not tool.loaded
    result = tool.classify([TEXTS[0]])[0]
    assert tool.loaded
    assert sorted(item.label for item in result.labels) == ["negative", "neutral", "positive"]
    assert result.label == result.labels[0].label
    assert (result.windows, result.characters) == (1, len(TEXTS[0]))
    assert sum(item.score for item in result.labels) == pytest.approx(1.0, abs=1e-5)


def scores(results: list[SentimentResult]) -> list[dict[str, float]]:
    return [{item.label: item.score for item in result.labels} for result in results]


def test_model_stays_warm(tiny2: SentimentTool) -> None:
    model = tiny2.ensure_loaded()
    tiny2.classify([TEXTS[1]])
    assert tiny2.ensure_loaded() is model


@pytest.mark.parametrize("which", ["tiny", "tiny2"])
def test_same_scores_as_the_transformers_pipeline(which: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(f"{which}_dir")
    expected = reference_scores(model_dir, TEXTS)
    results = tool_for(model_dir).classify(TEXTS)  # one padded batch
    for result, reference in zip(results, expected):
        ours = {item.label: item.score for item in result.labels}
        assert ours.keys() == reference.keys()
        for label, score in reference.items():
            assert ours[label] == pytest.approx(score, abs=1e-5), (result, reference)


def test_unknown_class_names_are_refused(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_dir)
    config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    config.label2id = {name: index for index, name in config.id2label.items()}
    AutoModelForSequenceClassification.from_pretrained(tiny_dir, config=config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not positive / neutral / negative"):
        tool_for(tmp_path).ensure_loaded()


# -- runtimes: ONNX Runtime where it matches PyTorch -----------------------------------------


def test_onnx_runtime_is_the_cpu_default_and_gives_pytorchs_results(tiny2_dir: Path) -> None:
    texts = [*TEXTS, LONG_TEXT]  # a padded batch, and windows of a long text
    on_onnx, on_torch = tool_for(tiny2_dir), tool_for(tiny2_dir, runtime="torch")
    short = on_onnx.classify(TEXTS)
    loaded = on_onnx.ensure_loaded()
    assert loaded.long_logits.cache_info().currsize == 0  # short texts: ONNX Runtime alone
    onnx_results, torch_results = on_onnx.classify(texts), on_torch.classify(texts)
    assert loaded.long_logits.cache_info().currsize == 1  # full windows: on PyTorch, faster there
    assert (loaded.runtime, on_torch.ensure_loaded().runtime) == ("onnx", "torch")
    for alone, beside_long in zip(scores(short), scores(onnx_results)):
        assert all(alone[label] == pytest.approx(beside_long[label], abs=1e-5) for label in alone)
    for ours, theirs in zip(onnx_results, torch_results):
        assert (ours.label, ours.windows) == (theirs.label, theirs.windows)
    for ours, theirs in zip(scores(onnx_results), scores(torch_results)):
        assert ours.keys() == theirs.keys()
        assert all(ours[label] == pytest.approx(theirs[label], abs=1e-5) for label in ours)


def test_onnx_export_is_cached_until_the_model_changes(tmp_path: Path, tiny_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = shutil.copytree(tiny_dir, tmp_path / "model")
    exports = []
    real_export = onnxrt.export
    monkeypatch.setattr(onnxrt, "export", lambda *args: exports.append(1) or real_export(*args))
    first = tool_for(model_dir).classify(TEXTS)
    second = tool_for(model_dir).classify(TEXTS)  # a new process would do the same
    assert len(exports) == 1 and scores(first) == scores(second)

    config = model_dir / "config.json"
    config.write_text(config.read_text())  # a changed file (its time): exported again
    assert tool_for(model_dir).ensure_loaded().runtime == "onnx" and len(exports) == 2
    assert not [path for path in (Path(os.environ["ASSISTANT_CACHE_DIR"]) / "onnx").iterdir()
                if path.name.startswith(".")]  # no work folder left behind


def test_an_export_that_does_not_match_is_not_used(tmp_path: Path, tiny_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    model_dir = shutil.copytree(tiny_dir, tmp_path / "model")
    monkeypatch.setattr(onnxrt, "TOLERANCE", -1.0)  # no difference is small enough
    with caplog.at_level(logging.WARNING, logger="tools.sentiment"):
        tool = tool_for(model_dir)
        results = tool.classify(TEXTS)
    assert tool.ensure_loaded().runtime == "torch"
    assert "differ from PyTorch's" in caplog.text and "runs on PyTorch" in caplog.text
    assert scores(results) == scores(tool_for(model_dir, runtime="torch").classify(TEXTS))

    # The verdict is kept: no second export; asked for ONNX explicitly, it says why not.
    monkeypatch.setattr(onnxrt, "export", lambda *args: pytest.fail("exported again"))
    assert tool_for(model_dir).ensure_loaded().runtime == "torch"
    with pytest.raises(ModelLoadError, match="ASSISTANT_SENTIMENT_RUNTIME=onnx, but its ONNX"):
        tool_for(model_dir, runtime="onnx").ensure_loaded()


def test_runtime_setting() -> None:
    settings, problems = Settings.read({"ASSISTANT_SENTIMENT_RUNTIME": "TensorRT"})
    assert any(p.startswith("ASSISTANT_SENTIMENT_RUNTIME='TensorRT'") and "onnx or torch" in p
               for p in problems)
    settings, problems = Settings.read({"ASSISTANT_SENTIMENT_RUNTIME": " Torch "})
    assert not problems and settings.tool_value("ASSISTANT_SENTIMENT_RUNTIME") == "torch"
    assert Settings.read({})[0].tool_value("ASSISTANT_SENTIMENT_RUNTIME") is None


# -- long texts and batches ------------------------------------------------------------


def test_long_text_is_read_in_windows_not_truncated(tiny2: SentimentTool, tiny2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(tiny2_dir)(LONG_TEXT)["input_ids"])
    assert tokens > 2500
    result = tiny2.classify([LONG_TEXT])[0]
    assert tokens / 512 < result.windows < tokens / 400
    assert sum(item.score for item in result.labels) == pytest.approx(1.0, abs=1e-5)
    assert f"{result.windows} windows" in result.summary()
    # The pipeline reads only the first 512 tokens; the windows see the whole text.
    from transformers import pipeline

    truncated = pipeline("text-classification", model=str(tiny2_dir), top_k=None, device="cpu")(
        [LONG_TEXT], truncation=True, max_length=512)[0]
    first_window = {item["label"]: item["score"] for item in truncated}
    ours = {item.label: item.score for item in result.labels}
    assert max(abs(ours[label] - first_window[label]) for label in ours) > 1e-4


def test_batch_equals_one_by_one(tiny2: SentimentTool) -> None:
    texts = [TEXTS[0], LONG_TEXT, TEXTS[3], LONG_TEXT[:3000]]
    batch = tiny2.classify(texts)
    for text, together in zip(texts, batch):
        alone = tiny2.classify([text])[0]
        assert (alone.label, alone.windows, alone.characters) == (together.label, together.windows,
                                                                  together.characters)
        for a, b in zip(alone.labels, together.labels):
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)


def test_run_through_call(tiny2: SentimentTool, ctx: ToolContext) -> None:
    result = tiny2.call({"text": TEXTS[2]}, ctx)
    assert isinstance(result, SentimentResult)
    assert result.labels == tiny2.classify([TEXTS[2]])[0].labels


# -- bad inputs and missing models --------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_refused(tiny2: SentimentTool, ctx: ToolContext, text: str) -> None:
    with pytest.raises(ToolError, match="the text is empty"):
        tiny2.call({"text": text}, ctx)


def test_too_long_text_and_bad_arguments_are_refused(tiny2: SentimentTool, ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="too long"):
        tiny2.call({"text": "ok " * 50_000}, ctx)
    with pytest.raises(ToolError, match="text"):
        tiny2.call({}, ctx)
    with pytest.raises(ToolError, match="the text is empty"):
        tiny2.classify([TEXTS[0], " "])


def test_missing_local_directory(tmp_path: Path) -> None:
    tool = tool_for(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match=VARIABLE) as caught:
        tool.ensure_loaded()
    assert "no such directory" in str(caught.value) and str(tmp_path) in str(caught.value)


def test_missing_models_dir_names_its_variable(tmp_path: Path) -> None:
    settings = Settings.from_env({"ASSISTANT_MODELS_DIR": str(tmp_path)})
    with pytest.raises(ModelLoadError, match="ASSISTANT_MODELS_DIR"):
        SentimentTool(settings.model("ASSISTANT_SENTIMENT_MODEL"), device="cpu").ensure_loaded()


def test_broken_model_directories(tmp_path: Path, tiny_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        tool_for(empty).ensure_loaded()

    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=VARIABLE):
        tool_for(bad_json).ensure_loaded()

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=VARIABLE):
        tool_for(truncated).ensure_loaded()

    with pytest.raises(ModelLoadError, match="it is a file"):
        tool_for(tiny_dir / "config.json").ensure_loaded()


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    tool = tool_for("assistant-tests/no-such-sentiment-model")
    with pytest.raises(ModelLoadError, match="cannot be reached") as caught:
        tool.ensure_loaded()
    assert VARIABLE in str(caught.value) and "assistant-tests/no-such-sentiment-model" in str(caught.value)


@pytest.mark.timeout(60)
def test_offline_mode_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        tool_for("assistant-tests/no-such-sentiment-model").ensure_loaded()


# -- results and the tool's surface -------------------------------------------------------


def test_json_result(tiny2: SentimentTool) -> None:
    result = tiny2.classify([TEXTS[4]])[0]
    data = json.loads(json.dumps(result.to_json(), ensure_ascii=False))
    assert data["tool"] == "sentiment"
    scores = [item["score"] for item in data["labels"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert data["label"] == data["labels"][0]["label"]
    assert (data["windows"], data["characters"]) == (1, len(TEXTS[4]))
    summary = result.summary()
    assert summary.startswith(f"Sentiment: {data['label']} (") and "windows" not in summary


def test_schema_and_cheap_import() -> None:
    tool = SentimentTool(ModelSource("unused", VARIABLE))
    parameters = tool.schema()["function"]["parameters"]
    assert parameters["required"] == ["text"] and tool.kinds == frozenset({"text"})
    code = ("import sys, tools.sentiment; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("text", "judged"), [
    ("Какая тональность у этого отзыва: «Ужасный сервис, больше никогда не приду»?",
     "Ужасный сервис, больше никогда не приду"),
    ("Is this review positive: 'Great film, I loved every minute'", "Great film, I loved every minute"),
    ('What is the tone of "I don\'t like it"?', "I don't like it"),
    ("Is \"this\" positive?", None),  # a one-word quote is not a passage
    ("I don't like 'it much' at all", None),  # no question about tone
    ("He said \"great stuff here\" – is that positive?", None),  # the question after the quote: the model decides
    ("Оцени тон: «Прекрасный фильм, всем советую!»", "Прекрасный фильм, всем советую!"),
    ("Привет! Как дела?", None),
])
def test_a_message_asking_for_the_tone_of_a_quote_is_routed(text: str, judged: str | None) -> None:
    assert SentimentTool.text_arguments(text) == (None if judged is None else {"text": judged})


@pytest.mark.parametrize(("text", "asked"), [
    ("Is this positive? I loved it", True),
    ("What's the tone of his letter?", True),
    ("Оцени настроение этого сообщения", True),
    ("Привет! Как дела?", False),
    ("Thanks! What can you do?", False),
])
def test_a_message_asks_for_sentiment_by_its_words(text: str, asked: bool) -> None:
    """What a model without native tools is offered sentiment by (as a decision on the text)."""
    assert SentimentTool.asked_for(text) is asked
