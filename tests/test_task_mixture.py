"""Task mixtures: weighted members, how a meta-step's tasks are split, and building one by name."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax import errors, tasks
from l2l_jax.tasks import QuadraticFamily, ScalarQuadratic, TaskMixture

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")


def quadratics(*weights: float) -> TaskMixture:
    """A mixture of quadratics of dimensions 1, 2, ... with the given weights."""
    return TaskMixture([(QuadraticFamily(dim=d), w) for d, w in enumerate(weights, start=1)])


# --- weights ---------------------------------------------------------------------------------


def test_weights_are_normalised_and_the_members_kept_in_order():
    small, large = QuadraticFamily(dim=2), QuadraticFamily(dim=5)
    mixture = TaskMixture([(small, 3.0), (large, 1)])
    assert mixture.name == "mixture"
    assert mixture.families == (small, large)
    assert mixture.weights == pytest.approx((0.75, 0.25))
    assert math.fsum(quadratics(0.1, 0.2, 0.7, 5.0).weights) == pytest.approx(1.0)


def test_one_member_takes_the_whole_batch():
    mixture = quadratics(2.5)
    assert mixture.weights == (1.0,)
    assert mixture.split_batch(7) == (7,)


@pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf, "x", None, True])
def test_a_weight_must_be_positive_and_finite(weight):
    with pytest.raises(errors.ConfigError, match="mixture member 1 weight"):
        TaskMixture([(QuadraticFamily(dim=2), 1.0), (QuadraticFamily(dim=3), weight)])


@pytest.mark.parametrize("members", [[], (), None, "quadratic"])
def test_a_mixture_needs_members(members):
    with pytest.raises(errors.ConfigError, match="at least one"):
        TaskMixture(members)


def test_every_member_is_a_task_family_and_weight_pair():
    with pytest.raises(errors.ConfigError, match="mixture member 1 must be a TaskFamily"):
        TaskMixture([(QuadraticFamily(dim=2), 1.0), ("quadratic", 1.0)])
    with pytest.raises(errors.ConfigError, match="mixture member 0 must be a TaskFamily"):
        TaskMixture([(quadratics(1.0, 1.0), 1.0)])  # No mixture inside a mixture.
    with pytest.raises(errors.ConfigError, match=r"mixture member 0 must be a \(family, weight\) pair"):
        TaskMixture([QuadraticFamily(dim=2)])


# --- split_batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1.0,), (1, 1), (1, 2, 3), (0.5, 0.3, 0.2), (100, 1, 1, 1), (1e-6, 1e6)])
@pytest.mark.parametrize("batch_size", [4, 5, 7, 10, 64, 101])
def test_the_split_covers_the_batch_and_every_member(weights, batch_size):
    mixture = quadratics(*weights)
    counts = mixture.split_batch(batch_size)
    assert len(counts) == len(weights)
    assert sum(counts) == batch_size
    assert min(counts) >= 1
    assert all(isinstance(c, int) for c in counts)
    # Off the quota by less than one task, plus at most one per member raised to the minimum of one.
    for count, weight in zip(counts, mixture.weights, strict=True):
        assert count == 1 or abs(count - weight * batch_size) < len(weights)


def test_the_split_is_deterministic():
    a, b = quadratics(0.37, 1.1, 2.9), quadratics(0.37, 1.1, 2.9)
    assert [a.split_batch(n) for n in range(3, 40)] == [b.split_batch(n) for n in range(3, 40)]


def test_exact_quotas_are_kept():
    # Quotas 0.5·10, 0.3·10, 0.2·10 = 5, 3, 2: whole numbers, nothing left to share.
    assert quadratics(0.5, 0.3, 0.2).split_batch(10) == (5, 3, 2)
    assert quadratics(3, 1).split_batch(8) == (6, 2)
    assert quadratics(0.1, 0.2, 0.7).split_batch(10) == (1, 2, 7)
    assert quadratics(0.29, 0.71).split_batch(100) == (29, 71)


def test_leftover_tasks_go_to_the_largest_remainders():
    # Quotas 3.5, 2.1, 1.4: floors 3, 2, 1 leave one task, for the largest remainder (0.5).
    assert quadratics(0.5, 0.3, 0.2).split_batch(7) == (4, 2, 1)
    # Quotas 1.6, 2.4: floors 1, 2 leave one task, for member 0 (0.6 > 0.4).
    assert quadratics(2, 3).split_batch(4) == (2, 2)
    # Quotas 1.2, 2.4, 2.4: floors 1, 2, 2 leave one task; members 1 and 2 tie, the lower index wins.
    assert quadratics(1, 2, 2).split_batch(6) == (1, 3, 2)


def test_equal_weights_share_evenly_and_ties_go_to_the_lower_index():
    assert quadratics(1, 1, 1).split_batch(9) == (3, 3, 3)
    assert quadratics(1, 1, 1).split_batch(10) == (4, 3, 3)
    assert quadratics(1, 1, 1).split_batch(11) == (4, 4, 3)


def test_every_member_gets_a_task_even_below_its_quota():
    # Quotas 9.8, 0.1, 0.1: the two small members are raised to 1 and member 0 gives one back.
    assert quadratics(98, 1, 1).split_batch(10) == (8, 1, 1)
    # Quotas 2.94, 0.03, 0.03: floors 2, 0, 0 are raised to 2, 1, 1 and member 0 gives one back.
    assert quadratics(98, 1, 1).split_batch(3) == (1, 1, 1)


@pytest.mark.parametrize("batch_size", [0, -3, 2.0, "8", True])
def test_the_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(errors.ConfigError, match="batch_size"):
        quadratics(1, 1).split_batch(batch_size)


def test_a_batch_smaller_than_the_number_of_members_is_refused():
    with pytest.raises(errors.ConfigError, match="batch_size 2 is smaller than the task mixture's 3 members"):
        quadratics(1, 1, 1).split_batch(2)


# --- config and the registry -----------------------------------------------------------------


def test_config_records_members_with_weights_as_given():
    mixture = TaskMixture([(QuadraticFamily(dim=2), 3.0), (ScalarQuadratic(target=1.0), 1.0)])
    assert mixture.config() == {
        "members": [
            {"task": "quadratic", "options": {"dim": 2, "init_scale": 0.01}, "weight": 3.0},
            {"task": "scalar_quadratic", "options": {"target": 1.0, "theta0": 10.0}, "weight": 1.0},
        ]
    }


def test_get_builds_a_mixture_and_its_config_rebuilds_an_equal_one():
    mixture = tasks.get(
        "mixture",
        members=[
            {"task": "quadratic", "options": {"dim": 2}, "weight": 2.0},
            {"task": "quadratic", "options": {"dim": 5}},  # weight 1.0
            {"task": "scalar_quadratic"},  # options {}
        ],
    )
    assert isinstance(mixture, TaskMixture)
    assert [f.config() for f in mixture.families] == [
        QuadraticFamily(dim=2).config(),
        QuadraticFamily(dim=5).config(),
        ScalarQuadratic().config(),
    ]
    assert mixture.weights == pytest.approx((0.5, 0.25, 0.25))
    rebuilt = tasks.get("mixture", **mixture.config())
    assert isinstance(rebuilt, TaskMixture)
    assert rebuilt.config() == mixture.config()
    assert rebuilt.weights == mixture.weights
    assert [type(f) for f in rebuilt.families] == [type(f) for f in mixture.families]
    assert rebuilt.split_batch(16) == mixture.split_batch(16)
    assert "mixture" in tasks.available()


def test_repr_shows_members_and_weights():
    text = repr(TaskMixture([(QuadraticFamily(dim=2), 3.0), (QuadraticFamily(dim=5), 1.0)]))
    assert text == (
        "TaskMixture([(QuadraticFamily(dim=2, init_scale=0.01), 3.0), (QuadraticFamily(dim=5, init_scale=0.01), 1.0)])"
    )


def test_get_needs_the_members_option():
    with pytest.raises(errors.ConfigError, match="needs the option 'members'"):
        tasks.get("mixture")
    with pytest.raises(errors.ConfigError, match="no option 'dim'"):
        tasks.get("mixture", members=[{"task": "quadratic"}], dim=3)


@pytest.mark.parametrize("members", [[], None, {"task": "quadratic"}, "quadratic"])
def test_get_refuses_members_that_are_not_a_non_empty_list(members):
    with pytest.raises(errors.ConfigError, match="non-empty list"):
        tasks.get("mixture", members=members)


GOOD = {"task": "quadratic", "options": {"dim": 2}}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("quadratic", "mixture member 1 must be a dict"),
        (("quadratic", 1.0), "mixture member 1 must be a dict"),
        ({"task": "quadratic", "dim": 2}, "mixture member 1 has unknown key.*'dim'.*valid keys: task, options, weight"),
        ({"options": {"dim": 2}}, "mixture member 1 needs a 'task'"),
        ({"task": ""}, "mixture member 1 task"),
        ({"task": 3}, "mixture member 1 task"),
        ({"task": "quadratic", "options": [2]}, "mixture member 1 options"),
        ({"task": "quadratic", "weight": 0}, "mixture member 1 weight"),
        ({"task": "quadratic", "weight": -1}, "mixture member 1 weight"),
        ({"task": "quadratic", "weight": math.nan}, "mixture member 1 weight"),
        ({"task": "quadratic", "weight": "x"}, "mixture member 1 weight"),
        ({"task": "mixture", "options": {"members": [GOOD]}}, "mixture member 1: a mixture cannot contain a mixture"),
        ({"task": "quadratic", "options": {"dim": 0}}, "mixture member 1: task 'quadratic': quadratic dimension"),
        ({"task": "quadratic", "options": {"size": 2}}, "mixture member 1: task 'quadratic' has no option 'size'"),
    ],
)
def test_get_names_the_bad_member(bad, message):
    with pytest.raises(errors.ConfigError, match=message):
        tasks.get("mixture", members=[GOOD, bad])


def test_an_unknown_member_task_is_an_unknown_name_with_its_index():
    with pytest.raises(errors.UnknownNameError, match="mixture member 1: unknown task 'cifar'"):
        tasks.get("mixture", members=[GOOD, {"task": "cifar"}])


def test_only_the_mixture_entry_may_build_a_mixture(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", copy.deepcopy(tasks._REGISTRY))
    tasks.register("sneaky", lambda: quadratics(1.0))
    with pytest.raises(errors.ConfigError, match="did not build a TaskFamily"):
        tasks.get("sneaky")


# --- members of different shapes -------------------------------------------------------------


def first_losses(family: tasks.TaskFamily, keys: jax.Array) -> tuple[object, jax.Array]:
    """θ0 and f(θ0) of one task per key, as one vmap over ``family``'s tasks."""
    task_params = jax.vmap(family.sample)(keys)
    params = jax.vmap(family.init)(task_params, keys)
    return params, jax.vmap(family.loss)(task_params, params, keys)


def test_members_with_parameters_of_different_shapes_each_run_as_their_own_vmap():
    mixture = tasks.get(
        "mixture",
        members=[
            {"task": "quadratic", "options": {"dim": 2}, "weight": 1.0},
            {"task": "quadratic", "options": {"dim": 5}, "weight": 1.0},
            {"task": "mnist", "options": {"data_dir": FIXTURE, "hidden_units": 5, "batch_size": 8}, "weight": 2.0},
        ],
    )
    counts = mixture.split_batch(6)
    assert counts == (2, 1, 3)  # Quotas 1.5, 1.5, 3: floors 1, 1, 3; the leftover task goes to member 0.
    shapes = []
    for i, (family, count) in enumerate(zip(mixture.families, counts, strict=True)):
        keys = jax.random.split(jax.random.PRNGKey(i), count)
        params, losses = jax.jit(functools.partial(first_losses, family))(keys)
        assert losses.shape == (count,)
        assert np.all(np.isfinite(np.asarray(losses)))
        shapes.append(jax.tree.map(lambda x: x.shape[1:], params))
    assert shapes[0] == (2,) and shapes[1] == (5,)
    assert shapes[2]["Dense_0"]["kernel"] == (784, 5)
