"""Result records: one JSON file per timed run (train.py --results-dir, tools/airbench_reference.py)
or benchmark (tools/bench.py) in results/; tools/results_table.py turns them into the README's
tables."""

import re
from pathlib import Path

from plumbing.files import atomic_write_json

RUN, THROUGHPUT = "time_to_accuracy", "throughput"
# Latency reports of tools/bench_app.py and tools/bench_space.py: read by people, not by the tables.
APP_LATENCY, SPACE_LATENCY = "app_latency", "space_latency"
RUN_KEYS = (
    "recipe",
    "model",
    "epochs",
    "batch_size",
    "seed",
    "device",
    "data",
    "train_images",
    "test_images",
    "augment_on",
    "channels_last",
    "precision",
    "compile",
    "test_acc",
    "test_acc_tta",
    "wall_seconds",
    "train_seconds",
    "torch",
)
THROUGHPUT_KEYS = (
    "model",
    "batch_size",
    "device",
    "augment_on",
    "num_workers",
    "precision",
    "channels_last",
    "pipeline_images_per_second",
    "bare_images_per_second",
    "ratio",
    "median_round_ratio",
    "load_before",
    "load_after",
)


def data_set_name(source):
    """'CIFAR-10 (official) in /some/folder' -> 'CIFAR-10 (official)': the data set, not where it
    was read from."""
    return source.split(" in ")[0]


def record_from_summary(summary):
    """The time-to-accuracy record of one train.py run (its summary.json)."""
    return {
        "kind": RUN,
        **{key: summary.get(key) for key in RUN_KEYS if key in summary},
        "data": data_set_name(summary["data"]),
        "compile": bool(summary["settings"]["compile"]),
        "test_acc_tta": summary.get("test_acc_tta"),
        **{
            key: summary[key]
            for key in (
                "tta",
                "warmup_seconds",
                "eval_seconds",
                "train_epoch_seconds",
                "epoch_test_acc",
                "load_before",
                "load_after",
            )
            if key in summary
        },
        "torch": summary["versions"]["torch"],
        "lightning": summary["versions"]["pytorch_lightning"],
    }


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def write_record(folder, record):
    """results/RECIPE-MODEL-Nep-bBATCH-IMAGES-PRECISION-seedS-DEVICE.json; a rerun of the same
    setting and seed replaces its file."""
    missing = [key for key in RUN_KEYS if key not in record]
    if missing:
        raise ValueError(f"a time-to-accuracy record needs {', '.join(missing)}")
    name = (
        f"{slug(record['recipe'])}-{slug(record['model'])}-{slug(record['epochs'])}ep-"
        f"b{record['batch_size']}-{record['train_images'] or 'all'}img-"
        f"{slug(record['precision'])}-seed{record['seed']}-{slug(record['device'])}.json"
    )
    path = Path(folder) / name
    atomic_write_json(path, record)
    return path
