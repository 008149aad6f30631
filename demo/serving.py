"""The demo page of a trained network: upload any image for its top classes and a GradCAM heat map,
or classify a batch of uploads. app.py serves it beside a run (and adds the gallery of test
mistakes); an exported Hugging Face Space (space.py) serves it from the exported weights alone.

So it imports only what the Space installs (torch, NumPy, Pillow, OpenCV, pytorch-grad-cam,
safetensors, Gradio) and, of the project, model.py and gradcam.py: never Lightning or
albumentations. Every model-facing step is a plain function (tests call them directly); `build_ui`
only wires them to Gradio components.
"""

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file

import gradcam
from model import (
    DEFAULT_LAYERS,
    GRADCAM_LAYERS,
    build_model,
    class_probabilities,
    count_parameters,
    to_input,
)

INPUT_SIZE = 32  # what the networks see
DISPLAY_SIZE = 256  # the upload's crop and its GradCAM overlay are shown at this size
MIN_SIDE = 8
MAX_PIXELS = 50_000_000  # refused before decoding; a 6000x6000 photo (36 M pixels) still passes
MAX_FILE_SIZE = "50mb"  # Gradio refuses larger uploads itself, with its own message
TOP_K = 3
# An exported Space's network and its serving record (written by space.py)
WEIGHTS, SERVING_RECORD = "model.safetensors", "serving.json"


@dataclass
class Demo:
    """The network and its serving record, loaded once.

    The serving record is what train.py keeps in the checkpoint for serving the network: its
    model_name, classes, the mean/std of the training data, the data set, recipe, epochs, test
    accuracy... app.py adds the run's test images (and their mistakes, found on first use) for its
    gallery. The lock keeps the GradCAM hooks of two requests apart."""

    model: torch.nn.Module
    record: dict
    data_note: str = ""
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    mistakes: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_name(self):
        return self.record["model_name"]

    @property
    def classes(self):
        return tuple(self.record["classes"])

    @property
    def mean(self):
        return tuple(self.record["mean"])

    @property
    def std(self):
        return tuple(self.record["std"])


# ------------------------------------------------------------------------------------------ uploads
def to_rgb(image):
    """Any PIL mode -> RGB: transparency over white, 16/32-bit and float grey stretched to 8
    bits."""
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
    """An uploaded file -> (RGB PIL image, 'WxH MODE FORMAT' of the original), or a ValueError
    saying what is wrong with it."""
    name = Path(path).name
    try:
        image = Image.open(path)  # reads the header only
    except UnidentifiedImageError:
        raise ValueError(
            f"{name} is not an image file this app can read: upload a PNG, JPEG, GIF, "
            "BMP, TIFF or WebP image"
        ) from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is far too large to decode: downscale it first") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"{name} is {width}x{height} ({width * height / 1e6:.0f} M pixels), "
                f"more than the {MAX_PIXELS / 1e6:.0f} M pixels this app decodes: "
                "downscale it first"
            )
        if min(width, height) < MIN_SIDE:
            raise ValueError(
                f"{name} is only {width}x{height} pixels: upload an image of at least "
                f"{MIN_SIDE}x{MIN_SIDE} (the network sees {INPUT_SIZE}x{INPUT_SIZE})"
            )
        original = f"{width}x{height} {image.mode} {image.format}"
        image.draft("RGB", (DISPLAY_SIZE, DISPLAY_SIZE))  # JPEG only: decode at a reduced scale
        try:
            return to_rgb(ImageOps.exif_transpose(image)), original
        except Exception as error:  # damaged data fails in decoding: OSError, SyntaxError, ...
            raise ValueError(
                f"{name} could not be decoded ({type(error).__name__}: {error}); the "
                "file is damaged or incomplete: save or export it again"
            ) from None


