"""Image classification: what a photo shows, as the top ImageNet classes of torchvision's ResNet18.

The model setting (``ASSISTANT_IMAGE_WEIGHTS``) is a name of ``ResNet18_Weights``
(``IMAGENET1K_V1``, the default, downloaded from download.pytorch.org into torch's cache),
a path to a ``.pth`` state dict, or a directory holding exactly one ``.pth``.
Category names and preprocessing always come from ``ResNet18_Weights.IMAGENET1K_V1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tools.base import (Label, ModelCheck, ModelLoadError, ModelSource, ModelSpec, Tool,
                        ToolConfig, ToolContext, ToolResult,
                        select_device, short_reason, sorted_labels)
from tools.media import open_image

#: EXIF orientations that swap width and height (rotations by 90° or 270°).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageResult(ToolResult):
    """Top ImageNet classes of one photo; ``width`` and ``height`` of the photo as oriented."""

    tool: str = "image"
    width: int
    height: int

    def summary(self) -> str:
        if not self.labels:
            return "image: nothing recognised."
        best, others = self.labels[0], self.labels[1:]
        text = f"The photo ({self.width}×{self.height}) most likely shows {best.label} ({best.score:.0%})"
        if others:
            text += "; other guesses: " + ", ".join(f"{item.label} ({item.score:.0%})" for item in others)
        return text + "."


@dataclass
class _Classifier:
    """The warm model and what goes with it."""

    model: Any  # torch.nn.Module, conv+batch-norm fused, channels-last
    transforms: Any  # the weights' own ImageClassification preset
    categories: list[str]
    device: str
    resize_size: int


DEFAULT_WEIGHTS = "IMAGENET1K_V1"


def _fetch(dest: Path | None) -> Path:
    """`models fetch`: the default weights file into torch hub's cache, or into ``dest``."""
    import torch
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights[DEFAULT_WEIGHTS]
    model_dir = str(dest) if dest else None
    torch.hub.load_state_dict_from_url(weights.url, model_dir=model_dir, progress=True, check_hash=True)
    return (dest or Path(torch.hub.get_dir()) / "checkpoints") / Path(weights.url).name


def _check_local(path: Path) -> str | None:
    if path.is_file():
        return None
    count = len(list(path.glob("*.pth")))
    return None if count == 1 else f"needs exactly one .pth file inside (found {count})"


def _check_cached(value: str) -> ModelCheck | None:
    """A torchvision weights name: is its file in the torch hub checkpoints folder?"""
    from torchvision.models import ResNet18_Weights

    if value not in ResNet18_Weights.__members__:
        return None
    import torch

    url = ResNet18_Weights[value].url
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    cached = checkpoints / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return ModelCheck("ok", f"ResNet18 {value} in the torch hub cache ({cached})")
    return ModelCheck("warn", f"ResNet18 {value} is not in the torch hub cache ({checkpoints}); "
                              "it will download on first use")


class _ImageParams(BaseModel):
    attachment_id: str
    top_k: int = Field(5, ge=1, le=20)


class ImageTool(Tool[_ImageParams]):
    name = "image"
    description = ("Say what a photo shows (1000 ImageNet classes, top 5 with probabilities). "
                   "Names the main subject only; to count or locate objects use detect.")
    kinds = frozenset({"image"})
    routes = frozenset({"image"})
    Params = _ImageParams
    model = ModelSpec("image (ResNet18)", DEFAULT_WEIGHTS, "ASSISTANT_IMAGE_WEIGHTS", "resnet18",
                      _fetch, _check_local, _check_cached,
                      fetch_source=f"torchvision ResNet18_Weights.{DEFAULT_WEIGHTS}")

    def __init__(self, source: ModelSource, device: str | None = None) -> None:
        super().__init__()
        self._source = source
        self._device = device

    @classmethod
    def create(cls, config: ToolConfig) -> ImageTool:
        assert config.source is not None
        return cls(config.source, device=config.device)

    def source(self) -> str:
        return self._source.value

    def _load(self) -> _Classifier:
        import torch
        import torchvision
        from torchvision.models import ResNet18_Weights

        state_dict = self._state_dict()
        model = torchvision.models.resnet18(weights=None)
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise self._error(f"the file is not a ResNet18 state dict ({short_reason(exc)})") from None
        device = select_device(self._device)
        model = _fuse_batch_norms(model.eval()).to(device, memory_format=torch.channels_last)
        reference = ResNet18_Weights.IMAGENET1K_V1
        transforms = reference.transforms()
        return _Classifier(model, transforms, list(reference.meta["categories"]), device,
                           int(transforms.resize_size[0]))

    def _state_dict(self) -> dict[str, Any]:
        """The state dict the setting names: a download by weights name, or a local ``.pth``."""
        import torch
        from torchvision.models import ResNet18_Weights

        value = self._source.value.strip()
        if value in ResNet18_Weights.__members__:
            weights = ResNet18_Weights[value]
            try:
                return weights.get_state_dict(progress=True, check_hash=True)
            except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError), bad hash
                raise self._error(f"downloading {weights.url} failed ({short_reason(exc)})") from None
        path = Path(value).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.pth"))
            if len(files) != 1:
                found = ", ".join(f.name for f in files) or "none"
                raise self._error(f"the directory must hold exactly one .pth file (found: {found})")
            path = files[0]
        elif not path.is_file():
            if "/" in value or "\\" in value or value.endswith((".pth", ".pt")):
                raise self._error("no such file or directory")
            names = ", ".join(ResNet18_Weights.__members__)
            raise self._error(f"not a known weights name ({names}) nor an existing path")
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many kinds (pickle, zip, EOF) on bad files
            raise self._error(f"{path.name} is not a readable PyTorch state dict ({short_reason(exc)})") from None
        if not isinstance(state_dict, dict):
            raise self._error(f"{path.name} holds a {type(state_dict).__name__}, not a state dict")
        return state_dict

    def _error(self, reason: str) -> ModelLoadError:
        return ModelLoadError("image", self._source.value, self._source.variable, reason)

    def run(self, params: _ImageParams, ctx: ToolContext) -> ImageResult:
        import torch

        classifier: _Classifier = self._model
        path = ctx.attachments.path_of(params.attachment_id, self.kinds)
        image = open_image(path, min_size=classifier.resize_size)
        width, height = _oriented_size(path)
        batch = classifier.transforms(image).unsqueeze(0)
        batch = batch.to(classifier.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            probabilities = classifier.model(batch)[0].softmax(0)
            scores, indices = probabilities.topk(params.top_k)
        labels: list[Label] = sorted_labels(
            (classifier.categories[index], score)
            for index, score in zip(indices.tolist(), scores.tolist(), strict=True))
        return ImageResult(labels=labels, width=width, height=height)


def _fuse_batch_norms(model: Any) -> Any:
    """Fold every batch norm of an eval-mode ResNet into the convolution before it.

    Same outputs (to float rounding), fewer passes over memory: a few ms per photo on CPU.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.conv1, model.bn1 = fuse_conv_bn_eval(model.conv1, model.bn1), nn.Identity()
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                conv, norm = block.downsample
                block.downsample = fuse_conv_bn_eval(conv, norm)
    return model


def _oriented_size(path: Path) -> tuple[int, int]:
    """The photo's full width and height as a person sees it (EXIF rotation applied).

    ``open_image`` may decode a big JPEG at a reduced scale, so the size comes from the
    file's header (already validated by ``open_image``; reading it costs well under 1 ms).
    """
    from PIL import ExifTags, Image

    with Image.open(path) as header:
        width, height = header.size
        orientation = header.getexif().get(ExifTags.Base.Orientation)
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)
