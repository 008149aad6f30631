"""The exported Space on this machine's CPU: folder size, start-up time of `python app.py` and
latency per upload.

    python tools/bench_space.py --checkpoint RUN_DIR/last.ckpt [--starts 3] [--repeats 10]
                                [--out results/space_latency.json]

Exports the checkpoint (app.py --export-space) into a temporary folder, then starts the exported app
there with the project off the path (as a Space runs it), `--starts` times: start-up is the time
from launching the process to the page's first answer. Uploads (a 640x480 JPEG made by the project)
go through gradio_client's /analyse (top classes + GradCAM). Latency depends on the network, not on
its weights.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gradio
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as python tools/NAME.py

import app
from data import make_synthetic
from demo.serving import SERVING_RECORD
from demo.space import folder_bytes
from model import DEFAULT_LAYERS
from plumbing.files import atomic_write_json, describe_device
from plumbing.records import SPACE_LATENCY
from tools.bench_app import free_port, timings_ms


def start(folder, port):
    """(process, seconds until the page answers) of `python app.py` in `folder`, without the project
    on the path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=folder,
        env={**env, "GRADIO_SERVER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the exported app exited with status {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return process, time.perf_counter() - began
        except OSError:
            time.sleep(0.1)


def stop(process):
    process.terminate()
    process.wait(timeout=30)


def measure(folder, photo, layer, starts, repeats):
    """(start-up seconds of each start, latency of /analyse measured after the first start)."""
    from gradio_client import Client, handle_file

    seconds, latency = [], None
    for i in range(starts):
        port = free_port()
        process, took = start(folder, port)
        seconds.append(took)
        try:
            if i == 0:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                latency = timings_ms(
                    lambda: client.predict(
                        handle_file(str(photo)), layer, 0.5, api_name="/analyse"
                    ),
                    repeats,
                )
        finally:
            stop(process)
    return seconds, latency


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="results/space_latency.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="space_bench_") as work:
        folder = Path(work) / "space"
        try:
            print(app.export(args.checkpoint, folder))
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        photo = Path(work) / "photo_640x480.jpg"
        image = Image.fromarray(make_synthetic(1, seed=7)[0][0])
        image.resize((640, 480), Image.Resampling.BICUBIC).save(photo)
        record = json.loads((folder / SERVING_RECORD).read_text())
        layer = DEFAULT_LAYERS[record["model_name"]]
        load_before = os.getloadavg()
        starts, latency = measure(folder, photo, layer, args.starts, args.repeats)
        result = {
            "kind": SPACE_LATENCY,
            "what": "the Space exported by app.py --export-space, run as python app.py with the "
            "project off the path: folder size, seconds from starting the process to the "
            "page's first answer, and wall-clock ms per upload of a 640x480 JPEG through "
            "gradio_client /analyse (top classes + GradCAM at the default layer)",
            "model": record["model_name"],
            "weights": record["weights"],
            "layer": layer,
            "folder_mb": round(folder_bytes(folder) / 1e6, 1),
            "startup_seconds": [round(s, 1) for s in starts],
            "startup_median_seconds": round(statistics.median(starts), 1),
            "upload_analyse": latency,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "device": describe_device("cpu"),
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "torch": torch.__version__,
                "gradio": gradio.__version__,
                "python": platform.python_version(),
            },
        }
    atomic_write_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
