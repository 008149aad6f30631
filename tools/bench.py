"""Training throughput of the whole pipeline against a bare PyTorch loop, in the same process.

    python tools/bench.py --model custom_resnet --batch-size 64 --steps 20 [--device cpu|cuda] [--data-path loader|device]
                    [--precision 32-true|bf16-mixed] [--compile] [--rounds 3] --out results/bench_cpu.json

"pipeline" is train.py's own training: the DataModule with the chosen data path, the LitClassifier, the Trainer
with train.py's callbacks and loggers (progress bar included), on synthetic images. "bare" is a plain loop of
forward, loss, backward, optimizer step over one fixed batch of the same shape, same model, optimizer, memory
format and precision: the speed the hardware gives with nothing else around it. Rounds alternate bare and
pipeline, so load from other processes falls on both alike; "ratio" compares the best (least disturbed) round of
each, "median_round_ratio" is the median over rounds of pipeline / the bare loop run just before it.
"""
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

import recipes  # noqa: E402
import train  # noqa: E402
from model import build_model  # noqa: E402
from plumbing import checkpointing  # noqa: E402
from plumbing.files import UsageError, atomic_write_json, describe_device  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(pl.Callback):
    """Times the steps after the first `warmup`: from the end of step warmup - 1 to the end of the last step, so
    fetching and augmenting the timed batches falls inside the window."""

    def __init__(self, warmup, last_step):
        self.warmup, self.last_step = warmup, last_step
        self.start = self.end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx in (self.warmup - 1, self.last_step):
            synchronize(pl_module.device)  # only at the two ends: a sync every step would slow the GPU pipeline
            now = time.perf_counter()
            if batch_idx == self.warmup - 1:
                self.start = now
            else:
                self.end = now


def pipeline_images_per_second(args, trainer_kwargs, datamodule, warmup, steps):
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        clock = StepClock(warmup, warmup + steps - 1)
        trainer = train.make_trainer(args, trainer_kwargs, out, train.EpochMetricsCSV(out / "metrics.csv"),
                                     checkpointing.RunRecord({**vars(args), "trainer": trainer_kwargs}))
        trainer.callbacks.append(clock)
        trainer.fit(train.make_classifier(args, channels_last=channels_last(args)), datamodule=datamodule)
    return args.batch_size * steps / (clock.end - clock.start)


def channels_last(args):
    """As train.run chooses: channels-last on the device data path and on CUDA."""
    return args.data_path == "device" or args.accelerator == "gpu"


def bare_images_per_second(args, precision, device, warmup, steps):
    model = build_model(args.model, logit_scale=args.logit_scale).to(device)
    memory_format = torch.channels_last if channels_last(args) else torch.contiguous_format
    model.to(memory_format=memory_format)
    if args.compile:
        model = torch.compile(model, dynamic=False)  # as LitClassifier.compile_training
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=args.momentum, nesterov=True,
                                    weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=args.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
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
    return args.batch_size * steps / (time.perf_counter() - start)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="custom_resnet")
    parser.add_argument("--recipe", help="recipe for the optimizer and model settings (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="bare/pipeline pairs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-path", choices=("auto", "loader", "device"), default="auto",
                        help="as train.py: device on CUDA, loader elsewhere")
    parser.add_argument("--precision", help="as train.py (default: bf16-mixed on recent GPUs, else 32-true)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: train.py's)")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    return parser


def train_arguments(options, folder):
    """train.py's own parsing and defaults, for synthetic data of exactly warmup + steps full batches."""
    argv = ["--model", options.model, "--synthetic", "--epochs", "1", "--batch-size", str(options.batch_size),
            "--train-size", str(options.batch_size * (options.warmup + options.steps)), "--test-size", "10",
            "--data-path", options.data_path, "--out", str(folder),
            "--accelerator", "gpu" if options.device == "cuda" else "cpu", "--devices", "1",
            "--limit-val-batches", "0", "--num-sanity-val-steps", "0"]  # training throughput only
    for flag, value in (("--recipe", options.recipe), ("--precision", options.precision),
                        ("--num-workers", options.num_workers)):
        if value is not None:
            argv += [flag, str(value)]
    if options.compile:
        argv.append("--compile")
    args, trainer_kwargs = train.parse_args(argv)
    args = recipes.resolve(args)
    args.accelerator = trainer_kwargs["accelerator"]
    if args.lr is None:  # a recipe that takes its LR from the range test: any LR runs at the same speed
        args.lr = 0.01
    return train.hardware_defaults(args, trainer_kwargs)


def run(options):
    if options.steps < 1 or options.warmup < 1 or options.rounds < 1 or options.batch_size < 1:
        raise UsageError("--steps, --warmup, --rounds and --batch-size must be at least 1")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device here")
    device = torch.device(options.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        args, trainer_kwargs = train_arguments(options, folder)
        train.check_args(args)
        precision = str(trainer_kwargs.get("precision", "32-true"))
        datamodule = train.make_datamodule(args)
        datamodule.setup("fit")
        pl.seed_everything(0)
        bare, pipeline = [], []
        for _ in range(options.rounds):
            bare.append(bare_images_per_second(args, precision, device, options.warmup, options.steps))
            pipeline.append(pipeline_images_per_second(args, trainer_kwargs, datamodule, options.warmup,
                                                       options.steps))
    result = {
        "kind": "throughput",
        "model": args.model,
        "recipe": args.recipe,
        "batch_size": args.batch_size,
        "steps": options.steps,
        "warmup_steps": options.warmup,
        "rounds": options.rounds,
        "device": describe_device(device),
        "data_path": args.data_path,
        "num_workers": datamodule.num_workers if args.data_path == "loader" else 0,
        "precision": precision,
        "compile": args.compile,
        "pipeline_images_per_second": round(max(pipeline), 2),
        "bare_images_per_second": round(max(bare), 2),
        "ratio": round(max(pipeline) / max(bare), 4),
        # each round's pipeline over the bare loop just before it: neighbours in time share the machine's load
        "median_round_ratio": round(statistics.median(p / b for p, b in zip(pipeline, bare)), 4),
        "pipeline_rounds": [round(v, 2) for v in pipeline],
        "bare_rounds": [round(v, 2) for v in bare],
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "pytorch_lightning": pl.__version__},
    }
    atomic_write_json(options.out, result)
    return result


def main(argv=None):
    options = build_parser().parse_args(argv)
    try:
        result = run(options)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result['device']}, {result['model']}, batch {result['batch_size']}, {result['data_path']} data path, "
          f"{result['precision']}: pipeline {result['pipeline_images_per_second']:.1f} images/s, bare loop "
          f"{result['bare_images_per_second']:.1f} images/s, ratio {result['ratio']:.3f}; written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
