"""Gradio demo of a trained run: upload any image for the top classes and a GradCAM overlay, classify a batch of
uploads, and browse the test images the network gets most confidently wrong.

    python app.py --checkpoint runs/resnet9/last.ckpt [--port 7860] [--data-dir DIR] [--share]
    python app.py --checkpoint runs/resnet9/last.ckpt --export-space DEST   # a Hugging Face Space folder

Runs on the CPU. The checkpoint alone serves uploads (it records the classes and the mean/std of the training
data); the gallery of test mistakes also needs the run's test images, rebuilt from summary.json beside the
checkpoint. The page itself is plumbing/serving.py, which the exported Space runs too; this module adds the gallery.
Every model-facing step is a plain function (tests call them directly); `build_ui` only wires them to Gradio.
"""
import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import gradcam
import utils
from data import CLASSES, CIFAR10DataModule, make_synthetic
from lit_classifier import classifier_from_checkpoint, read_classifier_checkpoint
from plumbing import serving
from plumbing.checkpointing import INFERENCE
from plumbing.files import UsageError
# The page itself (uploads, top classes, GradCAM, batch) is plumbing/serving.py, shared with the exported Space.
from plumbing.serving import (DISPLAY_SIZE, INPUT_SIZE, MAX_FILE_SIZE, MAX_PIXELS, MIN_SIDE, TOP_K,  # noqa: F401
                              Upload, analyse_upload, check_layer, check_opacity, classify_batch, enlarge,
                              prepare_upload, read_image, square_crop, to_rgb)

