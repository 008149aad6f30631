"""`app.py --export-space DEST`: a folder that is a complete Hugging Face Space serving one trained
network.

DEST gets app.py (space_app.py) with the code it imports at the same paths (model.py, gradcam.py,
demo/serving.py), the weights as safetensors with their serving record (serving.json), a few test
images as examples, requirements.txt for CPU inference and README.md (the Space's front matter and
a short model card). Everything is written into a temporary folder beside DEST, which is renamed to
DEST once complete: a failed export leaves nothing behind.
"""

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from demo.serving import SERVING_RECORD, WEIGHTS, model_from_weights
from model import count_parameters
from plumbing.files import DIR_MODE, FILE_MODE
from utils import predict_images

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("model.py", "gradcam.py", "demo/serving.py")  # what space_app.py imports
DEMO_DOC = '"""The demo page (serving.py)."""\n'  # the Space's demo/__init__.py
MAX_BYTES = 60_000_000  # the whole folder
HALF_TOLERANCE = 0.001  # float16 weights are kept if the accuracy moves by at most 0.1 point
AGREEMENT = 0.999  # no test images: float16 must give float32's top class on 99.9% of generated
EXAMPLES = 6
# The Space installs these pinned to the versions installed here (the ones the export was tested
# with). torch and torchvision (which grad-cam imports) come as CPU builds from PyTorch's CPU wheel
# index: a Space without a GPU would otherwise download the CUDA build (gigabytes) for nothing.
REQUIREMENTS = (
    "torch",
    "torchvision",
    "grad-cam",
    "gradio",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "safetensors",
)
CPU_WHEELS = "https://download.pytorch.org/whl/cpu"
CPU_BUILDS = ("torch", "torchvision")


def check_destination(dest):
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"--export-space {dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise ValueError(
            f"--export-space {dest} exists and is not empty: give a new or empty "
            "folder (the export writes a whole Space and replaces nothing)"
        )


def requirements():
    lines = [
        "# CPU inference only: torch and torchvision from PyTorch's CPU wheel index.",
        f"--extra-index-url {CPU_WHEELS}",
    ]
    for name in REQUIREMENTS:
        version = importlib.metadata.version(name)
        if name in CPU_BUILDS:
            version = version.split("+")[0] + "+cpu"
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def save_weights(model, path, half):
    """The network's state dict as safetensors, floating-point tensors in float16 if `half`."""
    state = {
        name: (value.half() if half and value.is_floating_point() else value)
        for name, value in model.state_dict().items()
    }
    save_file({name: value.detach().cpu().contiguous() for name, value in state.items()}, str(path))


def choose_precision(demo, folder, record, images, labels):
    """Writes the weights in float16 if that keeps the network's answers, else in float32.
    Returns (precision, what the check found).

    float16 halves the download, and rounding the weights to 3 significant digits seldom changes a
    prediction; but seldom is not never, so we check: the accuracy on `images` must stay within
    HALF_TOLERANCE (the run's test images, with `labels`), or float16 must give float32's top class
    on AGREEMENT of them (generated images, no labels)."""
    path = folder / WEIGHTS
    full = predict_images(demo.model, images, demo.mean, demo.std).argmax(1)
    save_weights(demo.model, path, half=True)
    half = predict_images(model_from_weights(record, path), images, demo.mean, demo.std).argmax(1)
    if labels is not None:
        acc_full, acc_half = float((full == labels).mean()), float((half == labels).mean())
        kept = abs(acc_half - acc_full) <= HALF_TOLERANCE
        found = (
            f"test accuracy {acc_half:.2%} with float16 weights, {acc_full:.2%} with float32, "
            f"on the {len(images)} test images of the run"
        )
    else:
        agreement = float((full == half).mean())
        kept = agreement >= AGREEMENT
        found = (
            f"float16 weights give the float32 top class on {agreement:.2%} of {len(images)} "
            "generated images (the run's test images were not at hand)"
        )
    if not kept:
        save_weights(demo.model, path, half=False)
    return ("float16" if kept else "float32"), found


def write_examples(folder, images, labels, classes):
    """The first test image of each of the first EXAMPLES classes, as 32x32 PNGs (the network's own
    input size)."""
    folder.mkdir()
    for c in range(min(EXAMPLES, len(classes))):
        found = np.flatnonzero(labels == c)
        if len(found):
            Image.fromarray(images[found[0]]).save(folder / f"{classes[c]}.png")


