"""GradCAM with pytorch-grad-cam: which parts of the image drove the score of a chosen class."""
import numpy as np
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from utils import UsageError

# Layers worth looking at, deepest first, with their feature-map size for 32x32 inputs.
GRADCAM_LAYERS = {
    "custom_resnet": {"layer3": "4x4", "layer2": "8x8", "res1": "16x16", "layer1": "16x16"},
    "resnet18": {"layer4": "4x4", "layer3": "8x8", "layer2": "16x16", "layer1": "32x32"},
}


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
    was_training = model.training
    model.eval()
    try:
        with GradCAM(model=model, target_layers=[target_layer(model, layer)]) as cam:
            return cam(input_tensor=input_tensor, targets=[ClassifierOutputTarget(int(c)) for c in target_classes])
    finally:
        model.train(was_training)


def overlay(images, heatmaps, image_weight=0.5):
    """De-normalised [0, 1] float HWC images + heat maps -> uint8 HWC overlays (JET colour map)."""
    images = np.asarray(images, dtype=np.float32)
    if images.min() < 0 or images.max() > 1:
        raise ValueError("overlay expects de-normalised RGB images in [0, 1]")
    return np.stack([show_cam_on_image(img, cam, use_rgb=True, image_weight=image_weight)
                     for img, cam in zip(images, heatmaps)])
