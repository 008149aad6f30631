import numpy as np
import pytest
import torch

import gradcam
import utils
from data import CLASSES, make_synthetic
from model import build_model, to_input
from utils import channel_stats, denormalize


@pytest.fixture(scope="module")
def images():
    images, labels = make_synthetic(12, seed=4)
    # every image reaches 1.0 after de-normalising, so show_cam_on_image does not rescale it
    images[:, 0, 0] = 255
    return images, labels


@pytest.fixture(scope="module")
def stats(images):
    return channel_stats(images[0])


def random_probs(n, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)) * 0.3, size=n).astype(np.float32)
    return probs, rng.integers(0, len(CLASSES), n)


def test_to_input_is_the_normalisation_that_denormalize_undoes(images, stats):
    batch = to_input(images[0], *stats)
    assert batch.shape == (12, 3, 32, 32) and batch.dtype == torch.float32
    assert abs(float(batch.mean())) < 0.1  # normalised with the images' own statistics
    restored = denormalize(batch, *stats).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(restored, images[0] / 255.0, atol=1e-5)


@pytest.mark.parametrize("name", ["custom_resnet", "resnet18"])
def test_gradcam_overlays_shape_range_and_default_layer(name, images, stats):
    model = build_model(name)
    targets = images[1]
    layer = gradcam.DEFAULT_LAYERS[name]
    maps = gradcam.gradcam(model, to_input(images[0][:4], *stats), targets[:4], layer)
    assert maps.shape == (4, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    overlays = gradcam.gradcam_overlays(
        model, images[0][:4], targets[:4], *stats, layer, batch_size=3
    )  # two chunks
    assert overlays.shape == (4, 32, 32, 3) and overlays.dtype == np.uint8


def test_overlay_is_drawn_on_the_de_normalised_rgb_image(images, stats):
    model = build_model("custom_resnet")
    pictures = images[0][:3]
    # image_weight=1: the heat map gets no weight, what is left is the picture it was drawn on
    plain = gradcam.gradcam_overlays(model, pictures, [0, 1, 2], *stats, "layer2", image_weight=1.0)
    # RGB order kept, not normalised values
    assert np.abs(plain.astype(int) - pictures.astype(int)).max() <= 1
    mixed = gradcam.gradcam_overlays(model, pictures, [0, 1, 2], *stats, "layer2", image_weight=0.5)
    assert np.abs(mixed.astype(int) - pictures.astype(int)).mean() > 10


def test_mistake_overlays_explain_the_predicted_and_the_true_class(images, stats):
    model = build_model("custom_resnet")
    pictures, labels = images
    index = np.array([0, 1, 2, 3])
    mistakes = utils.Mistakes(index, (labels[index] + 5) % len(CLASSES), np.full(4, 0.9))
    for_predicted, for_true = gradcam.mistake_overlays(
        model, pictures, labels, mistakes, *stats, "layer2", n=3
    )
    assert for_predicted.shape == for_true.shape == (3, 32, 32, 3)
    one_by_one = gradcam.gradcam_overlays(
        model, pictures[index[:3]], labels[index[:3]], *stats, "layer2"
    )
    np.testing.assert_array_equal(for_true, one_by_one)
    assert not np.array_equal(for_predicted, for_true)


def test_model_state_and_batch_norm_statistics_are_left_as_found(images, stats):
    model = build_model("resnet18").train()
    running_mean = model.stem[1].running_mean.clone()
    utils.predict_images(model, images[0], *stats)
    gradcam.gradcam_overlays(model, images[0][:2], [0, 1], *stats, "layer3")
    with pytest.raises(ValueError):
        gradcam.gradcam_overlays(model, images[0][:2], [0, 1], *stats, "no_such_layer")
    assert model.training and all(m.training for m in model.modules())
    # ran in eval mode: BN statistics untouched
    assert torch.equal(model.stem[1].running_mean, running_mean)
    model.eval()
    utils.predict_images(model, images[0], *stats)
    gradcam.gradcam(model, to_input(images[0][:2], *stats), [0, 1], "layer4")
    assert not any(m.training for m in model.modules())


def test_predict_images_matches_predict_over_a_loader(images, stats):
    from torch.utils.data import DataLoader

    from data import ImageArrayDataset
    from utils import eval_transforms

    model = build_model("custom_resnet")
    pictures, labels = images
    dataset = ImageArrayDataset(pictures, labels, eval_transforms(*stats))
    # the same inputs, bit for bit (the convolutions may then sum in another order)
    assert torch.equal(torch.stack([x for x, _ in dataset]), to_input(pictures, *stats))
    probs, seen_labels = utils.predict(model, DataLoader(dataset, batch_size=5))
    batched = utils.predict_images(model, pictures, *stats, batch_size=7)
    np.testing.assert_allclose(batched, probs, atol=1e-6)
    np.testing.assert_array_equal(seen_labels, labels)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_misclassified_are_really_wrong_and_most_confident_first():
    probs, labels = random_probs(500)
    mistakes = utils.misclassified(probs, labels)
    index, predicted, confidence = mistakes
    wrong = probs.argmax(1) != labels
    assert len(index) == wrong.sum() > 0 and set(index) == set(np.flatnonzero(wrong))
    assert np.all(predicted != labels[index]) and np.array_equal(predicted, probs[index].argmax(1))
    np.testing.assert_array_equal(confidence, probs[index, predicted])
    assert np.all(np.diff(confidence) <= 0)
    first = mistakes.first(3)
    assert isinstance(first, utils.Mistakes) and list(first.index) == list(index[:3])


def test_confusion_matrix_counts_every_image_once():
    probs, labels = random_probs(300, seed=1)
    predicted = probs.argmax(1)
    confusion = utils.confusion_matrix(probs, labels)
    assert confusion.shape == (10, 10) and confusion.sum() == 300
    # rows: true classes; columns: predictions
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(labels, minlength=10))
    np.testing.assert_array_equal(confusion.sum(0), np.bincount(predicted, minlength=10))
    assert np.trace(confusion) == (predicted == labels).sum()
    t, p = labels[0], predicted[0]
    assert confusion[t, p] == ((labels == t) & (predicted == p)).sum()
    accuracy = utils.per_class_accuracy(confusion)
    for c in range(10):
        assert accuracy[c] == pytest.approx((predicted[labels == c] == c).mean())


