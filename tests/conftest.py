import os
import signal
import subprocess
import sys
import time
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


def kill_after_first_checkpoint(argv, out, log_path):
    """Start `python train.py ARGV --out OUT` in a process group of its own and SIGKILL the whole group (every rank,
    every DataLoader worker) half a second after epoch 1's last.ckpt appeared, i.e. during epoch 2."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "train.py", *argv, "--out", str(out)], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not (Path(out) / "last.ckpt").exists():  # appears whole (atomic rename) once epoch 1 has ended
            assert process.poll() is None, Path(log_path).read_text()[-3000:]
            assert time.monotonic() - started < 600
            time.sleep(0.01)
        time.sleep(0.5)  # into epoch 2
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
