"""The meta-gradient estimators (``l2l_jax.meta.estimators``): PES is unbiased, truncated BPTT and ES are not.

The main test (``test_pes_is_unbiased_and_truncated_bptt_and_es_are_not``) follows
Vicol, Metz and Sohl-Dickstein (2021): on a problem small enough to differentiate
the whole run, the mean of many PES estimates matches the gradient of the
Gaussian-smoothed whole-run loss, estimated independently, while truncated BPTT
and truncated ES miss φ's effect on later truncations. The rest are contract
tests of the interface. All statistical tests are seeded, so they are
deterministic; their bounds are stated where they are asserted.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr
from jax.flatten_util import ravel_pytree

from l2l_jax import optimizers, tasks
from l2l_jax.errors import ConfigError, UnknownNameError
from l2l_jax.meta import estimators as E
from l2l_jax.meta.estimators import _antithetic as antithetic
from l2l_jax.meta.unroll import init_inner, unroll_task, weighted_loss
from l2l_jax.tasks.base import TaskFamily

#: Combined standard errors allowed between two estimates of the same mean. Each
#: comparison is a difference of independent means over hundreds of samples, so by
#: the central limit theorem it is normal; |z| > 4 has probability 6e-5 per
#: comparison if the means agree.
Z_BOUND = 4.0

# The unbiasedness problem: a small LSTM on one 2-d quadratic, T = 40 in 8 truncations of 5.
HIDDEN = 4
HORIZON, TRUNCATION = 40, 5
NUM_TRUNCATIONS = HORIZON // TRUNCATION
SIGMA = 0.01
REFERENCE_DRAWS = 200  # Draws of (ε_1..ε_8) for the smoothed whole-run gradient.
SEEDS, PAIRS = 200, 20  # Whole ES/PES runs: SEEDS samples, each the mean over PAIRS antithetic pairs.
RANDOM_DIRECTIONS = 3


def lstm_on_a_quadratic():
    return optimizers.get("lstm", hidden_size=HIDDEN), tasks.get("quadratic", dim=2)


def whole_run(estimator, meta_params, init_key, key):
    """The sum of the estimator's per-truncation estimates over one whole run (flat), from ``init``."""

    def truncation(state, k):
        r = estimator.estimate(meta_params, state, k)
        return r.state, ravel_pytree(r.meta_grad)[0]

    _, grads = jax.lax.scan(truncation, estimator.init(meta_params, init_key), jax.random.split(key, NUM_TRUNCATIONS))
    return jnp.sum(grads, axis=0)


def mean_and_se(samples):
    """Mean and standard error of the mean of scalar samples."""
    samples = np.asarray(samples)
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(samples.size))