def test_per_class_accuracy_of_an_absent_class_is_nan():
    confusion = np.zeros((10, 10), np.int64)
    confusion[0, 0], confusion[1, 0] = 3, 1
    accuracy = utils.per_class_accuracy(confusion)
    assert accuracy[0] == 1 and accuracy[1] == 0 and np.isnan(accuracy[2:]).all()


def test_figures_name_the_classes(images):
    pictures, labels = images
    probs, _ = random_probs(12, seed=2)
    mistakes = utils.misclassified(probs, labels)
    index, predicted = mistakes.index, mistakes.predicted
    overlays = pictures[index[:3]]
    fig = utils.plot_gradcam(pictures, labels, mistakes, (overlays, overlays), CLASSES, "layer2")
    titles = [ax.get_title() for ax in fig.axes]
    caption = f"true {CLASSES[labels[index[0]]]}\npred {CLASSES[predicted[0]]} ("
    assert len(titles) == 9 and titles[0].startswith(caption)
    assert titles[3] == f"CAM {CLASSES[predicted[0]]} (pred)"
    assert titles[6] == f"CAM {CLASSES[labels[index[0]]]} (true)"
    fig = utils.plot_misclassified(pictures, labels, mistakes, CLASSES, n=4)
    assert [ax.get_title() for ax in fig.axes if ax.images] == titles[:3] + [
        utils.mistake_titles(labels, mistakes, CLASSES)[3]
    ]
    fig = utils.plot_confusion(utils.confusion_matrix(probs, labels), CLASSES)
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == list(CLASSES)
