"""The demo page of a trained network: upload any image for its top classes and a GradCAM overlay, or classify a
batch of uploads. app.py serves it beside a run (adding the gallery of test mistakes); `app.py --export-space`
copies this file, model.py and files.py into a Hugging Face Space, which serves it from the exported weights alone.

So it imports only what the Space installs (torch, numpy, Pillow, OpenCV, pytorch-grad-cam, safetensors, Gradio),
never Lightning or albumentations. Every model-facing step is a plain function (tests call them directly);
`build_ui` only wires them to Gradio components.
"""
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from model import DEFAULT_LAYERS, GRADCAM_LAYERS, build_model, count_parameters
from plumbing.files import UsageError

INPUT_SIZE = 32  # what the networks see
DISPLAY_SIZE = 256  # the upload's crop and its GradCAM overlay are shown at this size
MIN_SIDE = 8
MAX_PIXELS = 50_000_000  # refused before decoding; a 6000x6000 photo (36 M pixels) still passes
MAX_FILE_SIZE = "50mb"  # Gradio refuses larger uploads itself, with its own message
TOP_K = 3
WEIGHTS, CONFIG = "model.safetensors", "config.json"  # the exported network, and what serving it needs


@dataclass
class Demo:
    """The model and what serving it needs, loaded once; the lock keeps GradCAM's hooks of two requests apart.

    `card` is the checkpoint's inference record (train.py: classes, mean/std, data, recipe, test accuracy...);
    test images and labels, when at hand, feed app.py's gallery of mistakes."""
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
    classes: tuple | None = None
    card: dict = field(default_factory=dict)


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


# ------------------------------------------------------------------------------------------------------- the network
def normalise(images, mean, std):
    """uint8 NHWC images -> the normalised NCHW float32 batch the networks take.

    Written out because the Space has no albumentations: the same float32 lookup table as its Normalize (mean x 255
    subtracted, times 1 / (std x 255)), so the result is bit for bit that of utils.eval_transforms."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"normalise expects uint8 images, got {images.dtype}")
    mean = np.asarray(mean, np.float32) * 255.0
    scale = np.reciprocal(np.asarray(std, np.float32) * 255.0)
    table = (np.arange(256, dtype=np.float32)[None] - mean[:, None]) * scale[:, None]  # one row per channel
    channels = [table[c][images[..., c]] for c in range(images.shape[-1])]
    return torch.from_numpy(np.ascontiguousarray(np.stack(channels, axis=1)))


@torch.no_grad()
def predict(model, images, mean, std, batch_size=256):
    """Softmax probabilities of an eval-mode model for uint8 NHWC images."""
    device = next(model.parameters()).device
    probs = [torch.softmax(model(normalise(images[start:start + batch_size], mean, std).to(device)).float(), dim=1)
             for start in range(0, len(images), batch_size)]
    return torch.cat(probs).cpu().numpy()


def check_layer(demo, layer):
    layers = GRADCAM_LAYERS[demo.model_name]
    if layer not in layers:
        raise UsageError(f"{demo.model_name} has no GradCAM layer {layer!r}: choose one of {', '.join(layers)}")


def check_opacity(opacity):
    if not 0 <= opacity <= 1:
        raise UsageError(f"the heat-map opacity must be between 0 and 1, got {opacity}")


def enlarge(image, factor):
    """Nearest-neighbour enlargement, so a 32x32 image shows its real pixels instead of a blur."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def scores(demo, probs):
    return {name: float(p) for name, p in zip(demo.classes, probs)}


