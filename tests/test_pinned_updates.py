"""The shipped optimizers give the same updates as before the LSTM modules were reorganised, and the
feature MLPs the updates they were shipped with.

The LSTMs' numbers below were produced by the code before the layout change (the
implementation registry moving from ``lstm_cell`` to ``lstm``), and the feature MLPs'
by the code that shipped each, with the updates jitted in float32 on a CPU. Any later change that alters what a shipped optimizer
or the worked example's linear RNN does to a gradient fails here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import optimizers, pretrained
from l2l_jax.optimizers import linear_rnn

#: A fixed gradient: a zero, a large value, tiny ones (below the log/sign cut-off
#: e^-10 and above it), and both signs.
GRADIENT = {
    "w": np.array([[0.0, 1.5, -0.25], [1000.0, -3e-4, 0.07]], np.float32),
    "b": np.array([-2.0, 1e-6], np.float32),
}


def gradient(step: int) -> dict[str, jax.Array]:
    """The fixed gradient scaled by 1, 0.6 and 0.2 at steps 0, 1 and 2."""
    return {k: jnp.asarray(v * np.float32(1.0 - 0.4 * step)) for k, v in GRADIENT.items()}


def three_updates(tx: optax.GradientTransformationExtraArgs) -> list[dict[str, np.ndarray]]:
    """The updates of three jitted steps from the initial state."""
    update = jax.jit(tx.update)
    state = tx.init(gradient(0))
    out = []
    for step in range(3):
        updates, state = update(gradient(step), state)
        out.append(jax.tree.map(np.asarray, updates))
    return out


def shipped_lstm(name: str, implementation: str) -> optax.GradientTransformationExtraArgs:
    optimizer, phi = pretrained.load_meta_params(name)
    return optimizers.get("lstm", **optimizer.config(), implementation=implementation).as_optax(phi)


def worked_example_rnn() -> optax.GradientTransformationExtraArgs:
    optimizer = linear_rnn()
    return optimizer.as_optax(optimizer.init(jax.random.key(0)))


#: (shipped optimizer, LSTM implementation) -> the updates of steps 0, 1, 2.
PINNED_LSTM: dict[tuple[str, str], list[dict[str, list[float]]]] = {
    ("quadratic-lstm", "reference"): [
        {
            "w": [-0.005042909, -0.09082067, 0.02935489, -0.2753509, -0.00928445, -0.0002900861],
            "b": [0.1192867, -0.004848742],
        },
        {
            "w": [-0.01186867, -0.1044188, 0.02503253, -0.3263434, -0.02061922, -0.006019656],
            "b": [0.1331328, -0.01163844],
        },
        {
            "w": [-0.0149074, -0.075718, 0.006960119, -0.3307044, -0.02536753, -0.008961431],
            "b": [0.09777852, -0.01473964],
        },
    ],
    ("quadratic-lstm", "fused"): [
        {
            "w": [-0.005042908, -0.09082067, 0.02935489, -0.2753509, -0.009284451, -0.0002900856],
            "b": [0.1192867, -0.004848743],
        },
        {
            "w": [-0.01186867, -0.1044188, 0.02503252, -0.3263434, -0.02061922, -0.006019656],
            "b": [0.1331328, -0.01163845],
        },
        {
            "w": [-0.0149074, -0.07571801, 0.006960114, -0.3307044, -0.02536753, -0.008961435],
            "b": [0.09777852, -0.01473964],
        },
    ],
    ("mnist-lstm", "reference"): [
        {
            "w": [0.0005170348, -0.02711796, 0.02174467, -0.02875236, 0.02175407, -0.0261925],
            "b": [0.02162473, -6.68454e-05],
        },
        {
            "w": [0.001599067, -0.0838981, 0.04223406, -0.09378258, 0.03949666, -0.07786684],
            "b": [0.04257595, 0.0007086165],
        },
        {"w": [0.002265281, -0.1518562, 0.0614247, -0.1605828, 0.0526026, -0.1449134], "b": [0.06263881, 0.00133081]},
    ],
    ("mnist-lstm", "fused"): [
        {
            "w": [0.0005170344, -0.02711796, 0.02174467, -0.02875236, 0.02175407, -0.02619249],
            "b": [0.02162473, -6.684563e-05],
        },
        {
            "w": [0.001599066, -0.0838981, 0.04223406, -0.09378258, 0.03949666, -0.07786685],
            "b": [0.04257595, 0.0007086156],
        },
        {"w": [0.002265281, -0.1518562, 0.0614247, -0.1605828, 0.0526026, -0.1449134], "b": [0.06263881, 0.001330809]},
    ],
}

#: The linear RNN with the worked example's φ = (0.1, 0.5, -1.0).
PINNED_LINEAR_RNN: list[dict[str, list[float]]] = [
    {"w": [0.0, -0.15, 0.025, -100.0, 3e-05, -0.007], "b": [0.2, -1e-07]},
    {"w": [0.0, -0.165, 0.0275, -110.0, 3.3e-05, -0.0077], "b": [0.22, -1.1e-07]},
    {"w": [0.0, -0.1125, 0.01875, -75.0, 2.25e-05, -0.00525], "b": [0.15, -7.5e-08]},
]


#: The shipped feature MLPs with parameters 0.1 x the fixed gradient.
PINNED_GENERALIST: dict[str, list[dict[str, list[float]]]] = {}
PINNED_GENERALIST["generalist-v1"] = [
    {"w": [0.0002108316, -0.01470757, 0.01331433, -0.01839615, 0.013315, -0.01470292], "b": [0.01479006, -0.01340646]},
    {"w": [0.0001616223, -0.014051, 0.01280781, -0.01793804, 0.01280772, -0.01404625], "b": [0.01417859, -0.01283856]},
    {"w": [0.0001020742, -0.01231974, 0.0112565, -0.0165101, 0.01125612, -0.01231497], "b": [0.01254236, -0.01123526]},
]

PINNED_GENERALIST["generalist"] = [
    {"w": [0.0003569739, -0.0548325, 0.04035247, -0.05250009, 0.04037001, -0.05482238], "b": [0.04444086, -0.041915]},
    {
        "w": [0.0005928577, -0.0521947, 0.03855465, -0.0506979, 0.03856478, -0.05218696],
        "b": [0.04252882, -0.03984237],
    },
    {
        "w": [0.0008195131, -0.04559433, 0.03370202, -0.04565225, 0.03371016, -0.04558806],
        "b": [0.03740241, -0.03433732],
    },
]

# v7, shipped as "generalist" until v12 took the name: the same files, so the same updates.
PINNED_GENERALIST["generalist-v7"] = [
    {
        "w": [-0.0001405479, -0.04889308, 0.03962693, -0.05802469, 0.03963756, -0.04887387],
        "b": [0.04270935, -0.04145573],
    },
    {"w": [2.477058e-05, -0.04683645, 0.03808486, -0.05623205, 0.03809066, -0.04681797], "b": [0.0409481, -0.03951616]},
    {
        "w": [0.0001554622, -0.04116267, 0.03342911, -0.05071374, 0.03343367, -0.04114028],
        "b": [0.03603061, -0.03434707],
    },
]

# v2, shipped as "generalist" until v7 took the name: the same files, so the same updates.
PINNED_GENERALIST["generalist-v2"] = [
    {"w": [-0.0007573268, -0.04588519, 0.03831095, -0.05000191, 0.03831761, -0.04587865], "b": [0.038201, -0.04068034]},
    {
        "w": [-0.0007175144, -0.0440294, 0.03682381, -0.04839409, 0.03682697, -0.04402237],
        "b": [0.03661154, -0.03906329],
    },
    {"w": [-0.0006743339, -0.03884634, 0.0322719, -0.04370362, 0.0322741, -0.03884045], "b": [0.03207766, -0.0342155]},
]

PINNED_GENERALIST["mnist-feature-mlp"] = [
    {"w": [0.0002547823, -0.0608356, 0.04063312, -0.05020793, 0.0406248, -0.06082729], "b": [0.03921346, -0.04196268]},
    {"w": [0.0003715759, -0.05848278, 0.03878799, -0.04876955, 0.03878373, -0.05847475], "b": [0.0378719, -0.04011652]},
    {"w": [0.0004137715, -0.05174385, 0.03430312, -0.0446592, 0.03429816, -0.0517366], "b": [0.03363139, -0.03496856]},
]


def assert_updates(got: list[dict[str, np.ndarray]], want: list[dict[str, list[float]]]) -> None:
    assert len(got) == len(want) == 3
    for step, (g, w) in enumerate(zip(got, want)):
        for leaf in ("w", "b"):
            assert g[leaf].dtype == np.float32
            np.testing.assert_allclose(
                g[leaf].ravel(), np.array(w[leaf]), rtol=1e-5, atol=0, err_msg=f"step {step}, leaf {leaf}"
            )


@pytest.mark.parametrize(("name", "implementation"), list(PINNED_LSTM))
def test_a_shipped_optimizer_gives_the_pinned_updates(name, implementation):
    assert_updates(three_updates(shipped_lstm(name, implementation)), PINNED_LSTM[name, implementation])


@pytest.mark.parametrize("name", list(PINNED_GENERALIST))
def test_a_shipped_generalist_gives_the_pinned_updates(name):
    # The feature MLP reads the parameters: the fixed gradient's own tree stands in for them.
    tx = pretrained.load(name)
    update = jax.jit(tx.update)
    params = {k: jnp.asarray(v) * 0.1 for k, v in GRADIENT.items()}
    state = tx.init(params)
    got = []
    for step in range(3):
        updates, state = update(gradient(step), state, params)
        got.append(jax.tree.map(np.asarray, updates))
    assert_updates(got, PINNED_GENERALIST[name])


def test_the_worked_examples_linear_rnn_gives_the_pinned_updates():
    assert_updates(three_updates(worked_example_rnn()), PINNED_LINEAR_RNN)
