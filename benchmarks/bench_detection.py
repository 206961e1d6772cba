"""Detection tools speed: our warm DETR tools against a fresh transformers pipeline per call.

DETR ResNet-50 with random weights (the real architecture and processor: the same cost
as facebook/detr-resnet-50). Photos: the 12 MP street_scooters.jpg and the 500×375 zebra,
end to end (attachment id to result, annotated JPEG written). Video: car_traffic_small.mp4
(640×360, 30 s; one untimed run, then the median) at the default settings (ASSISTANT_VIDEO_FPS, ASSISTANT_VIDEO_MAX_FRAMES),
annotated MP4 written, as seconds of processing per second of video. The naive paths do what
the library's examples do: ``pipeline("object-detection", model=DIR)`` built for each call,
on the photo, and on each sampled video frame at the processor's own size (no video written).
Results are JSON lines.

    .venv/bin/python benchmarks/bench_detection.py [--repeat N]
"""

from __future__ import annotations


from common import CONFIGS, MEDIA, emit, median_ms, repeat_arg, scratch_dir, timed


def _import_libraries() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401


def main() -> None:
    repeat = repeat_arg(__doc__, default=3)

    from assistant.attachments import AttachmentStore
    from assistant.config import Settings
    from tests.model_builders import build_detr
    from tools.base import ModelSource, ToolContext
    from tools.detection import detection_tools

    _, import_s = timed(_import_libraries)
    scratch = scratch_dir("detection")
    model_dir = build_detr(scratch / "detr", CONFIGS / "detr-resnet-50")
    defaults = Settings()
    photo, video = detection_tools(ModelSource(str(model_dir), "ASSISTANT_DETECTION_MODEL"),
                                   device="cpu", threshold=defaults.detection_threshold,
                                   video_fps=defaults.video_fps,
                                   video_max_frames=defaults.video_max_frames)
    _, load_s = timed(photo.ensure_loaded)

    photos = {"12mp": MEDIA / "images" / "street_scooters.jpg",
              "zebra_500x375": MEDIA / "images" / "inet_zebra.jpg"}
    clip = MEDIA / "video" / "car_traffic_small.mp4"
    store = AttachmentStore()
    ids = {name: store.register(path).id for name, path in photos.items()}
    ctx = ToolContext(store, scratch / "out")
    ours = {name: median_ms(lambda i=ids[name]: photo.call({"attachment_id": i}, ctx),
                            repeat=repeat)
            for name in photos}
    clip_id = store.register(clip).id
    result = video.call({"attachment_id": clip_id}, ctx)
    video_s = median_ms(lambda: video.call({"attachment_id": clip_id}, ctx),
                        repeat=repeat, warmup=0) / 1000
    video_ratio = video_s / result.duration_s  # type: ignore[attr-defined]
    emit("detection", path="ours", import_s=import_s, load_s=load_s,
         **{f"{name}_ms": ms for name, ms in ours.items()},
         video_fps_sampled=defaults.video_fps, video_frames=result.frames_sampled,  # type: ignore[attr-defined]
         video_s=video_s, video_s_per_video_s=video_ratio)

    import cv2
    from PIL import Image
    from transformers import pipeline

    def naive_photo(path) -> list:
        return pipeline("object-detection", model=str(model_dir), device="cpu")(
            str(path), threshold=defaults.detection_threshold)

    def naive_video() -> int:
        detector = pipeline("object-detection", model=str(model_dir), device="cpu")
        capture = cv2.VideoCapture(str(clip))
        fps = capture.get(cv2.CAP_PROP_FPS)
        step = max(1, round(fps / defaults.video_fps))
        index = frames = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0 and frames < defaults.video_max_frames:
                detector(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)),
                         threshold=defaults.detection_threshold)
                frames += 1
            index += 1
        capture.release()
        return frames

    naive = {name: median_ms(lambda p=path: naive_photo(p), repeat=repeat, warmup=0)
             for name, path in photos.items()}
    naive_frames, naive_video_s = timed(naive_video)
    naive_ratio = naive_video_s / result.duration_s  # type: ignore[attr-defined]
    emit("detection", path="naive",
         **{f"pipeline_per_call_{name}_ms": ms for name, ms in naive.items()},
         **{f"per_call_over_ours_{name}": naive[name] / ours[name] for name in photos},
         video_frames=naive_frames, video_s=naive_video_s, video_s_per_video_s=naive_ratio,
         video_naive_over_ours=naive_ratio / video_ratio)


if __name__ == "__main__":
    main()
