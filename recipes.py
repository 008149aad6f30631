"""The training recipes: every hyperparameter of a run, in one place, with where it comes from.

`python train.py --recipe NAME` starts from a recipe and any flag overrides one value; without
--recipe, the chosen --model's own recipe applies (DEFAULT_RECIPE). LRs are for the mean loss of a
batch.

Every recipe trains with OneCycle: the LR climbs linearly from lr / div_factor to the peak `lr`
over the first pct_start of the steps, then falls linearly to lr / div_factor / final_div_factor.
Every recipe also reports flip test-time augmentation (test_acc_tta: the mean logits of each test
image and its mirror image) beside the plain single-view test_acc.

Each recipe's LR is for its own batch size. Another batch size scales it linearly (scaled_lr; Goyal
et al. 2017, "Accurate, Large Minibatch SGD"): with the mean loss of a batch, a quarter of the batch
takes four times the steps per epoch, so a quarter of the LR keeps the distance the weights travel
per epoch about the same. A peak found by the LR range test was measured at the batch size it
trains with, so it is never scaled.
"""

RECIPES = {
    # David Page's DAWNBench recipe (dawn.py in davidcpage/cifar10-fast: 94.08% median on official
    # CIFAR-10 in 24 epochs, 79 s on a V100) on the course's ResNet-9. The course's network pools
    # right after each conv and gives the FC layer a bias, where dawn.py pools after the ReLU and
    # has none (Page's "bag of tricks" measured the two placements at 94.0% and 94.1%).
    "dawn": dict(
        model="custom_resnet",
        epochs=24,
        batch_size=512,
        optimizer="sgd",  # Nesterov momentum
        lr=0.4,  # the peak (dawn.py sums the loss with lr / 512, weight decay x 512: the same step)
        momentum=0.9,
        weight_decay=5e-4,  # per step, times the LR: pulls every weight a little towards 0
        pct_start=5 / 24,  # the peak at epoch 5 of 24
        div_factor=1e4,  # starts at 0.4 / 1e4, about 0 (dawn.py: exactly 0)
        final_div_factor=1e4,  # and ends at about 0
        label_smoothing=0.0,  # airbench94 uses 0.2
        logit_scale=0.125,  # smaller logits: softer early predictions, so a high LR stays stable
        cutout=8,  # pixels: an 8x8 hole per training image, after reflect-pad-4 crop and flip
        lr_find=False,
        tta=True,
    ),
    # The course's own setting, for comparison: Adam, its peak LR from the LR range test (notebook
    # 2).
    "course": dict(
        model="custom_resnet",
        epochs=24,
        batch_size=512,
        optimizer="adam",
        lr=None,  # the range test's suggestion
        momentum=0.9,  # unused by Adam
        weight_decay=1e-4,
        pct_start=5 / 24,  # the peak at epoch 5 of 24
        div_factor=100.0,  # from peak / 100
        final_div_factor=100.0,  # down to peak / 1e4
        label_smoothing=0.0,
        logit_scale=1.0,  # the plain network
        cutout=8,
        lr_find=True,
        tta=True,
    ),
    # The ResNet-18 setting of DeVries & Taylor's Cutout paper (arXiv:1708.04552: Nesterov SGD, LR
    # 0.1 at batch 128, 200 epochs; 95.28% without cutout) scaled to batch 512 and Page's short
    # triangular schedule. Cutout stays 8x8 (the paper's 16x16 was tuned for 200 epochs). Not
    # measured yet.
    "resnet18": dict(
        model="resnet18",
        epochs=40,
        batch_size=512,
        optimizer="sgd",
        lr=0.4,  # 0.1 x 512 / 128
        momentum=0.9,
        weight_decay=5e-4,
        pct_start=0.2,  # the peak at epoch 8 of 40
        div_factor=1e4,
        final_div_factor=1e4,
        label_smoothing=0.0,
        logit_scale=1.0,
        cutout=8,
        lr_find=False,
        tta=True,
    ),
}
DEFAULT_RECIPE = {"custom_resnet": "dawn", "resnet18": "resnet18"}
DEFAULT = RECIPES["dawn"]  # the defaults of LitClassifier and CIFAR10DataModule
SETTINGS = tuple(RECIPES["dawn"])


def scaled_lr(recipe, batch_size):
    """The recipe's peak LR for `batch_size` images per step: linear in the batch size (above)."""
    return recipe["lr"] * batch_size / recipe["batch_size"]


def resolve(given):
    """Every setting of a run: the recipe's values, with the ones in `given` (a dict, None meaning
    "not given") in their place. The recipe is given["recipe"], else the default recipe of
    given["model"], else "dawn".

    A batch size other than the recipe's scales its LR (scaled_lr), unless --lr is given. An
    explicit --lr also turns off a recipe's LR range test, unless --lr-find is given too."""
    name = given.get("recipe") or DEFAULT_RECIPE.get(given.get("model"), "dawn")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    settings = {**given, **{key: value for key, value in recipe.items() if given.get(key) is None}}
    settings["recipe"] = name
    if given.get("lr") is not None and given.get("lr_find") is None:
        settings["lr_find"] = False  # an explicit --lr wins over a recipe's LR range test
    if given.get("lr") is None and recipe["lr"] is not None:
        settings["lr"] = scaled_lr(recipe, settings["batch_size"])
    if settings["lr"] is None and not settings["lr_find"]:
        raise ValueError(
            f"the {name} recipe takes its peak LR from the LR range test: give --lr, or drop "
            "--no-lr-find"
        )
    return settings
