"""The held-out battery's task families: a CNN on MNIST, a character-level LM, logistic regression."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, tasks
from l2l_jax.data import text
from l2l_jax.tasks import char_lm
from l2l_jax.tasks.cnn import StridedConv

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")

#: Small options for each family (the fixture's 300 MNIST images), and its class.
FAMILIES = {
    "mnist_cnn": ({"data_dir": FIXTURE, "batch_size": 32}, tasks.MNISTCNNFamily),
    "char_lm": ({"seq_len": 16, "batch_size": 8, "hidden_size": 32, "embed_dim": 16}, tasks.CharLMFamily),
    "logistic_regression": ({"examples": 64, "features": 8}, tasks.LogisticRegressionFamily),
}

#: The loss of an untrained model: uniform over 10 classes, 128 characters, 2 labels.
CHANCE = {"mnist_cnn": math.log(10), "char_lm": math.log(text.VOCAB_SIZE), "logistic_regression": math.log(2)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def named_family(request):
    options, _ = FAMILIES[request.param]
    return request.param, tasks.get(request.param, **options)


def batch_of_tasks(family, n: int, seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    task_params = jax.jit(jax.vmap(family.sample))(keys)
    return task_params, jax.jit(jax.vmap(family.init))(task_params, keys), keys


def test_built_by_name_with_its_options(named_family):
    name, family = named_family
    options, cls = FAMILIES[name]
    assert name in tasks.available() and isinstance(family, cls) and family.name == name
    assert {k: family.config()[k] for k in options} == options


def test_config_round_trips_through_json(named_family):
    name, family = named_family
    config = json.loads(json.dumps(family.config()))
    assert tasks.get(name, **config).config() == family.config()


def test_defaults_round_trip():
    for name, (options, _) in FAMILIES.items():
        only_data = {k: v for k, v in options.items() if k == "data_dir"}
        family = tasks.get(name, **only_data)
        assert tasks.get(name, **family.config()).config() == family.config()


def test_vmapped_loss_and_grad_are_finite_with_the_right_shapes(named_family):
    _, family = named_family
    task_params, params, keys = batch_of_tasks(family, 3)
    losses, grads = jax.jit(jax.vmap(jax.value_and_grad(family.loss, argnums=1)))(task_params, params, keys)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.shape == p.shape and bool(jnp.all(jnp.isfinite(g)))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    one = family.loss(jax.tree.map(lambda t: t[1], task_params), jax.tree.map(lambda t: t[1], params), keys[1])
    assert one.shape == () and float(one) == pytest.approx(float(losses[1]), rel=1e-5)


def test_initial_loss_is_about_chance(named_family):
    name, family = named_family
    task_params, params, keys = batch_of_tasks(family, 3, seed=1)
    losses = jax.vmap(family.loss)(task_params, params, keys)
    assert float(jnp.mean(losses)) == pytest.approx(CHANCE[name], abs=0.3)


def test_tasks_differ_by_initialisation(named_family):
    _, family = named_family
    _, params, _ = batch_of_tasks(family, 2)
    assert any(not np.array_equal(leaf[0], leaf[1]) for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("name, learning_rate", [("mnist_cnn", 1e-2), ("char_lm", 1e-2), ("logistic_regression", 0.1)])
def test_a_few_adam_steps_reduce_the_loss(name, learning_rate):
    options, _ = FAMILIES[name]
    family = tasks.get(name, **options)
    task_params = family.sample(jax.random.PRNGKey(5))
    params = family.init(task_params, jax.random.PRNGKey(6))
    held_keys = jax.random.split(jax.random.PRNGKey(7), 8)  # Minibatches never trained on.
    mean_loss = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: family.loss(task_params, p, k))(held_keys)))
    opt = optax.adam(learning_rate)

    def step(carry, key):
        p, state = carry
        g = jax.grad(family.loss, argnums=1)(task_params, p, key)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (trained, _), _ = jax.jit(lambda p, ks: jax.lax.scan(step, (p, opt.init(p)), ks))(
        params, jax.random.split(jax.random.PRNGKey(8), 40)
    )
    before, after = float(mean_loss(params)), float(mean_loss(trained))
    assert after < before - 0.1 * CHANCE[name], (before, after)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("mnist_cnn", {"channels": []}, "channels must be a non-empty list"),
        ("mnist_cnn", {"channels": "816"}, "channels must be a non-empty list"),
        ("mnist_cnn", {"channels": [8, 0]}, r"channels\[1\] must be a positive integer"),
        ("mnist_cnn", {"batch_size": 0}, "'batch_size' must be a positive integer"),
        ("mnist_cnn", {"download": "yes"}, "download must be True or False"),
        ("mnist_cnn", {"hidden_units": 20}, "has no option 'hidden_units'; valid options: 'channels', 'batch_size'"),
        ("char_lm", {"seq_len": 0}, "'seq_len' must be a positive integer"),
        ("char_lm", {"seq_len": 10**9}, "'seq_len' must be below the text's length"),
        ("char_lm", {"batch_size": 2.0}, "'batch_size' must be a positive integer"),
        ("char_lm", {"hidden_size": -1}, "'hidden_size' must be a positive integer"),
        ("char_lm", {"embed_dim": True}, "'embed_dim' must be a positive integer"),
        ("logistic_regression", {"examples": 0}, "examples must be a positive integer"),
        ("logistic_regression", {"features": "8"}, "features must be a positive integer"),
        ("logistic_regression", {"label_noise": 0.6}, "'label_noise' must be a probability from 0 to 0.5"),
        ("logistic_regression", {"label_noise": -0.1}, "'label_noise' must be a non-negative number"),
        ("logistic_regression", {"l2": float("nan")}, "l2 must be a non-negative number"),
        ("logistic_regression", {"init_scale": -1.0}, "'init_scale' must be a non-negative number"),
    ],
)
def test_bad_options_raise_config_error_naming_the_task_and_quoting_its_option(name, options, message):
    if name == "mnist_cnn":
        options = {"data_dir": FIXTURE, **options}
    with pytest.raises(errors.ConfigError, match=f"^task '{name}':? {message}"):
        tasks.get(name, **options)


# --- the CNN ---------------------------------------------------------------


def test_cnn_architecture_and_parameter_count():
    family = tasks.get("mnist_cnn", data_dir=FIXTURE)
    params = family.init((), jax.random.PRNGKey(0))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "Conv_0": {"kernel": (3, 3, 1, 8), "bias": (8,)},
        "Conv_1": {"kernel": (3, 3, 8, 16), "bias": (16,)},
        "Dense_0": {"kernel": (7 * 7 * 16, 10), "bias": (10,)},
    }
    assert sum(p.size for p in jax.tree.leaves(params)) == 80 + 1168 + 7850


@pytest.mark.parametrize("size, channels, features", [(28, 1, 8), (14, 8, 16), (7, 16, 4), (5, 3, 2)])
def test_strided_conv_matches_flax_conv(size, channels, features):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, size, size, channels))
    reference = nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME")
    variables = reference.init(jax.random.PRNGKey(1), x)
    ours = StridedConv(features)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_cnn_uses_mnist_data_as_the_mlp_family_does():
    family = tasks.get("mnist_cnn", data_dir=FIXTURE, batch_size=16)
    mlp = tasks.get("mnist", data_dir=FIXTURE, batch_size=16)
    assert family.data_record == mlp.data_record and family.data_record["dataset"] == "MNIST"
    assert family.num_examples == 300 and "test split" in family.data_description
    x, y = family.batch(jax.random.PRNGKey(3))
    x_mlp, y_mlp = mlp.batch(jax.random.PRNGKey(3))
    assert x.shape == (16, 28, 28, 1) and y.shape == (16,)
    np.testing.assert_array_equal(x.reshape(16, -1), x_mlp)
    np.testing.assert_array_equal(y, y_mlp)


# --- the character-level language model -------------------------------------


def test_char_lm_parameter_count_at_defaults():
    family = tasks.get("char_lm")
    params = family.init((), jax.random.PRNGKey(0))
    embed, hidden, vocab = 32, 64, 128
    gru = 3 * (embed * hidden + hidden) + 3 * hidden * hidden + hidden
    assert sum(p.size for p in jax.tree.leaves(params)) == vocab * embed + gru + hidden * vocab + vocab


def test_char_lm_data_record_is_the_texts_hash_without_paths():
    family = tasks.get("char_lm")
    source = text.stdlib_source()
    record = family.data_record
    assert record["characters"] == len(source) == family.tokens.shape[0]
    assert record["sha256"] == hashlib.sha256(source).hexdigest()
    assert record["dataset"].startswith("Python 3.") and "json.decoder" in record["dataset"]
    assert "/" not in json.dumps(record)


def test_char_lm_batches_are_windows_of_the_text_and_targets_are_the_next_characters():
    family = tasks.get("char_lm", seq_len=12, batch_size=5)
    inputs, targets = family.batch(jax.random.PRNGKey(2))
    assert inputs.shape == targets.shape == (5, 12) and inputs.dtype == jnp.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    tokens = np.asarray(family.tokens).tobytes()
    for row_in, row_out in zip(np.asarray(inputs), np.asarray(targets)):
        window = bytes(row_in.astype(np.uint8)) + bytes(row_out[-1:].astype(np.uint8))
        assert window in tokens
    other, _ = family.batch(jax.random.PRNGKey(3))
    assert not np.array_equal(inputs, other)


def test_byte_tokens_map_non_ascii_to_one_id():
    ids = text.byte_tokens("a\u00e9~\n".encode())
    assert ids.tolist() == [97, text.UNKNOWN_ID, text.UNKNOWN_ID, 126, 10] and ids.dtype == np.uint8


@pytest.mark.parametrize("module", ["sys", "no_such_module_for_l2l_jax"])
def test_stdlib_source_refuses_modules_without_a_source_file(module):
    with pytest.raises(errors.DataError, match=module):
        text.stdlib_source([module])


# --- logistic regression ----------------------------------------------------


def test_logistic_tasks_differ_and_labels_are_binary():
    family = tasks.get("logistic_regression", examples=64, features=8)
    task_params, _, _ = batch_of_tasks(family, 2)
    assert task_params["x"].shape == (2, 64, 8) and task_params["y"].shape == (2, 64)
    assert not np.array_equal(task_params["x"][0], task_params["x"][1])
    assert set(np.unique(task_params["y"]).tolist()) == {0.0, 1.0}


def test_logistic_labels_follow_a_linear_rule_without_noise():
    family = tasks.get("logistic_regression", examples=200, features=4, label_noise=0.0)
    task = family.sample(jax.random.PRNGKey(0))
    # Some weight vector separates the data exactly: a long full-batch run drives the loss towards 0.
    opt = optax.adam(0.5)
    params = family.init(task, jax.random.PRNGKey(1))

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(family.loss, argnums=1)(task, p, None), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=300)
    logits = task["x"] @ params["w"] + params["b"]
    np.testing.assert_array_equal(np.asarray(logits > 0), np.asarray(task["y"] > 0.5))


def test_logistic_loss_is_full_batch_with_an_l2_penalty():
    plain = tasks.get("logistic_regression", examples=32, features=6)
    penalised = tasks.get("logistic_regression", examples=32, features=6, l2=0.3)
    task = plain.sample(jax.random.PRNGKey(0))
    params = plain.init(task, jax.random.PRNGKey(1))
    params = {"w": params["w"] + 1.0, "b": params["b"]}
    a, b = jax.random.PRNGKey(2), jax.random.PRNGKey(3)
    assert float(plain.loss(task, params, a)) == float(plain.loss(task, params, b))
    expected = plain.loss(task, params, a) + 0.15 * jnp.sum(params["w"] ** 2)
    assert float(penalised.loss(task, params, a)) == pytest.approx(float(expected), rel=1e-6)
    logits = task["x"] @ params["w"] + params["b"]
    y = task["y"]
    by_hand = -jnp.mean(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
    assert float(plain.loss(task, params, a)) == pytest.approx(float(by_hand), rel=1e-5)


def test_every_family_trains_inside_the_evaluation_loop(named_family):
    # The benchmarks unroll training in a scan, vmapped over tasks: the model must run there too.
    from l2l_jax.evaluation import loss_curves, sample_tasks

    _, family = named_family
    curves = loss_curves(optax.adam, jnp.asarray(1e-2), family, sample_tasks(family, 0, 2, "test"), 3)
    assert curves.shape == (2, 4) and np.all(np.isfinite(curves))


class FlaxCharGRU(nn.Module):
    """The character LM as flax's own ``GRUCell`` computes it, the reference for ``CharGRU``."""

    vocab_size: int
    embed_dim: int
    hidden_size: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
        cell = nn.GRUCell(self.hidden_size)
        h, outputs = jnp.zeros((x.shape[0], self.hidden_size)), []
        for t in range(x.shape[1]):
            h, y = cell(h, x[:, t])
            outputs.append(y)
        return nn.Dense(self.vocab_size)(jnp.stack(outputs, axis=1))


