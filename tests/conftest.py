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