def model_card(demo, record):
    network = type(demo.model).__doc__.strip().split(":")[0].split("\n")[0]
    accuracy, tta = record.get("test_acc"), record.get("test_acc_tta")
    seconds = record.get("train_seconds")
    settings = record.get("hyperparameters", {})
    recipe = record.get("recipe", "unknown")
    values = ", ".join(
        f"{key} {settings[key]}"
        for key in (
            "optimizer",
            "lr",
            "batch_size",
            "momentum",
            "weight_decay",
            "label_smoothing",
            "cutout",
        )
        if key in settings
    )
    rows = [
        (
            "Network",
            f"{network}, {count_parameters(demo.model):,} parameters "
            f"(`{demo.model_name}` in model.py)",
        ),
        (
            "Test accuracy",
            "not recorded"
            if accuracy is None
            else f"{accuracy:.2%} on {record['test_images']} test images"
            + (f" ({tta:.2%} with flip TTA)" if tta else ""),
        ),
        ("Data", record.get("data", "unknown")),
        ("Recipe", f"{recipe} ({values})" if values else recipe),
        ("Epochs", record.get("epochs", "unknown")),
        (
            "Trained on",
            record.get("device", "unknown") + (f", {seconds:.0f} s" if seconds is not None else ""),
        ),
        ("Weights", f"{record['weights']} safetensors: {record['weights_check']}"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        f"# CIFAR-10 {demo.model_name}\n\n"
        "Upload any image: the network classifies its centre square, resized to 32x32 pixels, "
        f"into the ten CIFAR-10 classes ({', '.join(demo.classes)}) and shows a GradCAM heat "
        "map of the pixels that drove the top class. Several files at once are classified as a "
        f"batch.\n\n| | |\n|---|---|\n{table}\n\n"
        "Exported from the CIFAR-10 ResNet training kit with `python app.py --checkpoint "
        "last.ckpt --export-space DEST`; `python app.py` in this folder serves it locally "
        "(port 7860 or GRADIO_SERVER_PORT).\n"
    )


def readme(demo, record):
    gradio = importlib.metadata.version("gradio")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    front = (
        f"---\ntitle: CIFAR-10 {demo.model_name}\nsdk: gradio\nsdk_version: {gradio}\n"
        f'python_version: "{python}"\napp_file: app.py\npinned: false\n---\n\n'
    )
    return front + model_card(demo, record)


def write_space(demo, folder, images, labels):
    """Everything of the Space into `folder` (which exists and is empty). Returns a line describing
    the weights."""
    record = dict(demo.record)  # the exported one also says how precise its weights are
    record["weights"], record["weights_check"] = choose_precision(
        demo, folder, record, images, labels
    )
    (folder / SERVING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.copyfile(ROOT / "demo" / "space_app.py", folder / "app.py")
    (folder / "demo").mkdir()
    (folder / "demo" / "__init__.py").write_text(DEMO_DOC)
    for name in COPIED:
        shutil.copyfile(ROOT / name, folder / name)
    if labels is not None:
        write_examples(folder / "examples", images, labels, demo.classes)
    (folder / "requirements.txt").write_text(requirements())
    (folder / "README.md").write_text(readme(demo, record))
    return f"{record['weights']} weights ({record['weights_check']})"


def folder_bytes(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def export_space(demo, dest, images, labels=None):
    """Writes the Space of `demo` (serving.Demo) to `dest`, a new or empty folder.

    `images`: the run's test images with their `labels`, for the float16 check and the examples; or
    generated images without labels (float16 is then checked against float32's top class, and there
    are no examples). Returns a report for the user; a ValueError or OSError if DEST cannot take the
    Space."""
    dest = Path(dest)
    check_destination(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    except OSError as error:
        raise OSError(
            f"--export-space {dest} cannot be written ({error.strerror or error})"
        ) from None
    try:
        weights = write_space(demo, work, images, labels)
        size = folder_bytes(work)
        if size > MAX_BYTES:
            raise ValueError(
                f"the Space would take {size / 1e6:.1f} MB, more than {MAX_BYTES / 1e6:.0f} MB"
            )
        os.chmod(work, DIR_MODE)  # mkdtemp makes a private folder, safetensors private files
        for path in work.rglob("*"):
            os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
        os.replace(work, dest)  # also takes the place of an empty folder
    except OSError as error:
        raise OSError(f"--export-space {dest} could not be written ({error})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)  # after the rename there is no work folder left
    return (
        f"Wrote a Hugging Face Space to {dest} ({size / 1e6:.1f} MB) with {weights}. Try it: "
        f"cd {dest} && python app.py. Publish it: hf upload USER/SPACE {dest} --repo-type "
        "space (README.md, Demo)."
    )
