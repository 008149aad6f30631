"""Gradio demo of a trained run: upload any image for the top classes and a GradCAM overlay, classify a batch of
uploads, and browse the test images the network gets most confidently wrong.

    python app.py --checkpoint runs/resnet9/last.ckpt [--port 7860] [--data-dir DIR] [--share]

Runs on the CPU. The mean/std that normalise uploads and the test images of the gallery are those of the run's
data, rebuilt from summary.json beside the checkpoint. Every model-facing step is a plain function of this module
(tests call them directly); `build_ui` only wires them to Gradio components.
"""
import argparse
import json
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import gradcam
import utils
from data import CLASSES, CIFAR10DataModule, make_synthetic
from lit_classifier import load_classifier
from model import count_parameters
from plumbing.files import UsageError

INPUT_SIZE = 32  # what the networks see
DISPLAY_SIZE = 256  # the upload's crop and its GradCAM overlay are shown at this size
MIN_SIDE = 8
MAX_PIXELS = 50_000_000  # refused before decoding; a 6000x6000 photo (36 M pixels) still passes
MAX_FILE_SIZE = "50mb"  # Gradio refuses larger uploads itself, with its own message
MISTAKE_POOL = 1000  # the gallery looks for mistakes among the first test images only: CPU inference is slow
TOP_K = 3
# Used only when the run's data cannot be found: the statistics of the CIFAR-10 training split.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
OVERLAY_CHOICES = ("none", "predicted class", "true class")
# Example uploads written at start-up, one image mode each, to show that any mode is converted.
EXAMPLE_FORMATS = (("RGB", "png"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("RGB", "jpg"))


@dataclass
class Demo:
    """The model and the run's data, loaded once; the lock keeps GradCAM's hooks of two requests apart."""
    model: object
    model_name: str
    mean: tuple
    std: tuple
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    data_note: str = ""
    summary: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    mistakes: tuple | None = None  # (index, predicted, confidence, accuracy) over the pool, computed on first use


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
    """Model from the checkpoint (a UsageError if there is none usable) + the run's data, or a clear fallback."""
    lit = load_classifier(checkpoint)
    model_name = lit.hparams.model_name
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
            return Demo(lit.model.cpu().eval(), model_name, datamodule.mean, datamodule.std,
                        datamodule.test_images[pool], datamodule.test_labels[pool], note, summary or {})
    note = (f"The run's data could not be loaded ({problem}). Uploads are normalised with the standard CIFAR-10 "
            "mean/std and there is no gallery of test mistakes; start the app with --data-dir DIR (the folder "
            "holding cifar-10-batches-py) to use the run's data.")
    return Demo(lit.model.cpu().eval(), model_name, CIFAR10_MEAN, CIFAR10_STD, data_note=note, summary=summary or {})


# ---------------------------------------------------------------------------------------------------------- uploads
def to_rgb(image):
    """Any PIL mode -> RGB: transparency over white, 16/32-bit and float grey stretched to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path):
    """An uploaded file -> (RGB PIL image, 'WxH MODE FORMAT' of the original), or a UsageError saying what is wrong."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UsageError(f"{name} is {width}x{height} ({width * height / 1e6:.0f} M pixels), more than the "
                                 f"{MAX_PIXELS / 1e6:.0f} M pixels this app decodes: downscale it first")
            if min(width, height) < MIN_SIDE:
                raise UsageError(f"{name} is only {width}x{height} pixels: upload an image of at least "
                                 f"{MIN_SIDE}x{MIN_SIDE} (the network sees {INPUT_SIZE}x{INPUT_SIZE})")
            original = f"{width}x{height} {image.mode} {image.format}"
            image.draft("RGB", (DISPLAY_SIZE, DISPLAY_SIZE))  # JPEG only: decode a big photo at a reduced scale
            return to_rgb(ImageOps.exif_transpose(image)), original
    except UsageError:
        raise
    except UnidentifiedImageError:
        raise UsageError(f"{name} is not an image file this app can read: upload a PNG, JPEG, GIF, BMP, TIFF or "
                         "WebP image") from None
    except Image.DecompressionBombError:
        raise UsageError(f"{name} is far too large to decode: downscale it first") from None
    except Exception as error:  # truncated or damaged data fails during decoding with OSError, SyntaxError, ...
        raise UsageError(f"{name} could not be decoded ({type(error).__name__}: {error}); the file is damaged or "
                         "incomplete: save or export it again") from None


