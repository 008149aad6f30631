"""Looking at a trained model: predictions, the test images it gets wrong, and its confusion matrix."""
from contextlib import contextmanager

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from data import eval_transforms


@contextmanager
def eval_mode(model):
    """Run the block with the model in eval mode, then put it back in the train/eval mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def to_input(images, mean, std):
    """uint8 HWC images -> the normalised NCHW float batch the networks take (the evaluation transform of data.py)."""
    transform = eval_transforms(mean, std)
    return torch.stack([transform(image=np.ascontiguousarray(image))["image"] for image in images])


@torch.no_grad()
def predict(model, loader, device=None):
    """Softmax probabilities and labels for every batch of `loader`; the model's train/eval mode is restored."""
    device = device or next(model.parameters()).device
    probs, labels = [], []
    with eval_mode(model):
        for images, targets in loader:
            probs.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu())
            labels.append(torch.as_tensor(targets))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def predict_images(model, images, mean, std, batch_size=256):
    """Softmax probabilities for uint8 HWC images (uploads, a slice of the test set), no DataLoader needed."""
    device = next(model.parameters()).device
    probs = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = to_input(images[start:start + batch_size], mean, std).to(device)
            probs.append(torch.softmax(model(batch).float(), dim=1).cpu())
    return torch.cat(probs).numpy()


def misclassified(probs, labels):
    """Indices of wrong predictions, most confident mistakes first; also the predicted class and its probability."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order], predicted[wrong[order]], confidence[order]


def confusion_matrix(probs, labels):
    """Counts of (true class, predicted class) pairs: rows are true classes, columns predictions (torchmetrics)."""
    matrix = multiclass_confusion_matrix(torch.as_tensor(probs), torch.as_tensor(labels), num_classes=probs.shape[1])
    return matrix.numpy()


def per_class_accuracy(confusion):
    """Share of each true class predicted correctly (the diagonal over the row sums); NaN for an absent class."""
    totals = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)