MISTAKE_POOL = 1000  # the gallery looks for mistakes among the first test images only: CPU inference is slow
# Used only for a checkpoint of an older train.py (no inference record) without the run's data: the statistics of
# the CIFAR-10 training split.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GENERATED = 256  # generated images for the float16 check of an export without the run's test images
OVERLAY_CHOICES = ("none", "predicted class", "true class")
# Example uploads written at start-up, one image mode each, to show that any mode is converted.
EXAMPLE_FORMATS = (("RGB", "png"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("RGB", "jpg"))


@dataclass
class Demo(serving.Demo):
    """serving.Demo with the CIFAR-10 class names unless given."""
    classes: tuple | None = CLASSES


# --------------------------------------------------------------------------------------------------- loading a run
def read_summary(checkpoint):
    path = Path(checkpoint).parent / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_datamodule(summary, data_dir=None):
    """The run's data as train.py built it (same subset sizes and seed), from summary.json's settings.

    `data_dir` replaces the run's own data folder (which may be relative to where it was trained)."""
    settings = (summary or {}).get("settings", {})
    synthetic = settings.get("synthetic", False) and data_dir is None
    folder = data_dir or settings.get("data_dir")
    if not synthetic and folder is None:
        raise UsageError("summary.json does not say which data the run used")
    datamodule = CIFAR10DataModule(folder or "data", synthetic=synthetic, train_size=settings.get("train_size"),
                                   test_size=settings.get("test_size"), seed=settings.get("seed", 0), num_workers=0)
    datamodule.setup()
    return datamodule


def load_demo(checkpoint, data_dir=None):
    """Model from the checkpoint (a UsageError if there is none usable) + the run's test data for the gallery.

    The checkpoint's inference record (classes, mean/std of the training data...) is enough to serve uploads; a
    checkpoint of an older train.py has none and takes mean/std from the run's data, else the CIFAR-10 ones."""
    return load_run(checkpoint, data_dir)[0]


def load_run(checkpoint, data_dir=None):
    """(load_demo's Demo, the run's datamodule or None when its data cannot be loaded)."""
    stored = read_classifier_checkpoint(checkpoint)
    lit = classifier_from_checkpoint(stored, checkpoint)
    model, model_name = lit.model.cpu().eval(), lit.hparams.model_name
    card = stored.get(INFERENCE) if isinstance(stored.get(INFERENCE), dict) else {}
    summary = read_summary(checkpoint)
    if summary is None and data_dir is None:
        problem = f"no readable summary.json beside {checkpoint}"
    else:
        try:
            datamodule = run_datamodule(summary, data_dir)
        except UsageError as error:
            problem = str(error)
        else:
            pool = slice(0, MISTAKE_POOL)
            note = (f"Uploads are normalised with the mean/std of the run's training data; the gallery searches "
                    f"the first {len(datamodule.test_images[pool])} of {len(datamodule.test_images)} test images "
                    f"({datamodule.source}).")
            mean, std = (tuple(card["mean"]), tuple(card["std"])) if "mean" in card else (datamodule.mean,
                                                                                          datamodule.std)
            return Demo(model, model_name, mean, std, datamodule.test_images[pool], datamodule.test_labels[pool],
                        note, summary or {}, classes=tuple(card.get("classes", CLASSES)), card=card), datamodule
    if "mean" in card:
        note = (f"Uploads are normalised with the mean/std of the run's training data ({card['data']}), stored in "
                f"the checkpoint. The run's test images could not be loaded ({problem}), so there is no gallery of "
                "test mistakes; start the app with --data-dir DIR (the folder holding cifar-10-batches-py) for it.")
        return Demo(model, model_name, tuple(card["mean"]), tuple(card["std"]), data_note=note, summary=summary or {},
                    classes=tuple(card["classes"]), card=card), None
    note = (f"The run's data could not be loaded ({problem}). Uploads are normalised with the standard CIFAR-10 "
            "mean/std and there is no gallery of test mistakes; start the app with --data-dir DIR (the folder "
            "holding cifar-10-batches-py) to use the run's data.")
    return Demo(model, model_name, CIFAR10_MEAN, CIFAR10_STD, data_note=note, summary=summary or {}), None


def export(checkpoint, dest, data_dir=None):
    """--export-space: the Space of the checkpoint, checked on the run's test images when at hand (plumbing/space.py).
    Returns the report line."""
    from plumbing.space import check_destination, export_space  # only the export needs it

    check_destination(Path(dest))  # before the slow part
    demo, datamodule = load_run(checkpoint, data_dir)
    if datamodule is not None:
        return export_space(demo, dest, datamodule.test_images, datamodule.test_labels)
    if "mean" not in demo.card:
        raise UsageError(f"{checkpoint} does not record the mean/std of its training data (it was written by an "
                         "older train.py) and the run's data is not at hand: give --data-dir DIR (the folder holding "
                         "cifar-10-batches-py)")
    return export_space(demo, dest, make_synthetic(GENERATED, seed=0)[0])


# ---------------------------------------------------------------------------------------------------------- gallery
def find_mistakes(demo):
    """(index, predicted, confidence, accuracy) over the test pool, computed once."""
    with demo.lock:
        if demo.mistakes is None:
            probs = serving.predict(demo.model, demo.test_images, demo.mean, demo.std)
            accuracy = float((probs.argmax(1) == demo.test_labels).mean())
            demo.mistakes = (*utils.misclassified(probs, demo.test_labels), accuracy)
        return demo.mistakes


def mistakes_gallery(demo, count, overlay_for="none", layer=None, opacity=0.5):
    """The `count` most confident mistakes on the test pool, optionally under GradCAM for the predicted or the true
    class -> (gallery of (image, caption), status)."""
    if overlay_for not in OVERLAY_CHOICES:
        raise UsageError(f"overlay must be one of {', '.join(OVERLAY_CHOICES)}, got {overlay_for!r}")
    layer = layer or gradcam.DEFAULT_LAYERS[demo.model_name]
    check_layer(demo, layer)
    check_opacity(opacity)
    if demo.test_images is None:
        return [], demo.data_note
    index, predicted, confidence, accuracy = find_mistakes(demo)
    count = int(count)
    shown, predicted, confidence = index[:count], predicted[:count], confidence[:count]
    images = demo.test_images[shown]
    if overlay_for != "none" and len(shown):
        targets = predicted if overlay_for == "predicted class" else demo.test_labels[shown]
        with demo.lock:
            images = gradcam.gradcam_overlays(demo.model, images, targets, demo.mean, demo.std, layer,
                                              image_weight=1 - opacity)
    items = [(enlarge(image, 4), f"{demo.classes[demo.test_labels[i]]} → {demo.classes[p]} {c:.0%}")
             for image, i, p, c in zip(images, shown, predicted, confidence)]
    status = (f"{len(index)} mistakes among {len(demo.test_images)} test images (accuracy {accuracy:.1%}); "
              f"showing the {len(items)} most confident (captions: true class → predicted class, confidence)"
              + (f", GradCAM at {layer} for the {overlay_for}." if overlay_for != "none" else "."))
    return items, status


def write_examples(demo, folder):
    """A few example uploads made by the project: test images of the run's data (generated images when the data is
    missing), enlarged to 128x128 and saved in the image modes of EXAMPLE_FORMATS. Returns their paths."""
    images, labels = ((demo.test_images, demo.test_labels) if demo.test_images is not None
                      else make_synthetic(len(CLASSES), seed=0))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_of_each_class = [np.flatnonzero(labels == c)[0] for c in range(len(CLASSES)) if (labels == c).any()]
    paths = []
    for (mode, extension), i in zip(EXAMPLE_FORMATS, first_of_each_class):
        image = Image.fromarray(images[i]).resize((128, 128), Image.Resampling.BICUBIC)
        if mode == "RGBA":  # a transparent frame, which to_rgb turns white
            alpha = np.zeros((128, 128), np.uint8)
            alpha[12:-12, 12:-12] = 255
            image.putalpha(Image.fromarray(alpha))
        else:
            image = image.convert(mode)
        path = folder / f"{CLASSES[labels[i]]}_{mode.lower()}.{extension}"
        image.save(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------------------- the UI
def build_ui(demo, example_dir=None):
    """serving.build_ui's page with the gallery of mistakes; example uploads written into `example_dir` if given."""

    def gallery_section(gr, layer, opacity):
        def on_mistakes(count, overlay_for, layer, opacity):
            try:
                return mistakes_gallery(demo, count, overlay_for, layer, opacity)
            except UsageError as error:
                gr.Warning(str(error))
                return [], f"**Could not show the gallery:** {error}"

        gr.Markdown("### Most confident mistakes on the test set")
        with gr.Row():
            count = gr.Slider(1, 48, value=12, step=1, label="Images", elem_id="mistakes-count")
            overlay_for = gr.Radio(list(OVERLAY_CHOICES), value="none", label="GradCAM overlay for")
            show = gr.Button("Show mistakes", variant="primary")
        gallery = gr.Gallery(columns=6, format="png", label="Misclassified test images", elem_id="mistakes")
        gallery_status = gr.Markdown(elem_id="gallery-status")
        show.click(on_mistakes, [count, overlay_for, layer, opacity], [gallery, gallery_status], api_name="mistakes")

    examples = write_examples(demo, example_dir) if example_dir is not None else ()
    return serving.build_ui(demo, examples, gallery_section)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/last.ckpt written by train.py")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py, if not where the run found it")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link (Colab)")
    parser.add_argument("--export-space", metavar="DEST", help="instead of serving, write a Hugging Face Space "
                        "folder serving this checkpoint to DEST (new or empty); see plumbing/space.py")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.export_space:
            print(export(args.checkpoint, args.export_space, args.data_dir))
            return 0
        if not 0 < args.port < 65536:
            raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
        demo = load_demo(args.checkpoint, args.data_dir)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(demo.data_note)
    with tempfile.TemporaryDirectory(prefix="cifar_app_examples_") as example_dir:
        try:
            build_ui(demo, example_dir).launch(server_name=args.host, server_port=args.port, share=args.share,
                                               max_file_size=MAX_FILE_SIZE)
        except OSError as error:  # port taken or not available on this host
            print(f"error: cannot serve on {args.host}:{args.port} ({error}); choose another --port",
                  file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
