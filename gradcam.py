"""GradCAM with pytorch-grad-cam: which parts of the image drove the score of a chosen class.

GradCAM looks at one layer's feature maps. Each map gets a weight: how much the class score grows
with it (its gradient, averaged over the map). The weighted sum, negatives cut to zero, is a coarse
heat map of where the evidence for the class sits; it is stretched over the image. Deeper layers
know more about the class but are coarser (4x4 at the last stage for a 32x32 input).

Needs only model.py, NumPy, torch and pytorch-grad-cam: the exported Space runs it too.
"""

import numpy as np
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

# gradcam.DEFAULT_LAYERS / GRADCAM_LAYERS: the layers to look at, kept beside the networks
from model import DEFAULT_LAYERS, GRADCAM_LAYERS, MODELS, eval_mode, to_input  # noqa: F401


def target_layer(model, layer):
    """The module named `layer`, if it is one of the layers model.GRADCAM_LAYERS offers for this
    network."""
    name = next(name for name, network in MODELS.items() if isinstance(model, network))
    if layer not in GRADCAM_LAYERS[name]:
        raise ValueError(
            f"{name} has no GradCAM layer {layer!r}: choose one of "
            f"{', '.join(GRADCAM_LAYERS[name])}"
        )
    return model.get_submodule(layer)


def gradcam(model, input_tensor, target_classes, layer):
    """(N, H, W) heat maps in [0, 1] for normalised inputs, one target class per image.

    Runs the network in eval mode and puts it back in the train/eval mode it was in."""
    if len(target_classes) != len(input_tensor):
        raise ValueError(f"{len(input_tensor)} images but {len(target_classes)} target classes")
    module = target_layer(model, layer)
    with eval_mode(model), GradCAM(model=model, target_layers=[module]) as cam:
        targets = [ClassifierOutputTarget(int(c)) for c in target_classes]
        return cam(input_tensor=input_tensor, targets=targets)


def overlay(images, heatmaps, image_weight=0.5):
    """De-normalised [0, 1] float HWC images + heat maps -> uint8 HWC overlays (JET colour map)."""
    images = np.asarray(images, dtype=np.float32)
    if images.min() < 0 or images.max() > 1:
        raise ValueError("overlay expects de-normalised RGB images in [0, 1]")
    return np.stack(
        [
            show_cam_on_image(img, cam, use_rgb=True, image_weight=image_weight)
            for img, cam in zip(images, heatmaps)
        ]
    )


def gradcam_overlays(
    model, images, target_classes, mean, std, layer, image_weight=0.5, batch_size=64
):
    """GradCAM of uint8 HWC images for one class each, drawn over the images themselves: uint8
    overlays.

    The network gets the normalised images; the heat maps go over the pixels as they are (/ 255)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3], 3), np.uint8)
    maps = np.concatenate(
        [
            gradcam(
                model,
                to_input(images[start : start + batch_size], mean, std),
                target_classes[start : start + batch_size],
                layer,
            )
            for start in range(0, len(images), batch_size)
        ]
    )
    return overlay(images.astype(np.float32) / 255.0, maps, image_weight)


def mistake_overlays(model, images, labels, mistakes, mean, std, layer, n=8):
    """The first `n` mistakes (utils.Mistakes) under GradCAM, once for the class the network chose
    and once for the true one, in one batch: (predicted_overlays, true_overlays), uint8 n x H x W
    x 3 each."""
    index = mistakes.index[:n]
    chosen = np.asarray(images)[index]
    targets = np.concatenate([mistakes.predicted[:n], np.asarray(labels)[index]])
    both = gradcam_overlays(model, np.concatenate([chosen, chosen]), targets, mean, std, layer)
    return both[: len(index)], both[len(index) :]
