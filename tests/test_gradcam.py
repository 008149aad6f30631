import numpy as np
import pytest
import torch

from gradcam import GRADCAM_LAYERS, gradcam, overlay
from model import build_model


@pytest.mark.parametrize("name", ["custom_resnet", "resnet18"])
def test_gradcam_maps_every_offered_layer(name):
    model = build_model(name).train()
    images = torch.randn(2, 3, 32, 32)
    for layer in GRADCAM_LAYERS[name]:
        maps = gradcam(model, images, [0, 3], layer)
        assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert model.training  # state restored


@pytest.mark.parametrize("layer", ["layer9", "fc"])  # fc exists, but has no feature maps to weigh
def test_other_layers_are_refused_with_the_offered_ones(layer):
    with pytest.raises(ValueError, match=f"no GradCAM layer '{layer}': .*layer3, layer2, res1"):
        gradcam(build_model("custom_resnet"), torch.randn(1, 3, 32, 32), [0], layer)


def test_overlay_is_uint8_rgb_and_rejects_normalised_input():
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    maps = np.zeros((2, 32, 32), np.float32)
    out = overlay(images, maps)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="de-normalised"):
        overlay(images * 4 - 2, maps)
