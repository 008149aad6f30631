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

# What every finished run leaves in its folder (report.RUN_OUTPUTS also names optional ones).
RUN_FILES = (
    "summary.json",
    "metrics.csv",
    "last.ckpt",
    "curves.png",
    "misclassified.png",
    "gradcam.png",
    "confusion.png",
)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A small synthetic data set written in the official cifar-10-batches-py pickle layout."""
    root = tmp_path_factory.mktemp("cifar")
    train_images, train_labels = make_synthetic(600, seed=1)
    test_images, test_labels = make_synthetic(200, seed=2)
    write_cifar_folder(root, train_images, train_labels, test_images, test_labels)
    return root


# The small run that test_train, test_resume and test_ddp all compare with (one process, 3 epochs):
# 105 images in batches of 20 (5 steps an epoch, the last 5 images dropped), a test split of 45.
SMALL_RUN = [
    "--synthetic",
    "--train-size",
    "105",
    "--test-size",
    "45",
    "--epochs",
    "3",
    "--batch-size",
    "20",
    "--lr",
    "0.05",
    "--seed",
    "5",
    "--enable-progress-bar",
    "false",
]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """SMALL_RUN trained once per session, in this process and without DataLoader workers."""
    import train

    out = tmp_path_factory.mktemp("small_run")
    assert train.main(SMALL_RUN + ["--num-workers", "0", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder (last.ckpt, summary.json, ...) from one quick epoch on synthetic data, for the
    app's tests."""
    import train

    out = tmp_path_factory.mktemp("tiny_run")
    argv = [
        "--model",
        "custom_resnet",
        "--synthetic",
        "--train-size",
        "100",
        "--test-size",
        "60",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--out",
        str(out),
        "--enable-progress-bar",
        "false",
        "--num-workers",
        "0",
    ]
    assert train.main(argv) == 0
    return out


def kill_after_first_checkpoint(argv, out, log_path):
    """Start `python train.py ARGV --out OUT` in a process group of its own and SIGKILL the whole
    group (every rank, every DataLoader worker) half a second after epoch 1's last.ckpt appeared,
    i.e. during epoch 2."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "train.py", *argv, "--out", str(out)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        while not (
            Path(out) / "last.ckpt"
        ).exists():  # appears whole (atomic rename) once epoch 1 has ended
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


def parse_train_args(argv):
    """train.py's (settings, trainer flags) for `argv`, as its main() parses them."""
    import recipes
    from lit_classifier import OPTIMIZERS
    from model import MODELS
    from plumbing import cli

    return cli.parse(list(argv), "", recipes.RECIPES, MODELS, OPTIMIZERS, recipes.resolve)


# The figures of a run folder, each with its least size in pixels (width, height) and least number
# of colours: a blank figure has one, a curve tens (anti-aliased), images of the test split
# thousands.
FIGURES = {
    "curves.png": ((600, 250), 50),
    "misclassified.png": ((300, 150), 500),
    "confusion.png": ((600, 300), 100),
    "gradcam.png": ((600, 300), 1000),
}


def figure_pixels(path):
    """The RGB pixels of a PNG file, asserting it is one."""
    import matplotlib.image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return (matplotlib.image.imread(path)[..., :3] * 255).round().astype("uint8")


def assert_real_figures(run_dir):
    """Every figure of a run folder is a PNG of a plausible size that shows something."""
    import numpy as np

    for name, ((width, height), colours) in FIGURES.items():
        pixels = figure_pixels(Path(run_dir) / name)
        assert pixels.shape[1] >= width and pixels.shape[0] >= height, (name, pixels.shape)
        assert max(pixels.shape[:2]) <= 6000, (name, pixels.shape)
        found = len(np.unique(pixels.reshape(-1, 3), axis=0))
        assert found >= colours, (name, found)


def lowest_loss_lr(figure):
    """The LR where the LR range test's plotted (smoothed) loss is lowest, in find_lr's figure."""
    import numpy as np

    curve = figure.axes[0].lines[0]
    lrs, losses = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    return float(lrs[np.argmin(losses)])
