"""airbench94 (Keller Jordan's cifar10-airbench, pip package airbench 0.1.8) on the same data as
train.py, as the reference in the README's results table. Needs a CUDA GPU and the airbench package
(tools/gpu_runs.sh carries it).

    python tools/airbench_reference.py --data-dir data --seeds 0 1 2 --results-dir results

airbench reads CIFAR-10 from cifar10/train.pt and cifar10/test.pt under the working directory (and
would download the official files through torchvision if they were missing): this script writes
those from --data-dir first, so airbench trains and tests on exactly the images train.py uses. One
untimed warm-up run comes first, as airbench's own timings do; wall_seconds then counts loading the
data onto the GPU, training and both evaluations, and train_seconds the call of train94 alone, the
GPU synchronised at both ends (loading the test set, making the network, initialising its whitening
layer, the training epochs; airbench's own total counts the last two), to compare with train.py's
train_seconds less its warmup_seconds. test_acc is without test-time augmentation; test_acc_tta is
airbench94's published figure, mirror + translate TTA (train.py's test_acc_tta is mirror only)."""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from data import CLASSES, load_cifar10
from plumbing.files import describe_device
from plumbing.records import RUN, write_record


def write_airbench_data(data, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        torch.save(
            {
                # uint8 N x 32 x 32 x 3, as airbench's
                "images": torch.from_numpy(data[f"{split}_images"]),
                "labels": torch.from_numpy(data[f"{split}_labels"]),
                "classes": list(CLASSES),
            },
            folder / f"{split}.pt",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", required=True, help="folder holding cifar-10-batches-py/, as for train.py"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--work-dir", default="runs/airbench", help="airbench's working directory")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir).resolve()
    data = load_cifar10(args.data_dir)
    work = Path(args.work_dir)
    write_airbench_data(data, work / "cifar10")
    os.chdir(work)
    import airbench  # here: it looks for cifar10/ relative to the working directory

    airbench.warmup94()
    for seed in args.seeds:
        torch.manual_seed(seed)
        start = time.perf_counter()
        train_loader = airbench.CifarLoader(
            "cifar10", train=True, batch_size=1024, aug=dict(flip=True, translate=2), altflip=True
        )
        torch.cuda.synchronize()
        train_start = time.perf_counter()
        model = airbench.train94(train_loader, verbose=False)
        torch.cuda.synchronize()
        train_seconds = time.perf_counter() - train_start
        test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
        test_acc = airbench.evaluate(model, test_loader, tta_level=0)
        test_acc_tta = airbench.evaluate(model, test_loader, tta_level=2)
        wall_seconds = time.perf_counter() - start
        record = {
            "kind": RUN,
            "recipe": "airbench94",
            "model": "airbench94",
            "epochs": 9.9,
            "batch_size": 1024,
            "seed": seed,
            "device": describe_device("cuda"),
            "data": data["source"].split(" in ")[0],
            "train_images": len(data["train_labels"]),
            "test_images": len(data["test_labels"]),
            # CifarLoader augments the data set on the GPU; make_net94 is channels-last
            "augment_on": "device",
            "channels_last": True,
            "precision": "fp16",
            "compile": False,
            "test_acc": round(test_acc, 6),
            "test_acc_tta": round(test_acc_tta, 6),
            "tta": "mirror+translate",
            "wall_seconds": round(wall_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "torch": torch.__version__,
        }
        path = write_record(results_dir, record)
        print(
            f"airbench94 seed {seed}: {test_acc:.2%} ({test_acc_tta:.2%} with its TTA) in "
            f"{wall_seconds:.1f} s "
            f"-> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