def square_crop(image, size):
    """The centre square of the image at size x size.

    The networks learnt from square images: squeezing a 4:3 photo into 32x32 would stretch every
    shape, so we keep its centre square (where the subject usually is) instead. Lanczos averages
    over the pixels it drops when shrinking (no aliasing) and interpolates smoothly when
    enlarging."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))  # first, so nothing outside bleeds in
    # np.array, not np.asarray: a writable copy (torch warns about read-only arrays)
    return np.array(square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))


@dataclass
class Upload:
    display: np.ndarray  # uint8 DISPLAY_SIZE^2 x 3, the centre square shown under the overlay
    model_input: np.ndarray  # uint8 32 x 32 x 3, what the network classifies
    description: str


def prepare_upload(path):
    image, original = read_image(path)
    return Upload(
        square_crop(image, DISPLAY_SIZE),
        square_crop(image, INPUT_SIZE),
        f"{Path(path).name}: {original}, centre square resized to {INPUT_SIZE}x{INPUT_SIZE}",
    )


# -------------------------------------------------------------------------------------- the network
def check_opacity(opacity):
    if not 0 <= opacity <= 1:
        raise ValueError(f"the heat-map opacity must be between 0 and 1, got {opacity}")


def enlarge(image, factor):
    """Nearest-neighbour enlargement, so a 32x32 image shows its real pixels instead of a blur."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def analyse_upload(demo, path, layer, opacity=0.5):
    """One uploaded file -> (class probabilities by name, GradCAM overlay of the top class, model
    input enlarged, status)."""
    check_opacity(opacity)
    upload = prepare_upload(path)
    inputs = to_input(upload.model_input[None], demo.mean, demo.std)
    with demo.lock:
        probs = class_probabilities(demo.model, inputs)[0].numpy()
        top = int(probs.argmax())
        heatmap = gradcam.gradcam(demo.model, inputs, [top], layer)[0]
    # the 32x32 heat map, smoothly enlarged to lie over the crop as shown
    heatmap = cv2.resize(heatmap, (DISPLAY_SIZE, DISPLAY_SIZE), interpolation=cv2.INTER_LINEAR)
    cam = gradcam.overlay(upload.display[None] / 255.0, heatmap[None], image_weight=1 - opacity)[0]
    name = demo.classes[top]
    status = (
        f"{upload.description}. Top class **{name}** ({probs[top]:.1%}); GradCAM at {layer} "
        f"({GRADCAM_LAYERS[demo.model_name][layer]}) for '{name}'."
    )
    scores = {name: float(p) for name, p in zip(demo.classes, probs)}
    return scores, cam, enlarge(upload.model_input, DISPLAY_SIZE // INPUT_SIZE), status


def classify_batch(demo, paths):
    """Several uploaded files -> (gallery of (model input, caption), status); unreadable files are
    named in the status and skipped."""
    uploads, problems = [], []
    for path in paths:
        try:
            uploads.append((Path(path).name, prepare_upload(path)))
        except ValueError as error:
            problems.append(str(error))
    items = []
    if uploads:
        inputs = to_input(np.stack([u.model_input for _, u in uploads]), demo.mean, demo.std)
        with demo.lock:
            probs = class_probabilities(demo.model, inputs).numpy()
        for (name, upload), p in zip(uploads, probs):
            first, second = np.argsort(-p)[:2]
            items.append(
                (
                    enlarge(upload.model_input, 4),
                    f"{demo.classes[first]} {p[first]:.0%}, "
                    f"{demo.classes[second]} {p[second]:.0%} ({name})",
                )
            )
    status = f"Classified {len(uploads)} of {len(paths)} files."
    if problems:
        status += " Skipped: " + " ".join(problems)
    return items, status


# ------------------------------------------------------------------------------ an exported Space
def model_from_weights(record, path):
    """The network of the serving `record` with the safetensors weights at `path`: float32, eval."""
    model = build_model(
        record["model_name"], num_classes=record["num_classes"], logit_scale=record["logit_scale"]
    )
    state = model.state_dict()
    model.load_state_dict(
        {
            name: value.to(state[name].dtype)  # float16 weights come back as float32
            for name, value in load_file(path).items()
        }
    )
    return model.eval()


def load_exported(folder):
    """The Demo of an exported Space folder (serving.json + model.safetensors), or a ValueError."""
    folder = Path(folder)
    try:
        record = json.loads((folder / SERVING_RECORD).read_text())
        model = model_from_weights(record, folder / WEIGHTS)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"{folder} is not a complete exported Space ({type(error).__name__}: {error})"
        ) from None
    note = (
        "Uploads are normalised with the mean/std of the training data. The gallery of test "
        "mistakes is not part of this Space (it needs the run's test images)."
    )
    return Demo(model, record, note)


