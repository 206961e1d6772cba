"""Vision tool: what a request to the vision model costs on our side — the bytes sent and the
time to prepare them — per photo size and for a video's keyframes.

Photos: a 1 MP JPEG (the 12 MP street photo scaled to 1152×864), the real 12 MP
street_scooters.jpg (4032×3024), and a 12 MP JPEG made by upscaling the 500×375 pizza photo
to 4000×3000 (smooth content: a smaller file). Each is prepared for the default long side
(1024 px) and the largest allowed (2048 px): decode with EXIF rotation (a big JPEG decoded at a
reduced DCT scale), downscale, JPEG at quality 85, base64, the JSON body. The video:
car_traffic_small.mp4 (640×360, 30 s), 4 keyframes (the default) and 8. ``call_ms`` is the
whole tool call against the scripted fake Ollama answering at once (our overhead end to end:
the cached /api/show, preparing, HTTP, reading the stream).

The time of the vision request itself (the model reading the image and answering) needs a real
Ollama with a vision model, which these machines do not have: it is not measured here (see
docs/vision.md for published figures). Results are JSON lines.

    .venv/bin/python benchmarks/bench_vision.py [--repeat N]
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from common import MEDIA, emit, median_ms, repeat_arg, scratch_dir


def _photos(scratch: Path) -> dict[str, Path]:
    from PIL import Image

    street = MEDIA / "images" / "street_scooters.jpg"
    with Image.open(street) as image:
        image.convert("RGB").resize((1152, 864), Image.Resampling.LANCZOS).save(scratch / "1mp.jpg", quality=90)
    with Image.open(MEDIA / "images" / "inet_pizza.jpg") as image:
        image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(scratch / "12mp_up.jpg", quality=90)
    return {"1mp": scratch / "1mp.jpg", "12mp_real": street, "12mp_upscaled": scratch / "12mp_up.jpg"}


def _body(images: list[bytes]) -> bytes:
    """The /api/chat body as the ollama client sends it (the JPEGs base64 in ``images``)."""
    message = {"role": "user", "content": "x" * 300,
               "images": [base64.b64encode(data).decode("ascii") for data in images]}
    return json.dumps({"model": "qwen2.5vl:3b", "messages": [message], "stream": True}).encode()


def main() -> None:
    repeat = repeat_arg(__doc__, default=10)

    from PIL import Image

    from assistant.attachments import AttachmentStore
    from tests.fake_ollama import VISION, FakeOllama, answer
    from tools.base import ModelServer, ToolContext
    from tools.media import video_keyframes
    from tools.vision import VisionTool, jpeg, photo_jpeg

    scratch = scratch_dir("vision")
    photos = _photos(scratch)
    for name, path in photos.items():
        with Image.open(path) as image:
            size = image.size
        for side in (1024, 2048):
            data = photo_jpeg(path, side)
            prepare_ms = median_ms(lambda p=path, s=side: _body([photo_jpeg(p, s)]), repeat=repeat)
            emit("vision", input=name, source_px=f"{size[0]}x{size[1]}", file_bytes=path.stat().st_size,
                 side=side, sent_px="x".join(map(str, Image.open(io.BytesIO(data)).size)),
                 jpeg_bytes=len(data), body_bytes=len(_body([data])), prepare_ms=prepare_ms)

    video = MEDIA / "video" / "car_traffic_small.mp4"
    for frames in (4, 8):
        def prepare(count: int = frames) -> bytes:
            _, keyframes = video_keyframes(video, count)
            return _body([jpeg(image, 1024) for _, image in keyframes])

        extract_ms = median_ms(lambda count=frames: video_keyframes(video, count), repeat=repeat)
        emit("vision", input="car_traffic_small.mp4", frames=frames, body_bytes=len(prepare()),
             keyframes_ms=extract_ms, prepare_ms=median_ms(prepare, repeat=repeat))

    server = FakeOllama({"qwen2.5vl:3b": VISION}).start()
    try:
        tool = VisionTool(ModelServer(server.url, 8192, "5m"), "qwen2.5vl:3b")
        store = AttachmentStore()
        ctx = ToolContext(store, scratch, llm_model="qwen2.5vl:3b")
        for name in ("1mp", "12mp_real"):
            attachment = store.register(photos[name]).id
            server.scripts["qwen2.5vl:3b"] = [answer("A street with scooters.")] * (repeat + 2)
            call_ms = median_ms(lambda a=attachment: tool.call({"attachment_id": a}, ctx), repeat=repeat)
            emit("vision", input=name, side=1024, path="tool call, fake Ollama answering at once",
                 call_ms=call_ms)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