@functools.cache
def unbiasedness_measurements():
    """Every estimate of the unbiasedness test, as flat float64 vectors (cached: one computation per process).

    Returns:
      A dict with ``reference`` (REFERENCE_DRAWS samples of the exact gradient of the
      whole run's loss with truncation k run at φ + ε_k), ``exact`` (the same at ε = 0),
      ``pes`` and ``es`` (SEEDS whole-run sums, each over PAIRS pairs), ``tbptt2``
      and ``tbptt1`` (the whole-run sums of second- and first-order truncated BPTT).
    """
    with jax.enable_x64(True):
        optimizer, family = lstm_on_a_quadratic()
        phi = optimizer.init(jax.random.key(0))
        flat_phi, unravel = ravel_pytree(phi)
        assert flat_phi.dtype == jnp.float64
        init_key = jax.random.key(1)  # The one task, its θ0 and data, for every estimate.
        task = jax.tree.map(lambda x: x[0], init_inner(optimizer, phi, family, init_key, 1))

        def whole_run_loss(flat, eps):
            """Σ_k weighted loss of truncation k run at φ + ε_k, differentiable through every step."""

            def truncation(inner, e):
                tx = optimizer.as_optax(unravel(flat + e))
                inner, losses = unroll_task(tx, family, inner, TRUNCATION, first_order=False)
                return inner, weighted_loss(losses)

            return jnp.sum(jax.lax.scan(truncation, task, eps)[1])

        exact_grad = jax.jit(jax.grad(whole_run_loss))
        eps_shape = (NUM_TRUNCATIONS, flat_phi.size)
        draws = SIGMA * jax.random.normal(jax.random.key(2), (REFERENCE_DRAWS, *eps_shape))
        # One program: row 0 is the unperturbed run, the others the reference's draws.
        grads = jax.vmap(exact_grad, in_axes=(None, 0))(flat_phi, jnp.concatenate([jnp.zeros((1, *eps_shape)), draws]))

        def sums(name, keys, **options):
            estimator = E.get(name, optimizer, family, batch_size=1, truncation=TRUNCATION, **options)
            return jax.jit(jax.vmap(lambda k: whole_run(estimator, phi, init_key, k)))(keys)

        keys = jax.random.split(jax.random.key(3), SEEDS)
        out = {
            "reference": grads[1:],
            "exact": grads[0],
            "pes": sums("pes", keys, sigma=SIGMA, num_pairs=PAIRS),
            "es": sums("es", jax.random.split(jax.random.key(4), SEEDS), sigma=SIGMA, num_pairs=PAIRS),
            "tbptt2": sums("tbptt", keys[:1], first_order=False)[0],
            "tbptt1": sums("tbptt", keys[:1], first_order=True)[0],
        }
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


def projections(m):
    """Per direction: (reference mean, s.e.), (PES mean, s.e.), (ES mean, s.e.), TBPTT second and first order.

    The directions are the exact unsmoothed whole-run gradient (normalised; the one
    that matters for descent, deterministic and independent of every sample) and
    RANDOM_DIRECTIONS seeded random unit vectors. Per-coordinate tests would need far
    more samples: every coordinate of an ES-type sample has a variance of about
    |∇|², so a projection is as precise as a coordinate and a few suffice.
    """
    rng = np.random.default_rng(0)
    random_dirs = rng.standard_normal((RANDOM_DIRECTIONS, m["exact"].size))
    directions = np.concatenate([m["exact"][None], random_dirs])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return [
        {
            "reference": mean_and_se(m["reference"] @ u),
            "pes": mean_and_se(m["pes"] @ u),
            "es": mean_and_se(m["es"] @ u),
            "tbptt2": float(m["tbptt2"] @ u),
            "tbptt1": float(m["tbptt1"] @ u),
        }
        for u in directions
    ]


def test_pes_is_unbiased_and_truncated_bptt_and_es_are_not():
    """PES's mean whole-run estimate equals the smoothed whole-run gradient; TBPTT's and ES's do not.

    Setup: the LSTM (hidden size 4) at its initial φ on one 2-d quadratic (one task,
    θ0 and data for every estimate), T = 40 in 8 truncations of 5, σ = 0.01, float64.
    The estimand is ∇ E[Σ_k L_k] with truncation k run at φ + ε_k, ε_k ~ N(0, σ² I)
    independent: its reference is the mean of the exact (second-order, ``jax.grad``
    through all 40 steps) gradient over 200 draws of (ε_1..ε_8). A PES sample is the
    sum of one whole run's 8 estimates (mean over 20 pairs); 200 seeds.

    Bound: along the exact gradient's direction and 3 seeded random directions,
    |PES mean − reference| ≤ 4 combined standard errors. Along the exact gradient's
    direction, truncated BPTT's summed estimate (second and first order,
    deterministic) and truncated ES's mean (same sampling as PES) are more than 4
    combined standard errors (their own, the reference's and PES's) from the
    reference: their bias is larger than what the test can resolve.
    """
    rows = projections(unbiasedness_measurements())
    for i, row in enumerate(rows):
        (ref, ref_se), (pes, pes_se) = row["reference"], row["pes"]
        assert abs(pes - ref) <= Z_BOUND * math.hypot(ref_se, pes_se), (i, row)
    row = rows[0]
    (ref, ref_se), (pes, pes_se), (es, es_se) = row["reference"], row["pes"], row["es"]
    # Not vacuous: PES resolves the gradient along its own direction to better than 20%.
    assert Z_BOUND * math.hypot(ref_se, pes_se) < 0.2 * abs(ref), row
    for name, value, se in (("tbptt2", row["tbptt2"], 0.0), ("tbptt1", row["tbptt1"], 0.0), ("es", es, es_se)):
        assert abs(value - ref) > Z_BOUND * math.sqrt(ref_se**2 + pes_se**2 + se**2), (name, row)


