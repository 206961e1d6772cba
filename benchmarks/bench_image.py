"""Image tool speed: our warm tool against the honest peer, the plain torchvision path with a
warm model (the weights' transforms + the model); a model rebuilt per call is a reference column.

A ResNet18 with random weights (the real architecture: same cost as IMAGENET1K_V1).
Photos: a 1 MP JPEG (the 12 MP street photo scaled to 1152×864), the 500×375 pizza,
and the 12 MP street_scooters.jpg itself. End to end = attachment id to result
(decode, EXIF, preprocessing, forward, top-5). The naive paths do what the library's
examples do: ``Image.open(p).convert("RGB")`` + ``ResNet18_Weights.IMAGENET1K_V1.transforms()``
+ the model, either rebuilt per call or kept warm. Results are JSON lines.

    .venv/bin/python benchmarks/bench_image.py [--repeat N]
"""

from __future__ import annotations

import os
from pathlib import Path

from common import MEDIA, emit, median_ms, repeat_arg, scratch_dir, timed


def _import_libraries() -> None:
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def _one_megapixel_photo(dst: Path) -> Path:
    from PIL import Image

    with Image.open(MEDIA / "images" / "street_scooters.jpg") as image:
        image.convert("RGB").resize((1152, 864), Image.Resampling.LANCZOS).save(dst, quality=90)
    return dst


def main() -> None:
    repeat = repeat_arg(__doc__, default=30)

    from assistant.attachments import AttachmentStore
    from tests.model_builders import build_resnet18
    from tools.base import ModelSource, ToolContext
    from tools.image import ImageTool

    _, import_s = timed(_import_libraries)
    scratch = scratch_dir("image")
    weights_file = build_resnet18(scratch / "resnet18.pth")
    photos = {
        "1mp": _one_megapixel_photo(scratch / "street_1mp.jpg"),
        "pizza_500x375": MEDIA / "images" / "inet_pizza.jpg",
        "12mp": MEDIA / "images" / "street_scooters.jpg",
    }

    tool = ImageTool(ModelSource(str(weights_file), "ASSISTANT_IMAGE_WEIGHTS"), device="cpu")
    _, load_s = timed(tool.ensure_loaded)
    store = AttachmentStore()
    ids = {name: store.register(path).id for name, path in photos.items()}
    ctx = ToolContext(store, scratch)
    ours = {name: median_ms(lambda i=ids[name]: tool.call({"attachment_id": i}, ctx),
                            repeat=repeat, warmup=3)
            for name in photos}
    emit("image", path="ours", import_s=import_s, load_s=load_s,
         **{f"{name}_ms": ms for name, ms in ours.items()},
         photos_per_s_1mp=1000 / ours["1mp"])

    import torch
    import torchvision
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    preprocess, categories = weights.transforms(), weights.meta["categories"]

    def build_model() -> torch.nn.Module:
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(torch.load(weights_file, weights_only=True))
        return model.eval()

    def classify(model: torch.nn.Module, path: Path) -> list[str]:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            probabilities = model(preprocess(image).unsqueeze(0))[0].softmax(0)
        return [categories[i] for i in probabilities.topk(5).indices.tolist()]

    warm = build_model()
    naive_warm = {name: median_ms(lambda p=path: classify(warm, p), repeat=repeat, warmup=3)
                  for name, path in photos.items()}
    naive_rebuilt = {name: median_ms(lambda p=path: classify(build_model(), p),
                                     repeat=max(repeat // 3, 5))
                     for name, path in photos.items()}
    emit("image", path="warm library (and per call)", load_avg=os.getloadavg()[0],
         **{f"warm_model_{name}_ms": ms for name, ms in naive_warm.items()},
         **{f"model_per_call_{name}_ms": ms for name, ms in naive_rebuilt.items()},
         **{f"warm_over_ours_{name}": naive_warm[name] / ours[name] for name in photos},
         **{f"per_call_over_ours_{name}": naive_rebuilt[name] / ours[name] for name in photos})


if __name__ == "__main__":
    main()
