"""GradCAM with pytorch-grad-cam: which parts of the image drove the score of a chosen class."""
import numpy as np
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from model import DEFAULT_LAYERS, GRADCAM_LAYERS  # noqa: F401 (gradcam.GRADCAM_LAYERS: the layers to look at)
from plumbing.files import UsageError
from utils import eval_mode, to_input


def target_layer(model, name):
    try:
        return model.get_submodule(name)
    except AttributeError:
        known = ", ".join(n for n, _ in model.named_children())
        raise UsageError(f"{type(model).__name__} has no layer {name!r}; GradCAM can use one of: {known}") from None


def gradcam(model, input_tensor, target_classes, layer):
    """(N, H, W) heat maps in [0, 1] for normalised inputs, one target class per image.

    Runs on the plain nn.Module in eval mode and puts the model back in the train/eval mode it was in.
    """
    if len(target_classes) != len(input_tensor):
        raise ValueError(f"{len(input_tensor)} images but {len(target_classes)} target classes")
    with eval_mode(model), GradCAM(model=model, target_layers=[target_layer(model, layer)]) as cam:
        return cam(input_tensor=input_tensor, targets=[ClassifierOutputTarget(int(c)) for c in target_classes])


def overlay(images, heatmaps, image_weight=0.5):
    """De-normalised [0, 1] float HWC images + heat maps -> uint8 HWC overlays (JET colour map)."""
    images = np.asarray(images, dtype=np.float32)
    if images.min() < 0 or images.max() > 1:
        raise ValueError("overlay expects de-normalised RGB images in [0, 1]")
    return np.stack([show_cam_on_image(img, cam, use_rgb=True, image_weight=image_weight)
                     for img, cam in zip(images, heatmaps)])


def gradcam_overlays(model, images, target_classes, mean, std, layer, image_weight=0.5, batch_size=64):
    """GradCAM of uint8 HWC images for one class each, drawn over the images themselves: uint8 overlays.

    The network gets the normalised images; the heat maps go over the de-normalised ones (the uint8 pixels / 255).
    """
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3], 3), np.uint8)
    maps = np.concatenate([gradcam(model, to_input(images[start:start + batch_size], mean, std),
                                   target_classes[start:start + batch_size], layer)
                           for start in range(0, len(images), batch_size)])
    return overlay(images.astype(np.float32) / 255.0, maps, image_weight)


def mistake_overlays(model, images, labels, index, predicted, mean, std, layer, image_weight=0.5):
    """For the mistakes chosen by utils.misclassified: overlays for the predicted class and for the true class,
    computed in one batch. Returns (predicted_overlays, true_overlays), uint8 N x H x W x 3 each."""
    chosen = np.asarray(images)[index]
    targets = np.concatenate([np.asarray(predicted), np.asarray(labels)[index]])
    both = gradcam_overlays(model, np.concatenate([chosen, chosen]), targets, mean, std, layer, image_weight)
    return both[:len(chosen)], both[len(chosen):]