def square_crop(image, size):
    """The centre square of the image at size x size: Lanczos, which averages over the pixels it drops when
    shrinking (no aliasing) and interpolates smoothly when enlarging."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))  # cropped first, so nothing outside bleeds in
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))


@dataclass
class Upload:
    display: np.ndarray  # uint8 DISPLAY_SIZE^2 x 3, the centre square shown under the overlay
    model_input: np.ndarray  # uint8 32 x 32 x 3, what the network classifies
    description: str


def prepare_upload(path):
    image, original = read_image(path)
    return Upload(square_crop(image, DISPLAY_SIZE), square_crop(image, INPUT_SIZE),
                  f"{Path(path).name}: {original}, centre square resized to {INPUT_SIZE}x{INPUT_SIZE}")


def check_layer(demo, layer):
    layers = gradcam.GRADCAM_LAYERS[demo.model_name]
    if layer not in layers:
        raise UsageError(f"{demo.model_name} has no GradCAM layer {layer!r}: choose one of {', '.join(layers)}")


def check_opacity(opacity):
    if not 0 <= opacity <= 1:
        raise UsageError(f"the heat-map opacity must be between 0 and 1, got {opacity}")


def enlarge(image, factor):
    """Nearest-neighbour enlargement, so a 32x32 image shows its real pixels instead of a blur."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def scores(probs):
    return {name: float(p) for name, p in zip(CLASSES, probs)}


