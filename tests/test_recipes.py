"""One home for every number: the classes' defaults are the default recipe's values
(recipes.DEFAULT)."""

import inspect

import pytest

import recipes
from data import CIFAR10DataModule
from lit_classifier import LitClassifier
from lr_finder import find_lr


def defaults(function):
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_class_defaults_are_the_default_recipe():
    lit = defaults(LitClassifier.__init__)
    assert lit.pop("model_name") == recipes.DEFAULT["model"] and lit.pop("num_classes") == 10
    assert lit.pop("channels_last") is False  # a speed setting, not a recipe's
    assert lit == {key: recipes.DEFAULT[key] for key in lit}
    data = defaults(CIFAR10DataModule.__init__)
    assert (data["batch_size"], data["cutout"]) == (
        recipes.DEFAULT["batch_size"],
        recipes.DEFAULT["cutout"],
    )
    finder = defaults(find_lr)
    assert {key: finder[key] for key in ("optimizer", "weight_decay", "momentum")} == {
        key: recipes.DEFAULT[key] for key in ("optimizer", "weight_decay", "momentum")
    }


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_from_settings_takes_every_classifier_value_of_a_recipe(name):
    recipe = recipes.RECIPES[name]
    lit = LitClassifier.from_settings(recipe, lr=0.01)
    for key, value in lit.hparams.items():
        expected = {
            "model_name": recipe["model"],
            "lr": 0.01,
            "num_classes": 10,
            "channels_last": False,
        }.get(key, recipe.get(key))
        assert value == expected, key


def test_the_range_test_suggests_a_tenth_of_the_lr_of_the_lowest_loss():
    from lr_finder import SKIP_START, suggest

    # falls (fast at first), lowest at step SKIP_START + 39, blows up, then falls again fast after
    # the blow-up
    losses = [2.5] * SKIP_START + [
        2.5 - 0.01 * i - (0.3 if i < 3 else 0.3 + 0.01 * i) for i in range(40)
    ]
    losses += [5.0 - 0.2 * i for i in range(10)] + [3.0 - 0.3 * i for i in range(4)]
    lrs = [1e-5 * 1.2**i for i in range(len(losses))]
    suggested, lowest = suggest(lrs, losses)
    assert lowest == SKIP_START + 39 and suggested == pytest.approx(lrs[lowest] / 10)


def test_a_range_test_without_descent_gives_a_reason():
    from lr_finder import suggest

    with pytest.raises(ValueError, match="lowest at step 1 of 30"):
        suggest([1e-5 * 2**i for i in range(30)], [1.0 + i for i in range(30)])


def test_another_batch_size_scales_the_recipes_lr_linearly():
    dawn = recipes.RECIPES["dawn"]
    assert recipes.scaled_lr(dawn, 512) == dawn["lr"]
    assert recipes.scaled_lr(dawn, 128) == pytest.approx(0.1)
    assert recipes.resolve({"batch_size": 64})["lr"] == pytest.approx(0.4 * 64 / 512)
    assert recipes.resolve({"batch_size": 64, "lr": 0.3})["lr"] == 0.3  # a given LR: never scaled
    # the course recipe's peak comes from the range test, at the batch size it trains with
    assert recipes.resolve({"recipe": "course", "batch_size": 64})["lr"] is None
