"""Gradio demo of a trained run: upload any image for the top classes and a GradCAM overlay,
classify a batch of uploads, and browse the test images the network gets most confidently wrong.

    python app.py --checkpoint runs/resnet9/last.ckpt [--port 7860] [--data-dir DIR] [--share]
    python app.py --checkpoint runs/resnet9/last.ckpt --export-space DEST   # a Hugging Face Space

Runs on the CPU. The checkpoint alone serves uploads: its serving record holds the classes and the
mean/std of the training data. The gallery of test mistakes also needs the run's test images,
rebuilt from the summary.json beside the checkpoint. The page itself is demo/serving.py, which the
exported Space runs too; this module adds the gallery.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import gradcam
import utils
from data import CIFAR10DataModule, make_synthetic
from demo import serving
from lit_classifier import classifier_from_checkpoint, read_classifier_checkpoint
from plumbing.checkpointing import SERVING
from plumbing.records import data_set_name

MISTAKE_POOL = 1000  # the gallery looks among the first test images only: CPU inference is slow
GENERATED = 256  # generated images for the float16 check of an export without the run's test images
OVERLAY_CHOICES = ("none", "predicted class", "true class")
# Example uploads written at start-up, one image mode each, to show that any mode is converted.
EXAMPLE_FORMATS = (
    ("RGB", "png"),
    ("L", "png"),
    ("P", "png"),
    ("RGBA", "png"),
    ("CMYK", "jpg"),
    ("RGB", "jpg"),
)


# ------------------------------------------------------------------------------------ loading a run
def run_datamodule(checkpoint, data_dir=None):
    """The run's data as train.py built it (same subset sizes and seed), from the settings in the
    summary.json beside the checkpoint.

    `data_dir` replaces the run's own data folder (which may be relative to where it was trained);
    without summary.json (a notebook's run) it is the whole of CIFAR-10 in `data_dir`."""
    try:
        settings = json.loads((Path(checkpoint).parent / "summary.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        if data_dir is None:
            raise FileNotFoundError(f"no readable summary.json beside {checkpoint}") from None
        settings = {}
    synthetic = settings.get("synthetic", False) and data_dir is None
    datamodule = CIFAR10DataModule(
        data_dir or settings["data_dir"],
        synthetic=synthetic,
        train_size=settings.get("train_size"),
        test_size=settings.get("test_size"),
        seed=settings.get("seed", 0),
        num_workers=0,
    )
    datamodule.setup()
    return datamodule


def load_run(checkpoint, data_dir=None):
    """(serving.Demo of the checkpoint, the run's datamodule or None when its data cannot be
    loaded).

    The checkpoint's serving record is enough to serve uploads; the run's test images add the
    gallery of mistakes."""
    stored = read_classifier_checkpoint(checkpoint)
    lit = classifier_from_checkpoint(stored, checkpoint)
    model, record = lit.model.cpu().eval(), stored.get(SERVING)
    try:
        datamodule = run_datamodule(checkpoint, data_dir)
    except (ValueError, OSError) as error:
        if record is None:
            raise ValueError(
                f"{checkpoint} has no serving record (Lightning's ModelCheckpoint "
                "alone wrote it, as in the notebooks) and the run's data could not be "
                f"loaded ({error}): give --data-dir DIR, the folder holding "
                "cifar-10-batches-py, for the mean/std of the training data"
            ) from None
        note = (
            f"Uploads are normalised with the mean/std of the run's training data "
            f"({record['data']}), stored in the checkpoint. The run's test images could not be "
            f"loaded ({error}), so there is no gallery of test mistakes; start the app with "
            "--data-dir DIR (the folder holding cifar-10-batches-py) for it."
        )
        return serving.Demo(model, record, note), None
    if record is None:  # a notebook's checkpoint: what serving needs comes from the run's data
        record = {
            **{key: lit.hparams[key] for key in ("model_name", "num_classes", "logit_scale")},
            "classes": tuple(datamodule.classes),
            "mean": tuple(map(float, datamodule.mean)),
            "std": tuple(map(float, datamodule.std)),
            "data": data_set_name(datamodule.source),
        }
    pool = slice(0, MISTAKE_POOL)
    test_images, test_labels = datamodule.test_images[pool], datamodule.test_labels[pool]
    note = (
        f"Uploads are normalised with the mean/std of the run's training data; the gallery "
        f"searches the first {len(test_images)} of {len(datamodule.test_images)} test images "
        f"({datamodule.source})."
    )
    return serving.Demo(model, record, note, test_images, test_labels), datamodule


def load_demo(checkpoint, data_dir=None):
    """The serving.Demo of the checkpoint, with the run's test images when they can be loaded."""
    return load_run(checkpoint, data_dir)[0]


def export(checkpoint, dest, data_dir=None):
    """--export-space: the Space of the checkpoint (demo/space.py), its float16 weights checked on
    the run's test images when at hand. Returns the report line."""
    from demo.space import check_destination, export_space  # only the export needs it

    check_destination(Path(dest))  # before the slow part
    demo, datamodule = load_run(checkpoint, data_dir)
    if datamodule is None:
        return export_space(demo, dest, make_synthetic(GENERATED, seed=0)[0])
    return export_space(demo, dest, datamodule.test_images, datamodule.test_labels)


# ------------------------------------------------------------------------------------------ gallery
def find_mistakes(demo):
    """The utils.Mistakes of the network on the test pool, found once."""
    with demo.lock:
        if demo.mistakes is None:
            probs = utils.predict_images(demo.model, demo.test_images, demo.mean, demo.std)
            demo.mistakes = utils.misclassified(probs, demo.test_labels)
        return demo.mistakes


def mistakes_gallery(demo, count, overlay_for="none", layer=None, opacity=0.5):
    """The `count` most confident mistakes on the test pool, optionally under GradCAM for the
    predicted or the true class -> (gallery of (image, caption), status)."""
    if overlay_for not in OVERLAY_CHOICES:
        raise ValueError(
            f"overlay must be one of {', '.join(OVERLAY_CHOICES)}, got {overlay_for!r}"
        )
    serving.check_opacity(opacity)
    if demo.test_images is None:
        return [], demo.data_note
    mistakes = find_mistakes(demo)
    shown = mistakes.first(int(count))
    images = demo.test_images[shown.index]
    layer = layer or gradcam.DEFAULT_LAYERS[demo.model_name]
    if overlay_for != "none" and len(shown.index):
        targets = (
            shown.predicted if overlay_for == "predicted class" else demo.test_labels[shown.index]
        )
        with demo.lock:
            images = gradcam.gradcam_overlays(
                demo.model, images, targets, demo.mean, demo.std, layer, image_weight=1 - opacity
            )
    items = [
        (
            serving.enlarge(image, 4),
            f"{demo.classes[demo.test_labels[i]]} → {demo.classes[p]} {c:.0%}",
        )
        for image, i, p, c in zip(images, *shown)
    ]
    accuracy = 1 - len(mistakes.index) / len(demo.test_images)
    status = (
        f"{len(mistakes.index)} mistakes among {len(demo.test_images)} test images (accuracy "
        f"{accuracy:.1%}); showing the {len(items)} most confident (captions: true class → "
        "predicted class, confidence)"
        + (f", GradCAM at {layer} for the {overlay_for}." if overlay_for != "none" else ".")
    )
    return items, status


def write_examples(demo, folder):
    """A few example uploads made by the project: test images of the run's data (generated images
    when the data is missing), enlarged to 128x128 and saved in the image modes of EXAMPLE_FORMATS.
    Returns their paths."""
    images, labels = (
        (demo.test_images, demo.test_labels)
        if demo.test_images is not None
        else make_synthetic(len(demo.classes), seed=0)
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_of_each_class = [
        np.flatnonzero(labels == c)[0] for c in range(len(demo.classes)) if (labels == c).any()
    ]
    paths = []
    for (mode, extension), i in zip(EXAMPLE_FORMATS, first_of_each_class):
        image = Image.fromarray(images[i]).resize((128, 128), Image.Resampling.BICUBIC)
        if mode == "RGBA":  # a transparent frame, which serving.to_rgb turns white
            alpha = np.zeros((128, 128), np.uint8)
            alpha[12:-12, 12:-12] = 255
            image.putalpha(Image.fromarray(alpha))
        else:
            image = image.convert(mode)
        path = folder / f"{demo.classes[labels[i]]}_{mode.lower()}.{extension}"
        image.save(path)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------- the UI
def build_ui(demo, example_dir=None):
    """serving.build_ui's page with the gallery of mistakes; example uploads written into
    `example_dir` if given."""

    def gallery_section(gr, layer, opacity):
        def on_mistakes(count, overlay_for, layer, opacity):
            try:
                return mistakes_gallery(demo, count, overlay_for, layer, opacity)
            except ValueError as error:
                gr.Warning(str(error))
                return [], f"**Could not show the gallery:** {error}"

        gr.Markdown("### Most confident mistakes on the test set")
        with gr.Row():
            count = gr.Slider(1, 48, value=12, step=1, label="Images", elem_id="mistakes-count")
            overlay_for = gr.Radio(list(OVERLAY_CHOICES), value="none", label="GradCAM overlay for")
            show = gr.Button("Show mistakes", variant="primary")
        gallery = gr.Gallery(
            columns=6, format="png", label="Misclassified test images", elem_id="mistakes"
        )
        gallery_status = gr.Markdown(elem_id="gallery-status")
        show.click(
            on_mistakes,
            [count, overlay_for, layer, opacity],
            [gallery, gallery_status],
            api_name="mistakes",
        )

    examples = write_examples(demo, example_dir) if example_dir is not None else ()
    return serving.build_ui(demo, examples, gallery_section)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/last.ckpt written by train.py")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument(
        "--data-dir", help="folder holding cifar-10-batches-py, if not where the run found it"
    )
    parser.add_argument(
        "--share", action="store_true", help="also serve through a public gradio.live link (Colab)"
    )
    parser.add_argument(
        "--export-space",
        metavar="DEST",
        help="instead of serving, write a Hugging Face Space folder serving this "
        "checkpoint to DEST (new or empty); see demo/space.py",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.export_space:
            print(export(args.checkpoint, args.export_space, args.data_dir))
            return 0
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
        demo = load_demo(args.checkpoint, args.data_dir)
        print(demo.data_note)
        with tempfile.TemporaryDirectory(prefix="cifar_app_examples_") as example_dir:
            ui = build_ui(demo, example_dir)
            try:
                ui.launch(
                    server_name=args.host,
                    server_port=args.port,
                    share=args.share,
                    max_file_size=serving.MAX_FILE_SIZE,
                )
            except OSError as error:  # the port is taken or not available on this host
                raise OSError(
                    f"cannot serve on {args.host}:{args.port} ({error}); choose another --port"
                ) from None
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
