"""Named training recipes: every hyperparameter of a run, in one place, with where it comes from.

`python train.py --recipe NAME` starts from a recipe; any flag given explicitly overrides that one value. Without
--recipe, the recipe of the chosen --model applies (DEFAULT_RECIPE). Learning rates are for the mean loss of a batch.

dawn (ResNet-9, the default): the training recipe of David Page's DAWNBench submission, dawn.py in
    davidcpage/cifar10-fast, 94.08% median on official CIFAR-10 in 24 epochs (79 s on a V100), on the course's
    network: that puts each max-pool right after its conv, before BN-ReLU (as the course specifies), and its FC layer
    has a bias, where dawn.py pools after the ReLU and has no FC bias (Page's "bag of tricks" measured the two pool
    placements at 94.0% and 94.1%). Its values: batch 512, Nesterov SGD momentum 0.9, LR linear from 0 to
    0.4 at epoch 5 then linear to 0 at epoch 24, weight decay 5e-4, reflect-pad-4 crop + flip + 8x8 cutout,
    logits x 0.125, half precision. dawn.py sums the loss over the batch with lr / 512 and weight decay x 512,
    which is the same update as the mean loss with lr 0.4 and weight decay 5e-4 used here. OneCycleLR draws that
    shape: pct_start 5/24 puts the peak at epoch 5, div_factor 1e4 starts at 0.4 / 1e4 (~0, dawn.py starts at 0
    exactly), final_div_factor 1e4 ends at ~0.
course (ResNet-9): the course's own setting, for comparison: Adam (weight decay 1e-4), OneCycle peak taken from the
    LR range test, peak at epoch 5 of 24 (pct_start 5/24), from peak / 100 and down to peak / 1e4 (div_factor 100,
    final_div_factor 100), plain logits (scale 1), the same augmentations.
resnet18 (ResNet-18, target >= 95% on official CIFAR-10 within 40 epochs): the ResNet-18 setting of DeVries &
    Taylor's Cutout paper (arXiv:1708.04552: Nesterov SGD momentum 0.9, LR 0.1 at batch 128, weight decay 5e-4, 200
    epochs; 95.28% without cutout, 96.01% with a 16x16 hole), with the LR scaled linearly to batch 512 (0.4, Goyal et
    al. 2017; it keeps the LR x weight-decay shrinkage per epoch unchanged) and Page's short triangular schedule in
    place of 200 step-decay epochs: linear from ~0 to the peak at epoch 8 (pct_start 0.2), then to ~0 at epoch 40.
    Cutout stays 8x8 as in the ResNet-9 recipes (16x16 was tuned for 200 epochs). Plain logits. Not measured yet:
    tools/gpu_runs.sh runs it on a GPU.

Flip test-time augmentation is on in every recipe: it costs one extra pass over the test set and is reported on its
own (test_acc_tta); test_acc stays the plain single-view accuracy. Label smoothing is off (airbench94 uses 0.2;
--label-smoothing turns it on).

Each recipe's LR is for its own batch size. Another batch size scales it linearly (scaled_lr: Goyal et al. 2017,
"Accurate, Large Minibatch SGD"): with the mean loss of a batch, a quarter of the batch takes four times the steps
per epoch, so a quarter of the LR keeps the distance the weights travel per epoch about the same. A peak found by
the LR range test was measured at the batch size it trains with, so it is never scaled.
"""
RECIPES = {
    "dawn": dict(model="custom_resnet", epochs=24, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.9,
                 weight_decay=5e-4, pct_start=5 / 24, div_factor=1e4, final_div_factor=1e4, label_smoothing=0.0,
                 logit_scale=0.125, cutout=8, lr_find=False, tta=True),
    "course": dict(model="custom_resnet", epochs=24, batch_size=512, optimizer="adam", lr=None, momentum=0.9,
                   weight_decay=1e-4, pct_start=5 / 24, div_factor=100.0, final_div_factor=100.0,
                   label_smoothing=0.0, logit_scale=1.0, cutout=8, lr_find=True, tta=True),
    "resnet18": dict(model="resnet18", epochs=40, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.9,
                     weight_decay=5e-4, pct_start=0.2, div_factor=1e4, final_div_factor=1e4, label_smoothing=0.0,
                     logit_scale=1.0, cutout=8, lr_find=False, tta=True),
}
DEFAULT_RECIPE = {"custom_resnet": "dawn", "resnet18": "resnet18"}
DEFAULT = RECIPES["dawn"]  # the defaults of LitClassifier and CIFAR10DataModule
SETTINGS = tuple(RECIPES["dawn"])


def scaled_lr(recipe, batch_size):
    """The recipe's peak LR for `batch_size` images per step: linear in the batch size (see above)."""
    return recipe["lr"] * batch_size / recipe["batch_size"]


def resolve(given):
    """Every setting of a run: the recipe's values, with the ones in `given` (a dict, None meaning "not given")
    in their place. The recipe is given["recipe"], else the default recipe of given["model"], else "dawn".

    A batch size other than the recipe's scales its LR (scaled_lr), unless --lr is given. An explicit --lr also turns
    off a recipe's LR range test, unless --lr-find is given too."""
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
        raise ValueError(f"the {name} recipe takes its peak LR from the LR range test: give --lr, or drop "
                         "--no-lr-find")
    return settings
