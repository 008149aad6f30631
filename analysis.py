"""Looking at a trained model: predictions on a loader and the test images it gets wrong."""
import numpy as np
import torch


@torch.no_grad()
def predict(model, loader, device=None):
    """Softmax probabilities and labels for every batch of `loader`; the model's train/eval mode is restored."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for images, targets in loader:
            probs.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def misclassified(probs, labels):
    """Indices of wrong predictions, most confident mistakes first; also the predicted class and its probability."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order], predicted[wrong[order]], confidence[order]