def analyse_upload(demo, path, layer, opacity=0.5):
    """One uploaded file -> (class probabilities, GradCAM overlay of the top class, model input enlarged, status)."""
    check_layer(demo, layer)
    check_opacity(opacity)
    upload = prepare_upload(path)
    with demo.lock:
        probs = utils.predict_images(demo.model, upload.model_input[None], demo.mean, demo.std)[0]
        top = int(probs.argmax())
        heatmap = gradcam.gradcam(demo.model, utils.to_input(upload.model_input[None], demo.mean, demo.std),
                                  [top], layer)[0]
    heatmap = cv2.resize(heatmap, (DISPLAY_SIZE, DISPLAY_SIZE), interpolation=cv2.INTER_LINEAR)
    overlay = gradcam.overlay(upload.display[None] / 255.0, heatmap[None], image_weight=1 - opacity)[0]
    status = (f"{upload.description}. Top class **{CLASSES[top]}** ({probs[top]:.1%}); GradCAM at {layer} "
              f"({gradcam.GRADCAM_LAYERS[demo.model_name][layer]}) for '{CLASSES[top]}'.")
    return scores(probs), overlay, enlarge(upload.model_input, DISPLAY_SIZE // INPUT_SIZE), status


def classify_batch(demo, paths):
    """Several uploaded files -> (gallery of (model input, caption), status); unreadable files are named, skipped."""
    uploads, problems = [], []
    for path in paths:
        try:
            uploads.append((Path(path).name, prepare_upload(path)))
        except UsageError as error:
            problems.append(str(error))
    items = []
    if uploads:
        with demo.lock:
            probs = utils.predict_images(demo.model, np.stack([u.model_input for _, u in uploads]),
                                            demo.mean, demo.std)
        for (name, upload), p in zip(uploads, probs):
            first, second = np.argsort(-p)[:2]
            items.append((enlarge(upload.model_input, 4),
                          f"{CLASSES[first]} {p[first]:.0%}, {CLASSES[second]} {p[second]:.0%} ({name})"))
    status = f"Classified {len(uploads)} of {len(paths)} files."
    if problems:
        status += " Skipped: " + " ".join(problems)
    return items, status


def find_mistakes(demo):
    """(index, predicted, confidence, accuracy) over the test pool, computed once."""
    with demo.lock:
        if demo.mistakes is None:
            probs = utils.predict_images(demo.model, demo.test_images, demo.mean, demo.std)
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
    items = [(enlarge(image, 4), f"{CLASSES[demo.test_labels[i]]} → {CLASSES[p]} {c:.0%}")
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
    import gradio as gr  # only the UI needs it; tests of the functions above run without starting Gradio

    def file_path(value):
        """The uploaded file's path: event handlers run with preprocess=False so that files Gradio's own image
        decoding would reject reach read_image, which explains what is wrong with them."""
        return value.get("path") if isinstance(value, dict) else value

    def on_upload(image, layer, opacity):
        path = file_path(image)
        if not path:
            return None, None, None, "Upload an image (any size or format), or pick an example below."
        try:
            return analyse_upload(demo, path, layer, opacity)
        except UsageError as error:
            gr.Warning(str(error))
            return None, None, None, f"**Could not use this upload:** {error}"

    def on_batch(files):
        paths = [file_path(f) for f in files or []]
        if not paths:
            return [], "Upload several image files at once to classify them in one batch."
        items, status = classify_batch(demo, paths)
        if len(items) < len(paths):
            gr.Warning(status)
        return items, status

    def on_mistakes(count, overlay_for, layer, opacity):
        try:
            return mistakes_gallery(demo, count, overlay_for, layer, opacity)
        except UsageError as error:
            gr.Warning(str(error))
            return [], f"**Could not show the gallery:** {error}"

    summary = demo.summary
    title = f"CIFAR-10 {demo.model_name} ({count_parameters(demo.model):,} parameters)"
    if "test_acc" in summary:
        title += f": {summary['test_acc']:.1%} test accuracy after {summary.get('epochs', '?')} epochs"
    layers = [(f"{name} ({size})", name) for name, size in gradcam.GRADCAM_LAYERS[demo.model_name].items()]
    with gr.Blocks(title="CIFAR-10 classifier", analytics_enabled=False) as ui:  # no usage statistics to Gradio
        gr.Markdown(f"## {title}\n{demo.data_note} Classes: {', '.join(CLASSES)}.")
        with gr.Row():
            layer = gr.Dropdown(layers, value=gradcam.DEFAULT_LAYERS[demo.model_name], label="GradCAM layer",
                                info="deeper layers are coarser (feature-map size for a 32x32 input)")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat-map opacity")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Upload an image",
                                 height=300, elem_id="upload")
                if example_dir is not None:
                    gr.Examples(write_examples(demo, example_dir), inputs=image, label="Examples (various modes)")
            with gr.Column():
                label = gr.Label(num_top_classes=TOP_K, label="Top classes", elem_id="prediction")
                status = gr.Markdown(elem_id="status")
                model_input = gr.Image(label=f"What the network sees ({INPUT_SIZE}x{INPUT_SIZE})", height=160,
                                       interactive=False, format="png", elem_id="model-input")
            with gr.Column():
                cam = gr.Image(label="GradCAM for the top class", height=300, interactive=False, format="png",
                               elem_id="gradcam")
        upload_io = dict(fn=on_upload, inputs=[image, layer, opacity], outputs=[label, cam, model_input, status],
                         preprocess=False)
        image.change(api_name="analyse", **upload_io)
        layer.change(api_visibility="private", **upload_io)
        opacity.release(api_visibility="private", **upload_io)

        gr.Markdown("### Most confident mistakes on the test set")
        with gr.Row():
            count = gr.Slider(1, 48, value=12, step=1, label="Images", elem_id="mistakes-count")
            overlay_for = gr.Radio(list(OVERLAY_CHOICES), value="none", label="GradCAM overlay for")
            show = gr.Button("Show mistakes", variant="primary")
        gallery = gr.Gallery(columns=6, format="png", label="Misclassified test images", elem_id="mistakes")
        gallery_status = gr.Markdown(elem_id="gallery-status")
        show.click(on_mistakes, [count, overlay_for, layer, opacity], [gallery, gallery_status], api_name="mistakes")

        gr.Markdown("### Classify a batch of uploads")
        files = gr.File(file_count="multiple", label="Image files", elem_id="batch-files")
        batch_gallery = gr.Gallery(columns=6, format="png", label="Predictions", elem_id="batch")
        batch_status = gr.Markdown(elem_id="batch-status")
        files.change(on_batch, files, [batch_gallery, batch_status], api_name="classify_batch")
    return ui


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/last.ckpt written by train.py")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py, if not where the run found it")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link (Colab)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
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