def analyse_upload(demo, path, layer, opacity=0.5):
    """One uploaded file -> (class probabilities, GradCAM overlay of the top class, model input enlarged, status)."""
    check_layer(demo, layer)
    check_opacity(opacity)
    upload = prepare_upload(path)
    with demo.lock:
        probs = predict(demo.model, upload.model_input[None], demo.mean, demo.std)[0]
        top = int(probs.argmax())
        # pytorch-grad-cam directly (gradcam.py needs albumentations); the app's model is always in eval mode
        with GradCAM(model=demo.model, target_layers=[demo.model.get_submodule(layer)]) as cam:
            heatmap = cam(input_tensor=normalise(upload.model_input[None], demo.mean, demo.std),
                          targets=[ClassifierOutputTarget(top)])[0]
    heatmap = cv2.resize(heatmap, (DISPLAY_SIZE, DISPLAY_SIZE), interpolation=cv2.INTER_LINEAR)
    overlay = show_cam_on_image(upload.display.astype(np.float32) / 255.0, heatmap, use_rgb=True,
                                image_weight=1 - opacity)
    name = demo.classes[top]
    status = (f"{upload.description}. Top class **{name}** ({probs[top]:.1%}); GradCAM at {layer} "
              f"({GRADCAM_LAYERS[demo.model_name][layer]}) for '{name}'.")
    return scores(demo, probs), overlay, enlarge(upload.model_input, DISPLAY_SIZE // INPUT_SIZE), status


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
            probs = predict(demo.model, np.stack([u.model_input for _, u in uploads]), demo.mean, demo.std)
        for (name, upload), p in zip(uploads, probs):
            first, second = np.argsort(-p)[:2]
            items.append((enlarge(upload.model_input, 4),
                          f"{demo.classes[first]} {p[first]:.0%}, {demo.classes[second]} {p[second]:.0%} ({name})"))
    status = f"Classified {len(uploads)} of {len(paths)} files."
    if problems:
        status += " Skipped: " + " ".join(problems)
    return items, status


# ------------------------------------------------------------------------------------------- the exported weights
def save_weights(model, path, half):
    """The network's state dict as safetensors, floating-point tensors in float16 if `half`."""
    from safetensors.torch import save_file

    state = {name: (value.half() if half and value.is_floating_point() else value).detach().cpu().contiguous()
             for name, value in model.state_dict().items()}
    save_file(state, str(path))


def model_from_weights(config, path):
    """The network of `config` (model_name, num_classes, logit_scale) with the safetensors weights, float32, eval."""
    from safetensors.torch import load_file

    model = build_model(config["model_name"], num_classes=config["num_classes"], logit_scale=config["logit_scale"])
    model.load_state_dict({name: value.to(model.state_dict()[name].dtype) for name, value in load_file(path).items()})
    return model.eval()


def load_exported(folder):
    """The Demo of an exported Space folder (config.json + model.safetensors), or a UsageError."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
        model = model_from_weights(config, folder / WEIGHTS)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise UsageError(f"{folder} is not a complete exported Space ({type(error).__name__}: {error})") from None
    note = ("Uploads are normalised with the mean/std of the training data. The gallery of test mistakes is not part "
            "of this Space (it needs the run's test images).")
    return Demo(model, config["model_name"], tuple(config["mean"]), tuple(config["std"]), data_note=note,
                classes=tuple(config["classes"]), card=config)


# ---------------------------------------------------------------------------------------------------------- the UI
def title(demo):
    text = f"CIFAR-10 {demo.model_name} ({count_parameters(demo.model):,} parameters)"
    record = demo.card if demo.card.get("test_acc") is not None else demo.summary
    if record.get("test_acc") is not None:
        text += f": {record['test_acc']:.1%} test accuracy after {record.get('epochs', '?')} epochs"
    return text


def build_ui(demo, examples=(), extra_sections=None):
    """The page: upload + top classes + GradCAM, then `extra_sections(gr, layer, opacity)` (app.py's gallery of
    mistakes) if given, then a batch of uploads. `examples`: image paths offered under the upload."""
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

    layers = [(f"{name} ({size})", name) for name, size in GRADCAM_LAYERS[demo.model_name].items()]
    with gr.Blocks(title="CIFAR-10 classifier", analytics_enabled=False) as ui:  # no usage statistics to Gradio
        gr.Markdown(f"## {title(demo)}\n{demo.data_note} Classes: {', '.join(demo.classes)}.")
        with gr.Row():
            layer = gr.Dropdown(layers, value=DEFAULT_LAYERS[demo.model_name], label="GradCAM layer",
                                info="deeper layers are coarser (feature-map size for a 32x32 input)")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat-map opacity")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Upload an image",
                                 height=300, elem_id="upload")
                if examples:
                    gr.Examples(list(examples), inputs=image, label="Examples")
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

        if extra_sections is not None:
            extra_sections(gr, layer, opacity)

        gr.Markdown("### Classify a batch of uploads")
        files = gr.File(file_count="multiple", label="Image files", elem_id="batch-files")
        batch_gallery = gr.Gallery(columns=6, format="png", label="Predictions", elem_id="batch")
        batch_status = gr.Markdown(elem_id="batch-status")
        files.change(on_batch, files, [batch_gallery, batch_status], api_name="classify_batch")
    return ui