# --- contract tests ------------------------------------------------------------------------

BATCH, K = 4, 3
OPTIONS = {
    "tbptt": {"first_order": False},
    "es": {"sigma": 0.05, "num_pairs": 2},
    "pes": {"sigma": 0.05, "num_pairs": 2},
}


@functools.cache
def small_estimator(name, x64, tasks_per_chunk=None):
    """A small LSTM (φ a nested dict) on 2-d quadratics, φ, and the estimator with a jitted ``estimate``.

    Cached, so that the tests share compiled programs; call it, and the functions, under
    ``jax.enable_x64(x64)``. ``init`` runs op by op: its few ops compile once for every
    estimator, which is faster than compiling a program of it for each.
    """
    optimizer = optimizers.get("lstm", hidden_size=2)
    est = E.get(
        name,
        optimizer,
        tasks.get("quadratic", dim=2),
        batch_size=BATCH,
        truncation=K,
        tasks_per_chunk=tasks_per_chunk,
        **OPTIONS[name],
    )
    return optimizer.init(jax.random.key(0)), est._replace(estimate=jax.jit(est.estimate))


def flat(tree):
    """Every leaf of ``tree`` (keys as their data) in one float64 vector."""
    leaves = [
        jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in jax.tree.leaves(tree)
    ]
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


@pytest.mark.parametrize("name", ["tbptt", "es", "pes"])
@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_estimate_is_jittable_finite_and_shaped_like_phi(name, x64):
    with jax.enable_x64(x64):
        phi, est = small_estimator(name, x64)
        state = est.init(phi, jax.random.key(1))
        assert int(est.inner_step(state)) == 0
        r = est.estimate(phi, state, jax.random.key(2))
        assert int(est.inner_step(r.state)) == K
        assert int(est.inner_step(est.estimate(phi, r.state, jax.random.key(3)).state)) == 2 * K
        assert jax.tree.structure(r.meta_grad) == jax.tree.structure(phi)
        for g, p in zip(jax.tree.leaves(r.meta_grad), jax.tree.leaves(phi)):
            assert g.shape == p.shape and g.dtype == p.dtype == (jnp.float64 if x64 else jnp.float32)
            assert np.all(np.isfinite(g))
        assert np.isfinite(r.meta_loss) and r.meta_loss.shape == ()
        assert np.any(flat(r.meta_grad) != 0)


@pytest.mark.parametrize("name", ["es", "pes"])
def test_es_and_pes_are_deterministic_given_the_key(name):
    phi, est = small_estimator(name, False)
    state = est.init(phi, jax.random.key(1))
    a, b, c = (est.estimate(phi, state, jax.random.key(k)) for k in (5, 5, 6))
    np.testing.assert_array_equal(flat(a.meta_grad), flat(b.meta_grad))
    np.testing.assert_array_equal(flat(a.state), flat(b.state))
    assert not np.array_equal(flat(a.meta_grad), flat(c.meta_grad))  # The key does draw the perturbations.


