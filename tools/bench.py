"""Training throughput of the whole pipeline against a bare PyTorch loop, in the same process.

    python tools/bench.py --batch-size 128 --steps 20 [--device cpu|cuda]
        [--augment-on loader|device] [--precision 32-true|bf16-mixed] [--[no-]channels-last]
        [--compile] [--rounds 3] --out results/X.json

"pipeline" is train.py's own train(): the DataModule, the LitClassifier, the Trainer with train.py's
callbacks and loggers (progress bar included), on synthetic images, timed over its training steps
only. "bare" is a plain loop of forward, loss, backward, optimizer step over one fixed batch of the
same shape, same model, optimizer, memory format and precision: the speed the hardware gives with
nothing else around it. Rounds alternate bare and pipeline, so load from other processes falls on
both alike; "ratio" compares the best (least disturbed) round of each, "median_round_ratio" is the
median over rounds of pipeline / the bare loop run just before it."""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as python tools/NAME.py

import recipes
import train
from lit_classifier import OPTIMIZERS, make_optimizer
from model import MODELS, build_model
from plumbing import cli
from plumbing.checkpointing import synchronize
from plumbing.files import atomic_write_json, describe_device


class StepClock(pl.Callback):
    """Times the steps after the first `warmup`: from the end of step warmup - 1 to the end of the
    last step, so fetching and augmenting the timed batches falls inside the window."""

    def __init__(self, warmup, last_step):
        self.warmup, self.last_step = warmup, last_step
        self.start = self.end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx in (self.warmup - 1, self.last_step):
            # at the two ends only: a sync every step would slow a GPU
            synchronize(pl_module.device)
            now = time.perf_counter()
            if batch_idx == self.warmup - 1:
                self.start = now
            else:
                self.end = now


def pipeline_images_per_second(settings, trainer_flags, warmup, steps):
    """train.py's train() itself, for one epoch of warmup + steps batches (its test and report are
    not timed)."""
    with tempfile.TemporaryDirectory() as out:
        clock = StepClock(warmup, warmup + steps - 1)
        train.train({**settings, "out": out}, dict(trainer_flags), callbacks=[clock])
    return settings["batch_size"] * steps / (clock.end - clock.start)


def bare_images_per_second(settings, precision, device, warmup, steps):
    """A plain loop over one fixed batch: the speed the hardware gives the same model, optimizer,
    memory layout and precision with nothing around it."""
    model = build_model(settings["model"], logit_scale=settings["logit_scale"]).to(device)
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    if settings["compile"]:
        model = torch.compile(model, dynamic=False)  # as LitClassifier.compile_training
    optimizer = make_optimizer(
        model.parameters(),
        settings["optimizer"],
        0.01,
        settings["momentum"],
        settings["weight_decay"],
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
    batch = settings["batch_size"]
    images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=half is torch.float16)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="custom_resnet")
    parser.add_argument(
        "--recipe", help="recipe for the optimizer and model settings (default: the model's)"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="bare/pipeline pairs")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--augment-on", choices=("auto", "loader", "device"), default="auto", help="as train.py"
    )
    parser.add_argument("--precision", help="as train.py (default: train.py's for the device)")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="as train.py (default: train.py's for the device)",
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: train.py's)")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    return parser


def train_settings(options):
    """train.py's own parsing and defaults, for synthetic data of exactly warmup + steps full
    batches."""
    argv = [
        "--model",
        options.model,
        "--synthetic",
        "--epochs",
        "1",
        "--batch-size",
        str(options.batch_size),
        "--train-size",
        str(options.batch_size * (options.warmup + options.steps)),
        "--test-size",
        "10",
        "--augment-on",
        options.augment_on,
        "--out",
        "unused",
        "--lr",
        "0.01",
        "--accelerator",
        "gpu" if options.device == "cuda" else "cpu",
        "--devices",
        "1",
        "--limit-val-batches",
        "0",
        "--num-sanity-val-steps",
        "0",
    ]  # training throughput only
    for flag, value in (
        ("--recipe", options.recipe),
        ("--precision", options.precision),
        ("--num-workers", options.num_workers),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if options.channels_last is not None:
        argv.append("--channels-last" if options.channels_last else "--no-channels-last")
    if options.compile:
        argv.append("--compile")
    return cli.parse(argv, "", recipes.RECIPES, MODELS, OPTIMIZERS, recipes.resolve)


def run(options):
    if min(options.steps, options.warmup, options.rounds, options.batch_size) < 1:
        raise ValueError("--steps, --warmup, --rounds and --batch-size must be at least 1")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device here")
    device = torch.device(options.device)
    load_before = os.getloadavg()
    settings, trainer_flags = train_settings(options)
    precision = str(trainer_flags.get("precision", "32-true"))
    pl.seed_everything(0)
    bare, pipeline = [], []
    for _ in range(options.rounds):
        bare.append(
            bare_images_per_second(settings, precision, device, options.warmup, options.steps)
        )
        pipeline.append(
            pipeline_images_per_second(settings, trainer_flags, options.warmup, options.steps)
        )
    result = {
        "kind": "throughput",
        "model": settings["model"],
        "recipe": settings["recipe"],
        "batch_size": settings["batch_size"],
        "steps": options.steps,
        "warmup_steps": options.warmup,
        "rounds": options.rounds,
        "device": describe_device(device),
        "augment_on": settings["augment_on"],
        "num_workers": settings["num_workers"] or 0,
        "precision": precision,
        "channels_last": settings["channels_last"],
        "compile": settings["compile"],
        "pipeline_images_per_second": round(max(pipeline), 2),
        "bare_images_per_second": round(max(bare), 2),
        "ratio": round(max(pipeline) / max(bare), 4),
        # each round's pipeline over the bare loop just before it: neighbours in time share the
        # machine's load
        "median_round_ratio": round(statistics.median(p / b for p, b in zip(pipeline, bare)), 4),
        "pipeline_rounds": [round(v, 2) for v in pipeline],
        "bare_rounds": [round(v, 2) for v in bare],
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
        },
    }
    atomic_write_json(options.out, result)
    return result


def main(argv=None):
    options = build_parser().parse_args(argv)
    try:
        result = run(options)
    except cli.USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['device']}, {result['model']}, batch {result['batch_size']}, augmented on "
        f"{result['augment_on']}, {result['precision']}, channels-last {result['channels_last']}: "
        f"pipeline {result['pipeline_images_per_second']:.1f} images/s, bare loop "
        f"{result['bare_images_per_second']:.1f} images/s, ratio {result['ratio']:.3f}; "
        f"written to {options.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
