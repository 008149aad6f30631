import numpy as np
import pytest
import torch

from model import (
    CustomResNet,
    ResBlock,
    ResNet18,
    build_model,
    class_probabilities,
    count_parameters,
    eval_mode,
    to_input,
)


@pytest.mark.parametrize("cls, params", [(CustomResNet, 6_573_130), (ResNet18, 11_173_962)])
def test_exact_parameter_count(cls, params):
    assert count_parameters(cls()) == params


@pytest.mark.parametrize("name", ["custom_resnet", "resnet18"])
def test_forward_returns_logits(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    # logits, not probabilities: rows do not sum to one and values can be negative
    assert not torch.allclose(out.sum(1), torch.ones(4))
    assert (out < 0).any()


def test_resblock_keeps_shape():
    assert ResBlock(16)(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


def test_custom_resnet_feature_map_sizes():
    model = CustomResNet()
    x = torch.randn(1, 3, 32, 32)
    x = model.prep(x)
    assert x.shape[1:] == (64, 32, 32)
    x = model.layer1(x)
    assert x.shape[1:] == (128, 16, 16)
    x = model.layer3(model.layer2(x))
    assert x.shape[1:] == (512, 4, 4)


def test_resnet18_has_no_maxpool_and_3x3_stem():
    model = ResNet18()
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)


def test_logit_scale_scales_logits():
    torch.manual_seed(0)
    plain = CustomResNet().eval()
    scaled = CustomResNet(logit_scale=0.125).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), plain(x) * 0.125)


def test_to_input_is_the_eval_transform_bit_for_bit():
    from utils import eval_transforms  # albumentations' Normalize, which training and testing use

    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    transform = eval_transforms(mean, std)
    expected = torch.stack([transform(image=image)["image"] for image in images])
    assert torch.equal(to_input(images, mean, std), expected)
    assert torch.equal(to_input(torch.from_numpy(images), mean, std), expected)
    with pytest.raises(ValueError, match="uint8"):
        to_input(images.astype(np.float32), mean, std)


def test_class_probabilities_and_eval_mode():
    model = build_model("custom_resnet").train()
    with eval_mode(model):
        assert not model.training
        probs = class_probabilities(model, torch.randn(4, 3, 32, 32))
    assert model.training  # put back as it was
    assert probs.dtype == torch.float32 and not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(4))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*custom_resnet"):
        build_model("resnet50")
