"""Latency of the demo app on the CPU, per upload: one image, a batch of uploads, and one upload
through HTTP.

    python tools/bench_app.py [--checkpoint RUN_DIR/last.ckpt] [--repeats 20] [--threads N]
                              [--out results/app_latency.json]

Without --checkpoint both models run with fresh weights (latency does not depend on the weights).
The uploads are images the project generates (data.make_synthetic, enlarged to photo sizes and saved
as JPEG/PNG).
"""

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gradio
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as python tools/NAME.py

import app
import gradcam
import utils
from data import CLASSES, make_synthetic
from demo import serving
from model import MODELS, build_model
from plumbing.files import atomic_write_json, describe_device
from plumbing.records import APP_LATENCY


def timings_ms(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(float(np.percentile(times, 90)), 1),
        "min_ms": round(min(times), 1),
        "repeats": repeats,
    }


def write_uploads(folder, count, size, extension):
    images, _ = make_synthetic(count, seed=7)
    paths = []
    for i, image in enumerate(images):
        path = Path(folder) / f"upload_{size[0]}x{size[1]}_{i}.{extension}"
        Image.fromarray(image).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_demo(demo, folder, repeats, batch_size):
    layer = gradcam.DEFAULT_LAYERS[demo.model_name]
    photo = write_uploads(folder, 1, (640, 480), "jpg")[0]
    phone = write_uploads(folder, 1, (4000, 3000), "jpg")[0]
    big_png = write_uploads(folder, 1, (6000, 6000), "png")[0]
    batch = write_uploads(folder, batch_size, (640, 480), "jpg")
    model_input = serving.prepare_upload(photo).model_input[None]
    inputs = np.stack([serving.prepare_upload(p).model_input for p in batch])

    def predict(images):
        return utils.predict_images(demo.model, images, demo.mean, demo.std)

    def analyse(path):
        return serving.analyse_upload(demo, path, layer)

    results = {
        "predict_only_1_image": timings_ms(lambda: predict(model_input), repeats),
        f"predict_only_{batch_size}_images": timings_ms(lambda: predict(inputs), repeats),
        "upload_640x480_jpeg": timings_ms(lambda: analyse(photo), repeats),
        "upload_4000x3000_jpeg": timings_ms(lambda: analyse(phone), max(3, repeats // 4)),
        "upload_6000x6000_png": timings_ms(lambda: analyse(big_png), 3, warmup=1),
        f"batch_of_{batch_size}_640x480_jpeg": timings_ms(
            lambda: serving.classify_batch(demo, batch), repeats
        ),
    }
    batch_result = results[f"batch_of_{batch_size}_640x480_jpeg"]
    batch_result["median_ms_per_image"] = round(batch_result["median_ms"] / batch_size, 1)
    return results


def bench_http(demo, folder, repeats):
    """One upload through a launched app and gradio_client: upload, queue, the function, PNG
    encoding, download."""
    from gradio_client import Client, handle_file

    photo = write_uploads(folder, 1, (640, 480), "jpg")[0]
    ui = app.build_ui(demo)
    _, url, _ = ui.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
    )
    try:
        client = Client(url, verbose=False)
        layer = gradcam.DEFAULT_LAYERS[demo.model_name]
        return timings_ms(
            lambda: client.predict(handle_file(str(photo)), layer, 0.5, api_name="/analyse"),
            repeats,
        )
    finally:
        ui.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", help="a run's last.ckpt; default: both models with fresh weights"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads; 1 gives steadier figures on a busy CPU"
    )
    parser.add_argument("--out", default="results/app_latency.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        try:
            demos = [app.load_demo(args.checkpoint)]
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    else:  # fresh weights and any mean/std: latency depends on neither
        demos = [
            serving.Demo(
                build_model(name).eval(),
                {"model_name": name, "classes": CLASSES, "mean": (0.5,) * 3, "std": (0.25,) * 3},
            )
            for name in MODELS
        ]
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for demo in demos:
            print(f"{demo.model_name}...", flush=True)
            results[demo.model_name] = bench_demo(demo, folder, args.repeats, args.batch_size)
            http = bench_http(demo, folder, args.repeats)
            results[demo.model_name]["http_upload_640x480_jpeg"] = http
    report = {
        "kind": APP_LATENCY,
        "what": "wall-clock latency of the demo page's functions per call, CPU only; upload_* = "
        "serving.analyse_upload (decode, centre crop, resize, predict, GradCAM at the "
        "default layer, overlay); batch_* = serving.classify_batch (decode and predict, no "
        "GradCAM); http_* = one upload through gradio_client against the launched app",
        "device": describe_device("cpu"),
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "checkpoint": args.checkpoint,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gradio": gradio.__version__,
        },
        "results": results,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    for name, rows in results.items():
        for what, row in rows.items():
            print(
                f"{name:14s} {what:32s} median {row['median_ms']:8.1f} ms  "
                f"p90 {row['p90_ms']:8.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
