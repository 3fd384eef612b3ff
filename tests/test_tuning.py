"""Tuning a learning rate on held-out tasks: ``search_learning_rates`` and ``tune_learning_rate``."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import tasks
from l2l_jax.errors import ConfigError
from l2l_jax.evaluation import DEFAULT_LR_GRID, loss_curves, sample_tasks, search_learning_rates, tune_learning_rate
from l2l_jax.evaluation.baselines import BASELINES

FAMILY = tasks.get("quadratic", dim=2)
TUNE = sample_tasks(FAMILY, seed=0, num_tasks=4, stream="tune")


def has_one_minimum(scores: tuple[float, ...]) -> bool:
    """Whether the scores fall strictly to their lowest and never fall after it."""
    best = int(np.argmin(scores))
    falls = all(a > b for a, b in itertools.pairwise(scores[: best + 1]))
    return falls and all(a <= b for a, b in itertools.pairwise(scores[best:]))


def sgd_failing_at(bad_lr: float) -> Callable[[jnp.ndarray], optax.GradientTransformation]:
    """SGD whose every update is NaN at the rate ``bad_lr``."""

    def make_tx(lr: jnp.ndarray) -> optax.GradientTransformation:
        return optax.sgd(jnp.where(jnp.isclose(lr, bad_lr), jnp.nan, lr))

    return make_tx


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_coarse_to_fine_finds_the_best_rate_of_the_whole_grid_with_fewer_runs(name):
    full = search_learning_rates(BASELINES[name], FAMILY, TUNE, (10,))[10]
    fast = search_learning_rates(BASELINES[name], FAMILY, TUNE, (10,), coarse_to_fine=True)[10]
    assert full.grid == DEFAULT_LR_GRID and has_one_minimum(full.scores)

    assert fast.best_lr == full.best_lr
    assert len(fast.grid) < len(full.grid)
    # The rates that ran, in the grid's order, its ends among them, with the scores of the whole search.
    assert fast.grid == tuple(lr for lr in DEFAULT_LR_GRID if lr in fast.grid)
    assert (fast.grid[0], fast.grid[-1]) == (DEFAULT_LR_GRID[0], DEFAULT_LR_GRID[-1])
    assert fast.scores == tuple(full.scores[DEFAULT_LR_GRID.index(lr)] for lr in fast.grid)


@pytest.mark.parametrize("coarse_to_fine", [False, True])
def test_a_rate_whose_loss_is_not_finite_never_wins(coarse_to_fine):
    best = search_learning_rates(BASELINES["sgd"], FAMILY, TUNE, (10,))[10].best_lr
    make_tx = sgd_failing_at(best)
    assert np.isnan(loss_curves(make_tx, jnp.asarray(best, jnp.float32), FAMILY, TUNE, 10)[:, -1]).all()

    tuning = search_learning_rates(make_tx, FAMILY, TUNE, (10,), coarse_to_fine=coarse_to_fine)[10]

    assert tuning.scores[tuning.grid.index(best)] == np.inf
    assert tuning.best_lr != best
    assert tuning.best_lr == tuning.grid[int(np.argmin(tuning.scores))]
    assert np.isfinite(min(tuning.scores))


def test_each_horizon_gets_its_own_rate_from_one_set_of_runs():
    horizons = (1, 5, 30)
    together = search_learning_rates(BASELINES["momentum"], FAMILY, TUNE, horizons)

    assert list(together) == list(horizons)
    assert len({t.best_lr for t in together.values()}) == len(horizons)
    for steps in horizons:
        alone = search_learning_rates(BASELINES["momentum"], FAMILY, TUNE, (steps,))[steps]
        assert together[steps].best_lr == alone.best_lr


def test_tune_learning_rate_is_the_search_of_the_whole_grid_at_one_horizon():
    grid = DEFAULT_LR_GRID[::2]
    tuning = tune_learning_rate("adam", FAMILY, TUNE, 10, grid, progress=False)

    assert tuning == search_learning_rates(BASELINES["adam"], FAMILY, TUNE, (10,), grid, name="adam")[10]
    assert tuning.name == "adam" and tuning.grid == grid and len(tuning.scores) == len(grid)
    assert not tuning.at_edge


@pytest.mark.parametrize(
    ("horizons", "grid", "message"),
    [
        ((), DEFAULT_LR_GRID, "no horizons"),
        ((10, 0), DEFAULT_LR_GRID, "num_steps must be a positive integer, got 0"),
        ((10,), (), "the learning-rate grid is empty"),
        ((10,), (0.1, -1.0), "every learning rate"),
    ],
)
def test_a_search_without_horizons_or_rates_is_refused(horizons, grid, message):
    with pytest.raises(ConfigError, match=message):
        search_learning_rates(BASELINES["sgd"], FAMILY, TUNE, horizons, grid)
