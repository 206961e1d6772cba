"""Build models with the real architectures, real configs and real tokenizers, and
deterministic random weights, from ``shared/models/configs`` (no network).

Real weights for these models cannot be brought onto the test machines; these stand-ins
exercise the real loading code, preprocessing and cost. Labels they give are meaningless.
"""

from __future__ import annotations

from pathlib import Path


def build_sentiment(dst: Path, config_dir: Path, *, tiny: bool = False, seed: int = 0) -> Path:
    """A BERT sequence classifier saved with ``save_pretrained`` (plus the real tokenizer).

    ``tiny`` shrinks it to 2 small layers (same vocabulary and labels) for fast tests.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(config_dir)
    if tiny:
        config.num_hidden_layers, config.hidden_size = 2, 32
        config.num_attention_heads, config.intermediate_size = 2, 64
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(dst)
    return dst


def build_resnet18(dst_file: Path, seed: int = 0) -> Path:
    """A ResNet18 state dict (the ``IMAGENET1K_V1`` file's format) with random weights."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dst_file)
    return dst_file


def build_detr(dst: Path, config_dir: Path, seed: int = 0) -> Path:
    """DETR ResNet-50 (real config, timm backbone, no pretrained download) + its processor."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    config = DetrConfig.from_pretrained(config_dir)
    config.use_pretrained_backbone = False
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    model.save_pretrained(dst)
    DetrImageProcessor.from_pretrained(config_dir).save_pretrained(dst)
    return dst


def build_models_dir(dst: Path, shared_models: Path) -> Path:
    """A complete ASSISTANT_MODELS_DIR in the documented layout: random-weight stand-ins
    for sentiment (rubert-tiny2 architecture), ResNet18 and DETR, the real YAMNet and Whisper."""
    configs = shared_models / "configs"
    build_sentiment(dst / "sentiment", configs / "rubert-tiny2-russian-sentiment")
    build_resnet18(dst / "resnet18" / "resnet18.pth")
    build_detr(dst / "detr-resnet-50", configs / "detr-resnet-50")
    for real in ("yamnet", "whisper-base"):
        (dst / real).symlink_to((shared_models / real).resolve(), target_is_directory=True)
    return dst
