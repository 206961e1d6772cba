"""Remote tools: one call here, on `assistant serve-tools` and on Ray Serve; 8 photos at once.

Per call (warm models; median wall ms, the three paths taking turns in rounds so that the load
of a shared machine falls on all alike): a small photo (image, 5.7 KB), a photo (detect, the
500×375 zebra), a 10 s clip (speech, real Whisper base, the first 10 s of an English reading)
and a 30 s video (video, 640×360, DETR on 30 frames), each run here (``Tool.call``), through the
client on ``serve-tools`` (loopback) and on Ray Serve (deploy/serve.yaml, loopback, CPU, two
PyTorch threads per replica). The overhead is remote minus local; the transfer is what the
file up and the written file down take at the loopback's measured speed; what remains is the
overhead beyond the transfer.

Eight concurrent photo calls: the local heavy-job queue (one at a time, ASSISTANT_HEAVY_JOBS=1),
serve-tools (one process: the tool's calls in turn), and Ray Serve with two DETR replicas and
batching (DETR's forward passes counted). DETR is random-weight (the real architecture and
cost). Results are JSON lines.

    .venv/bin/python benchmarks/bench_remote.py [--repeat N] [--quick]
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from common import MEDIA, SHARED, emit, interleaved_medians, scratch_dir, write_wav


def clip_10s(folder: Path) -> Path:
    """The first 10 s of the English reading, as a 16 kHz WAV."""
    from tools.media import SAMPLE_RATE, decode_audio

    samples = decode_audio(MEDIA / "audio" / "librosa_speech_en_female_198-209-0000.ogg")
    return write_wav(folder / "reading-10s.wav", samples[:10 * SAMPLE_RATE], SAMPLE_RATE)


def at_once(fn: Any, count: int) -> float:
    """Wall seconds for ``count`` calls of ``fn(index)`` in threads at once."""
    threads = [threading.Thread(target=fn, args=(index,)) for index in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per median")
    parser.add_argument("--quick", action="store_true",
                        help="only the photos (the per-call overhead and 8 at once)")
    args = parser.parse_args()
    scratch = scratch_dir("remote")
    os.environ["ASSISTANT_CACHE_DIR"] = str(scratch / "cache")

    from assistant.attachments import AttachmentStore
    from assistant.config import Settings
    from assistant.runtime import build_tools
    from tests.model_builders import build_models_dir
    from tests.serving import (TOKEN, Server, ray_config, service_env, start_ray_serve,
                               stop_ray_serve)
    from tools.base import ToolContext
    from tools.remote import RemoteTool, ToolsService

    models = build_models_dir(scratch / "models", SHARED / "models")
    local = build_tools(Settings.from_env({"ASSISTANT_MODELS_DIR": str(models), "ASSISTANT_DEVICE": "cpu"}))
    store = AttachmentStore()
    cases = {  # case: (tool, attachment)
        "small_photo_image": ("image", store.register(MEDIA / "images" / "ext_tabby_cat.jpg")),
        "photo_detect": ("detect", store.register(MEDIA / "images" / "inet_zebra.jpg")),
    }
    if not args.quick:
        cases["clip_10s_speech"] = ("speech", store.register(clip_10s(scratch)))
        cases["video_30s_video"] = ("video", store.register(MEDIA / "video" / "car_traffic_small.mp4"))
    photo = cases["photo_detect"][1]

    server = Server(service_env(models, scratch))
    url = start_ray_serve(ray_config(models, scratch, detr_replicas=2, threads=2))
    try:
        services = {"serve_tools": ToolsService(server.url, TOKEN, timeout=300),
                    "ray_serve": ToolsService(url, TOKEN, timeout=300)}

        def tool(path: str, name: str) -> Any:
            return local.get(name) if path == "local" else RemoteTool(local.get(name), services[path])

        sizes: dict[str, int] = {}
        for case, (name, attachment) in cases.items():
            result = local.get(name).call({"attachment_id": attachment.id}, ToolContext(store, scratch / "x"))
            sizes[case] = attachment.size + sum(Path(output).stat().st_size for output in result.outputs)
            # Each path in turn, in rounds: a change of load on the machine falls on all alike.
            timings = interleaved_medians(
                {path: (lambda path=path, name=name, attachment=attachment: tool(path, name).call(
                    {"attachment_id": attachment.id}, ToolContext(store, scratch / path)))
                 for path in ("local", "serve_tools", "ray_serve")},
                repeat=args.repeat * 3, rounds=3, warmup=1)
            speed_mb_s = _loopback_speed(services["serve_tools"])
            transfer_ms = sizes[case] / 1e6 / speed_mb_s * 1000
            emit("remote", case=case, bytes_moved=sizes[case], local_ms=timings["local"],
                 serve_tools_ms=timings["serve_tools"], ray_serve_ms=timings["ray_serve"],
                 transfer_ms=transfer_ms, loopback_mb_s=speed_mb_s,
                 serve_tools_overhead_ms=timings["serve_tools"] - timings["local"] - transfer_ms,
                 ray_serve_overhead_ms=timings["ray_serve"] - timings["local"] - transfer_ms)

        def photos_at_once(path: str, count: int = 8) -> float:
            return at_once(lambda index: tool(path, "detect").call(
                {"attachment_id": photo.id}, ToolContext(store, scratch / f"many{index}")), count)

        start = time.perf_counter()
        for _ in range(8):  # the local heavy-job queue (ASSISTANT_HEAVY_JOBS=1): one at a time
            local.get("detect").call({"attachment_id": photo.id}, ToolContext(store, scratch / "queue"))
        queue_s = time.perf_counter() - start
        serve_tools_s = photos_at_once("serve_tools")
        ray_s = photos_at_once("ray_serve")
        largest = max(services["ray_serve"].health(fresh=True).get("detr", {}).get("largest_batch", 0)
                      for _ in range(10))  # each answer is one replica's
        emit("remote", case="8_photos_at_once", local_queue_s=queue_s, serve_tools_s=serve_tools_s,
             ray_serve_2_replicas_batched_s=ray_s, largest_detr_batch=largest, cpus=os.cpu_count())
    finally:
        server.stop()
        stop_ray_serve()


def _loopback_speed(service: Any) -> float:
    """MB/s of 20 MB sent to the service (a call it refuses once the file is in: an error line;
    its fixed cost is lost in the transfer of so much)."""
    data = os.urandom(20_000_000)
    headers = {"x-tool-arguments": '{"attachment_id": "x", "max_frames": 0}'}
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        answer = service.client.post("/tools/video", content=data, headers=headers)
        samples.append(time.perf_counter() - start)
        assert answer.status_code == 200 and '"bad_call"' in answer.text
    return len(data) / 1e6 / statistics.median(samples)


if __name__ == "__main__":
    main()