# ------------------------------------------------------------------------------------------- the UI
def title(demo):
    text = f"CIFAR-10 {demo.model_name} ({count_parameters(demo.model):,} parameters)"
    if demo.record.get("test_acc") is not None:
        text += (
            f": {demo.record['test_acc']:.1%} test accuracy after {demo.record['epochs']} epochs"
        )
    return text


def build_ui(demo, examples=(), extra_sections=None):
    """The page: upload + top classes + GradCAM, then `extra_sections(gr, layer, opacity)` (app.py's
    gallery of mistakes) if given, then a batch of uploads. `examples`: image paths offered under
    the upload."""
    import gradio as gr  # only the UI needs it; tests of the functions above run without Gradio

    def file_path(value):
        """The uploaded file's path: event handlers run with preprocess=False so that files Gradio's
        own image decoding would reject reach read_image, which explains what is wrong with them."""
        return value.get("path") if isinstance(value, dict) else value

    def on_upload(image, layer, opacity):
        path = file_path(image)
        if not path:
            return (
                None,
                None,
                None,
                ("Upload an image (any size or format), or pick an example below."),
            )
        try:
            return analyse_upload(demo, path, layer, opacity)
        except ValueError as error:
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

    layers = [(f"{name} ({size})", name) for name, size in GRADCAM_LAYERS[demo.model_name].items()]
    # analytics_enabled=False: no usage statistics sent to Gradio
    with gr.Blocks(title="CIFAR-10 classifier", analytics_enabled=False) as ui:
        gr.Markdown(f"## {title(demo)}\n{demo.data_note} Classes: {', '.join(demo.classes)}.")
        with gr.Row():
            layer = gr.Dropdown(
                layers,
                value=DEFAULT_LAYERS[demo.model_name],
                label="GradCAM layer",
                info="deeper layers are coarser (feature-map size for a 32x32 input)",
            )
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat-map opacity")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "clipboard"],
                    height=300,
                    label="Upload an image",
                    elem_id="upload",
                )
                if examples:
                    gr.Examples(list(examples), inputs=image, label="Examples")
            with gr.Column():
                label = gr.Label(num_top_classes=TOP_K, label="Top classes", elem_id="prediction")
                status = gr.Markdown(elem_id="status")
                model_input = gr.Image(
                    label=f"What the network sees ({INPUT_SIZE}x{INPUT_SIZE})",
                    height=160,
                    interactive=False,
                    format="png",
                    elem_id="model-input",
                )
            with gr.Column():
                cam = gr.Image(
                    label="GradCAM for the top class",
                    height=300,
                    interactive=False,
                    format="png",
                    elem_id="gradcam",
                )
        upload_io = dict(
            fn=on_upload,
            inputs=[image, layer, opacity],
            outputs=[label, cam, model_input, status],
            preprocess=False,
        )
        image.change(api_name="analyse", **upload_io)
        layer.change(api_visibility="private", **upload_io)
        opacity.release(api_visibility="private", **upload_io)

        if extra_sections is not None:
            extra_sections(gr, layer, opacity)

        gr.Markdown("### Classify a batch of uploads")
        files = gr.File(file_count="multiple", label="Image files", elem_id="batch-files")
        batch_gallery = gr.Gallery(columns=6, format="png", label="Predictions", elem_id="batch")
        batch_status = gr.Markdown(elem_id="batch-status")
        files.change(on_batch, files, [batch_gallery, batch_status], api_name="classify_batch")
    return ui
