import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from data import make_synthetic, write_cifar_folder  # noqa: E402


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A small synthetic data set written in the official cifar-10-batches-py pickle layout."""
    root = tmp_path_factory.mktemp("cifar")
    train_images, train_labels = make_synthetic(600, seed=1)
    test_images, test_labels = make_synthetic(200, seed=2)
    write_cifar_folder(root, train_images, train_labels, test_images, test_labels)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder (last.ckpt, summary.json, ...) from one quick epoch on synthetic data, for the app's tests."""
    import train

    out = tmp_path_factory.mktemp("tiny_run")
    argv = ["--model", "custom_resnet", "--synthetic", "--train-size", "100", "--test-size", "60", "--epochs", "1",
            "--batch-size", "50", "--out", str(out), "--enable-progress-bar", "false", "--num-workers", "0"]
    assert train.main(argv) == 0
    return out