@pytest.mark.parametrize("vocab, embed, hidden, length", [(128, 16, 32, 16), (128, 8, 5, 3)])
def test_char_gru_has_flax_gru_cells_parameters_initial_values_and_outputs(vocab, embed, hidden, length):
    tokens = jax.random.randint(jax.random.PRNGKey(3), (4, length), 0, vocab)
    ours, reference = char_lm.CharGRU(vocab, embed, hidden), FlaxCharGRU(vocab, embed, hidden)
    # Not under vmap: flax's QR on one matrix at a time (see char_lm.orthogonal).
    params, reference_params = ours.init(jax.random.PRNGKey(0), tokens), reference.init(jax.random.PRNGKey(0), tokens)
    assert jax.tree.structure(params) == jax.tree.structure(reference_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ours.apply(params, tokens), reference.apply(params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32), (12, 5), (5, 12)])
def test_orthogonal_is_flaxs_orthogonal_init(shape):
    for seed in range(4):
        key = jax.random.PRNGKey(seed)
        q = char_lm.orthogonal(key, shape)
        small = min(shape)
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)
        np.testing.assert_allclose(q, jax.nn.initializers.orthogonal()(key, shape), atol=1e-5)


def test_char_lm_run_compiles_without_lapack_calls():
    """A vmapped batch of LAPACK calls can deadlock XLA's CPU thread pool (see ``char_lm.orthogonal``)."""
    family = tasks.get("char_lm", **FAMILIES["char_lm"][0])

    def losses(keys):
        params = jax.vmap(family.init, in_axes=(None, 0))((), keys)
        return jax.vmap(jax.value_and_grad(family.loss, argnums=1), in_axes=(None, 0, 0))((), params, keys)

    compiled = jax.jit(losses).lower(jax.random.split(jax.random.PRNGKey(0), 16)).compile().as_text()
    targets = re.findall(r'custom_call_target="([^"]*)"', compiled)
    assert not [t for t in targets if "lapack" in t.lower()], targets