@pytest.mark.parametrize("name", ["tbptt", "es", "pes"])
def test_tasks_per_chunk_gives_the_same_estimate(name):
    with jax.enable_x64(True):
        phi, whole = small_estimator(name, True)
        _, chunked = small_estimator(name, True, tasks_per_chunk=2)
        state = whole.init(phi, jax.random.key(1))
        np.testing.assert_array_equal(flat(state), flat(chunked.init(phi, jax.random.key(1))))
        for k in (2, 3):  # Two truncations, so that the carried state is compared too.
            a, b = whole.estimate(phi, state, jax.random.key(k)), chunked.estimate(phi, state, jax.random.key(k))
            np.testing.assert_allclose(flat(b.meta_grad), flat(a.meta_grad), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(float(b.meta_loss), float(a.meta_loss), rtol=1e-12)
            np.testing.assert_allclose(flat(b.state), flat(a.state), rtol=1e-12, atol=1e-14)
            state = a.state


def test_es_with_a_small_sigma_estimates_the_truncations_exact_gradient():
    """On one smooth truncation, the mean ES estimate at σ = 1e-4 is its exact (second-order) gradient.

    The smoothing changes the gradient by O(σ²), far below the sampling error, so the
    ES mean (40 seeds of 100 pairs of one task) must agree with second-order TBPTT in
    every one of φ's 3 coordinates (the worked example's linear optimizer) within 4
    standard errors, and the test resolves each coordinate to better than 10% of |∇|.
    """
    with jax.enable_x64(True):
        optimizer, family = optimizers.get("linear_rnn"), tasks.get("quadratic", dim=2)
        phi = optimizer.init(jax.random.key(0))
        init_key = jax.random.key(1)
        tbptt = E.get("tbptt", optimizer, family, batch_size=1, truncation=K, first_order=False)
        exact = flat(jax.jit(tbptt.estimate)(phi, tbptt.init(phi, init_key), None).meta_grad)
        es = E.get("es", optimizer, family, batch_size=1, truncation=K, sigma=1e-4, num_pairs=100)
        state = es.init(phi, init_key)
        draw = jax.jit(jax.vmap(lambda k: ravel_pytree(es.estimate(phi, state, k).meta_grad)[0]))
        samples = np.asarray(draw(jax.random.split(jax.random.key(2), 40)))
        for i in range(exact.size):
            mean, se = mean_and_se(samples[:, i])
            assert abs(mean - exact[i]) <= Z_BOUND * se, (i, mean, se, exact[i])
            assert Z_BOUND * se < 0.1 * np.linalg.norm(exact), (i, se, exact)


def test_pes_accumulates_its_perturbations_from_zero():
    """``init`` starts ξ at zero; each estimate adds that truncation's ε, and the estimate is ξ times a scalar."""
    with jax.enable_x64(True):
        phi, est = small_estimator("pes", True)
        sigma = OPTIONS["pes"]["sigma"]
        state = est.init(phi, jax.random.key(1))
        assert not np.any(flat(state.accumulated))
        first = est.estimate(phi, state, jax.random.key(2))
        eps = flat(jax.tree.map(lambda x: x[0, 0], first.state.accumulated))  # ε of task 0, pair 0.
        assert 0.5 * sigma < np.std(eps) < 2 * sigma  # ε ~ N(0, σ² I).
        # The second truncation's ε, as the same key draws it from a fresh start, adds to the first.
        eps2 = est.estimate(phi, state, jax.random.key(3)).state.accumulated
        second = est.estimate(phi, first.state, jax.random.key(3))
        np.testing.assert_allclose(
            flat(second.state.accumulated), flat(first.state.accumulated) + flat(eps2), rtol=1e-12, atol=0
        )
        # With one task and one pair, the estimate is ξ times the scalar (L⁺ − L⁻) / (2σ²).
        optimizer, family = optimizers.get("linear_rnn"), tasks.get("quadratic", dim=2)
        one_pair = E.get("pes", optimizer, family, batch_size=1, truncation=K, sigma=sigma)
        phi = optimizer.init(jax.random.key(0))
        r = jax.jit(one_pair.estimate)(phi, one_pair.init(phi, jax.random.key(1)), jax.random.key(2))
        xi, g = flat(r.state.accumulated), flat(r.meta_grad)
        np.testing.assert_allclose(g, (g @ xi) / (xi @ xi) * xi, rtol=1e-9, atol=1e-12)
        assert g @ xi != 0


class MinibatchQuadratics(TaskFamily):
    """Least squares on a task's own 7 rows (W, y), with minibatches of 5 rows drawn from the key."""

    name = "minibatch_quadratics"
    EXAMPLES, MINIBATCH, DIM = 7, 5, 2

    def config(self):
        return {}

    def sample(self, key):
        kw, ky = jax.random.split(key)
        return {"W": jax.random.normal(kw, (self.EXAMPLES, self.DIM)), "y": jax.random.normal(ky, (self.EXAMPLES,))}

    def init(self, task_params, key):
        del task_params
        return 0.1 * jax.random.normal(key, (self.DIM,))

    def loss(self, task_params, params, key):
        rows = jax.random.randint(key, (self.MINIBATCH,), 0, self.EXAMPLES)
        return jnp.mean(jnp.square(task_params["W"][rows] @ params - task_params["y"][rows]))


def every_run_on_its_own(name, optimizer, family, meta_params, state, key, sigma, num_pairs, weighting="uniform"):
    """ES's or PES's estimate written as a plain ``vmap`` over tasks and pairs: every run draws its own minibatches."""
    batch_size = jax.tree.leaves(state)[0].shape[0]
    eps = antithetic.perturbations(key, meta_params, (batch_size, num_pairs), sigma)
    run = functools.partial(
        antithetic.antithetic_pair, optimizer, family, meta_params, num_steps=K, weighting=weighting
    )
    if name == "es":
        positive, _, plus, minus = jax.vmap(jax.vmap(lambda s, e: run(e, s, s)))(state.inner, eps)
        after, xi = E.ESState(positive), eps
    else:
        positive, negative, plus, minus = jax.vmap(jax.vmap(run))(eps, state.positive, state.negative)
        xi = jax.tree.map(jnp.add, state.accumulated, eps)
        after = E.PESState(positive, negative, xi)
    grads = jax.tree.map(lambda x: x * ((plus - minus) / (2 * sigma**2)).reshape(plus.shape + (1,) * (x.ndim - 2)), xi)
    return E.Estimate(jnp.mean((plus + minus) / 2), antithetic.mean_over_runs(grads), after)


@pytest.mark.parametrize("tasks_per_chunk", [None, 2], ids=["all-tasks", "chunks-of-2"])
@pytest.mark.parametrize("name", ["es", "pes"])
def test_es_and_pes_draw_a_tasks_minibatches_once_for_all_its_runs_and_estimate_as_if_each_run_drew_its_own(
    name, tasks_per_chunk
):
    """The runs of a task share its data key and step: the minibatch is drawn once per task, with the same numbers.

    On quadratics whose loss gathers a random minibatch of the task's rows, the
    estimate (loss, gradient and new state, over two truncations, float64) equals
    that of a plain ``vmap`` over every run to float rounding, the state keeps its
    ``(tasks, pairs)`` axes, and the program draws and gathers the minibatches per
    task, not per pair.
    """
    pairs, sigma = 3, 0.05
    family = MinibatchQuadratics()
    with jax.enable_x64(True):
        optimizer = optimizers.get("lstm", hidden_size=2)
        phi = optimizer.init(jax.random.key(0))
        options = {"batch_size": BATCH, "truncation": K, "sigma": sigma, "num_pairs": pairs}
        est = E.get(name, optimizer, family, tasks_per_chunk=tasks_per_chunk, **options)
        reference = jax.jit(
            functools.partial(every_run_on_its_own, name, optimizer, family, sigma=sigma, num_pairs=pairs)
        )
        state = est.init(phi, jax.random.key(1))
        shapes = [x.shape for x in jax.tree.leaves(state)]
        assert all(shape[:2] == (BATCH, pairs) for shape in shapes)
        for k in (2, 3):  # Two truncations, so that the carried state is compared too.
            a, b = jax.jit(est.estimate)(phi, state, jax.random.key(k)), reference(phi, state, jax.random.key(k))
            np.testing.assert_allclose(float(a.meta_loss), float(b.meta_loss), rtol=1e-12)
            np.testing.assert_allclose(flat(a.meta_grad), flat(b.meta_grad), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(flat(a.state), flat(b.state), rtol=1e-12, atol=1e-14)
            assert [x.shape for x in jax.tree.leaves(a.state)] == shapes
            assert jax.tree.structure(a.state) == jax.tree.structure(state)
            state = a.state
        jaxpr = jax.make_jaxpr(est.estimate)(phi, state, jax.random.key(4))

    def minibatch_shapes(jaxpr):
        """The output shapes of the random draws and gathers whose shape has a minibatch axis (after the run axes)."""
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("random_bits", "gather"):
                yield from (v.aval.shape for v in eqn.outvars if family.MINIBATCH in v.aval.shape)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    if isinstance(sub, ClosedJaxpr):
                        yield from minibatch_shapes(sub.jaxpr)
                    elif isinstance(sub, Jaxpr):
                        yield from minibatch_shapes(sub)

    shapes = list(minibatch_shapes(jaxpr.jaxpr))
    per_task = (tasks_per_chunk or BATCH, family.MINIBATCH)
    assert shapes and all(shape[:2] == per_task for shape in shapes), shapes


@pytest.mark.parametrize(
    "name, options",
    [
        *[(n, {"sigma": s}) for n in ("es", "pes") for s in (0, -1.0, float("nan"))],
        *[(n, {"num_pairs": p}) for n in ("es", "pes") for p in (0, 2.0, True)],
        *[(n, {"tasks_per_chunk": 3}) for n in ("tbptt", "es", "pes")],
        *[(n, {"truncation": 0}) for n in ("tbptt", "es", "pes")],
        *[(n, {"batch_size": 0}) for n in ("tbptt", "es", "pes")],
        *[(n, {"weighting": "bogus"}) for n in ("tbptt", "es", "pes")],
        ("tbptt", {"remat": "x"}),
        ("tbptt", {"first_order": "yes"}),
        ("tbptt", {"sigma": 0.1}),
        ("pes", {"remat": True}),
    ],
)
def test_bad_options_raise_config_error_when_the_estimator_is_built(name, options):
    optimizer, family = optimizers.get("linear_rnn"), tasks.get("quadratic", dim=2)
    with pytest.raises(ConfigError):
        E.get(name, optimizer, family, **{"batch_size": BATCH, "truncation": K, **options})


def test_an_unknown_estimator_is_refused_listing_the_registered_ones():
    optimizer, family = optimizers.get("linear_rnn"), tasks.get("quadratic", dim=2)
    with pytest.raises(UnknownNameError, match="unknown meta-gradient estimator 'nope'; choose one of es, pes, tbptt"):
        E.get("nope", optimizer, family, batch_size=BATCH, truncation=K)


def test_a_registered_estimator_is_built_by_name_and_a_factory_without_the_trainers_arguments_is_refused(monkeypatch):
    monkeypatch.setattr(E._REGISTRY, "_entries", dict(E._REGISTRY._entries))  # registered for this test only
    E.register("tbptt_again", E.tbptt)
    assert "tbptt_again" in E.available() and E.options("tbptt_again") == {"first_order": True, "remat": False}
    with pytest.raises(ConfigError, match="shipped"):
        E.register("pes", E.tbptt)
    with pytest.raises(ConfigError, match="must take optimizer, family, batch_size"):
        E.register("bad", lambda optimizer, family, sigma=1.0: None)
