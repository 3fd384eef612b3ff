"""Writes the example notebooks (01-04) from the Python source below.

The notebooks are committed without outputs and are generated, never edited by
hand: change the cells here, then run

    python notebooks/make_notebooks.py

Each notebook is a list of ``md(...)`` (Markdown) and ``code(...)`` cells. Cell ids
are numbered, so regenerating unchanged source gives byte-identical files.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat import v4

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", textwrap.dedent(text).strip("\n"))


# --------------------------------------------------------------------------------------
# 01: the worked example
# --------------------------------------------------------------------------------------

WORKED_EXAMPLE = [
    md(
        """
        # 01 · The worked example: a learned optimizer you can check by hand

        A *learned optimizer* replaces a hand-written update rule such as $g_t = -\\eta\\nabla_t$
        with a small recurrent network whose own weights $\\varphi$ are trained ("meta-trained").
        Before the paper's LSTM (notebooks 02-04), this notebook uses the smallest possible
        learned optimizer, three numbers, on the smallest possible problem, so that every number
        can be checked with pen and paper:

        * **optimizee**: $f(\\theta) = (\\theta - 5)^2$, starting from $\\theta_0 = 10$;
        * **optimizer**: a linear RNN, $h_t = \\varphi_1 \\nabla_t + \\varphi_2 h_{t-1}$, update
          $g_t = \\varphi_3 h_t$, $\\theta_{t+1} = \\theta_t + g_t$, with $\\varphi = (0.1, 0.5, -1.0)$;
        * **meta-loss**: $L(\\varphi) = f(\\theta_2)$, the loss after two steps.

        We will (1) run the two steps with the library's optax optimizer, (2) compute the exact
        meta-gradient $\\partial L / \\partial \\varphi$ with `jax.grad` and compare it with the one
        the source text *assumed*, and (3) meta-train $\\varphi$ until $\\theta_2$ lands on 5.
        """
    ),
    code(
        """
        %matplotlib inline
        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax

        import l2l_jax
        from l2l_jax import worked_example
        from l2l_jax.meta import unroll, weighted_loss

        # The numbers below are meant to match hand arithmetic: compute in float64.
        jax.config.update("jax_enable_x64", True)
        """
    ),
    md(
        """
        ## 1. Two steps, by hand and with optax

        `l2l_jax.linear_rnn()` is a learned optimizer. `init(key)` gives its meta-parameters
        $\\varphi$ (a pytree; here fixed at $(0.1, 0.5, -1.0)$) and `as_optax(phi)` turns them into
        an ordinary optax optimizer, used exactly like `optax.sgd(...)`: `init` makes the state
        (the hidden state $h_0 = 0$), `update` maps a gradient to an update.
        """
    ),
    code(
        """
        opt = l2l_jax.linear_rnn()
        phi = opt.init(jax.random.key(0))  # {'phi1': 0.1, 'phi2': 0.5, 'phi3': -1.0}
        tx = opt.as_optax(phi)             # an optax.GradientTransformation
        print(phi)


        def f(theta):
            return (theta - 5.0) ** 2


        theta = jnp.array(10.0)
        state = tx.init(theta)  # h_0 = 0
        print(f"start   θ0 = {float(theta):.1f}")
        for t in (1, 2):
            grad = jax.grad(f)(theta)                      # ∇ = 2(θ − 5)
            update, state = tx.update(grad, state, theta)  # h = φ1·∇ + φ2·h_prev,  g = φ3·h
            theta = optax.apply_updates(theta, update)     # θ ← θ + g
            print(f"step {t}  ∇ = {float(grad):4.1f}   h = {float(state.hidden):3.1f}   "
                  f"g = {float(update):4.1f}   θ{t} = {float(theta):.1f}")
        print(f"meta-loss L(φ) = f(θ2) = ({float(theta):.1f} − 5)² = {float(f(theta)):.2f}")
        """
    ),
    md(
        """
        By hand: step 1 sees $\\nabla = 2(10-5) = 10$, so $h = 0.1 \\cdot 10 + 0.5 \\cdot 0 = 1$,
        $g = -1$ and $\\theta_1 = 9$. Step 2 sees $\\nabla = 8$, so $h = 0.8 + 0.5 = 1.3$,
        $g = -1.3$ and $\\theta_2 = 7.7$. The meta-loss is $2.7^2 = 7.29$.

        ## 2. The meta-gradient, with `jax.grad`

        To improve $\\varphi$ we need $\\partial L / \\partial \\varphi$, a derivative *through* the
        optimizer's own steps. In JAX we write the meta-loss as a function of $\\varphi$ and
        differentiate it. `l2l_jax.meta.unroll` runs the inner loop as one `lax.scan` and returns
        the losses $f(\\theta_0), \\dots, f(\\theta_T)$; `weighted_loss(losses, "final")` keeps
        $f(\\theta_T)$. The optax optimizer is built from $\\varphi$ *inside* the function, so the
        gradient reaches $\\varphi$ through every step.

        `first_order=True` is the paper's approximation: it treats the gradients $\\nabla_t$ the
        optimizer reads as constants (`stop_gradient`), dropping second derivatives of $f$.
        `first_order=False` gives the exact meta-gradient.
        """
    ),
    code(
        """
        def meta_loss(phi, first_order=False, num_steps=2):
            \"\"\"(θ_T − 5)² after num_steps linear-RNN steps from θ0 = 10; phi = (φ1, φ2, φ3).\"\"\"
            tx = l2l_jax.linear_rnn().as_optax(dict(phi1=phi[0], phi2=phi[1], phi3=phi[2]))
            theta0 = jnp.array(10.0)
            _, _, losses = unroll(tx, lambda th, key: (th - 5.0) ** 2, theta0, tx.init(theta0),
                                  jax.random.key(0), num_steps=num_steps, first_order=first_order)
            return weighted_loss(losses, "final")  # f(θ_T)


        phi0 = jnp.array([0.1, 0.5, -1.0])
        loss0, exact = jax.value_and_grad(meta_loss)(phi0)
        first_order = jax.grad(lambda p: meta_loss(p, first_order=True))(phi0)
        assumed = jnp.array([15.0, 8.0, -10.0])  # what the source text assumed

        print(f"meta-loss L(φ0)          = {float(loss0):.2f}")
        print(f"exact (second order)     = {np.round(np.asarray(exact), 4)}")
        print(f"first order (paper)      = {np.round(np.asarray(first_order), 4)}")
        print(f"assumed by the source    = {np.asarray(assumed)}")
        cosine = jnp.dot(assumed, exact) / (jnp.linalg.norm(assumed) * jnp.linalg.norm(exact))
        print(f"cosine(assumed, exact)   = {float(cosine):.3f}")
        """
    ),
    md(
        """
        **The assumed gradient has the wrong sign in all three components.** The chain rule
        confirms `jax.grad`. Write $\\theta_1 = 10 + 10\\varphi_1\\varphi_3$,
        $\\nabla_2 = 2(\\theta_1 - 5)$ and $\\theta_2 = \\theta_1 + \\varphi_3(\\varphi_1\\nabla_2 +
        10\\varphi_1\\varphi_2)$. Then $\\partial L/\\partial\\theta_2 = 2(7.7 - 5) = 5.4$, and:

        | | $\\partial\\theta_2/\\partial\\varphi_1$ | $\\partial\\theta_2/\\partial\\varphi_2$ | $\\partial\\theta_2/\\partial\\varphi_3$ | $\\partial L/\\partial\\varphi$ |
        | --- | --- | --- | --- | --- |
        | first order ($\\nabla_2 = 8$ held fixed) | $-10 - 13 = -23$ | $-1$ | $1 + 1.3 = 2.3$ | $(-124.2, -5.4, 12.42)$ |
        | exact (also $\\partial\\nabla_2/\\partial\\varphi = 20\\,\\partial\\theta_1/\\partial\\varphi$) | $-23 + 2 = -21$ | $-1$ | $2.3 - 0.2 = 2.1$ | $(-113.4, -5.4, 11.34)$ |

        Increasing $\\varphi_1$ (a larger step) makes $\\theta_2$ *smaller*, i.e. closer to 5, so
        $\\partial L/\\partial\\varphi_1$ must be negative, not $+15$.

        ## 3. A meta-step along each gradient

        One step of gradient descent on $\\varphi$ with meta-learning rate 0.01:
        """
    ),
    code(
        """
        for name, g in (("assumed", assumed), ("exact", exact)):
            phi_new = phi0 - 0.01 * g
            print(f"{name:8s} step: φ → {np.round(np.asarray(phi_new), 4)},  "
                  f"meta-loss {float(loss0):.2f} → {float(meta_loss(phi_new)):.2f}")

        # The meta-loss along both directions, for meta-learning rates from 0 to 0.02.
        rates = jnp.linspace(0.0, 0.02, 81)
        along = jax.vmap(lambda lr, g: meta_loss(phi0 - lr * g), in_axes=(0, None))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(rates, along(rates, assumed), label="along the assumed gradient")
        ax.plot(rates, along(rates, exact), label="along the exact gradient")
        ax.axvline(0.01, color="gray", linestyle=":", label="η = 0.01")
        ax.set_xlabel("meta-learning rate η")
        ax.set_ylabel("meta-loss L(φ0 − η·grad)")
        ax.set_yscale("log")
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        The assumed step goes **uphill** (7.29 → 37.57), and further along it the meta-loss only
        grows. The exact gradient points downhill, but it is steep in $\\varphi_1$: along it the
        meta-loss reaches 0 already at $\\eta \\approx 0.001$ ($\\theta_2$ is a polynomial in
        $\\varphi$, so it crosses 5 twice), and at $\\eta = 0.01$ the step overshoots to 58.73.
        Repeated smaller steps fix that: below, Adam does.

        ## 4. Meta-training $\\varphi$

        We run Adam (learning rate 0.01) on $\\varphi$ with the exact meta-gradient, 200 times.
        The whole meta-step (unroll, `jax.grad`, Adam) is one `jax.jit`-compiled function.
        """
    ),
    code(
        """
        meta_opt = optax.adam(0.01)


        @jax.jit
        def meta_step(phi, meta_state):
            loss, grad = jax.value_and_grad(meta_loss)(phi)
            updates, meta_state = meta_opt.update(grad, meta_state, phi)
            return optax.apply_updates(phi, updates), meta_state, loss


        phi, meta_state = phi0, meta_opt.init(phi0)
        meta_losses = []
        for _ in range(200):
            phi, meta_state, loss = meta_step(phi, meta_state)
            meta_losses.append(float(loss))
        print(f"meta-loss: {meta_losses[0]:.2f} → {float(meta_loss(phi)):.2e}")
        print(f"φ: {np.asarray(phi0)} → {np.round(np.asarray(phi), 4)}")

        # The library ships the same loop as l2l_jax.worked_example.meta_train:
        lib_losses, lib_phis = worked_example.meta_train()
        print("same as l2l_jax.worked_example.meta_train():", np.allclose(lib_phis[-1], phi))
        """
    ),
    md(
        """
        Finally, the trajectories $\\theta_t$ before and after meta-training. We run both
        optimizers for 10 steps although the meta-loss only ever looked at $\\theta_2$.
        """
    ),
    code(
        """
        def trajectory(phi, num_steps=10):
            tx = l2l_jax.linear_rnn().as_optax(dict(phi1=phi[0], phi2=phi[1], phi3=phi[2]))
            theta = jnp.array(10.0)
            state, out = tx.init(theta), [float(theta)]
            for _ in range(num_steps):
                update, state = tx.update(jax.grad(f)(theta), state, theta)
                theta = optax.apply_updates(theta, update)
                out.append(float(theta))
            return np.array(out)


        before, after = trajectory(phi0), trajectory(phi)
        print("θ0..θ2 before:", np.round(before[:3], 4), "  after:", np.round(after[:3], 4))

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
        ax0.plot(np.arange(1, len(meta_losses) + 1), meta_losses)
        ax0.set_yscale("log")
        ax0.set_xlabel("meta-step")
        ax0.set_ylabel("meta-loss  (θ2 − 5)²")
        ax0.set_title("Adam on the exact meta-gradient")
        ax0.grid(True, which="both", alpha=0.3)

        steps = np.arange(len(before))
        ax1.plot(steps, before, "o-", label="φ0 = (0.1, 0.5, −1.0)")
        ax1.plot(steps, after, "o-", label="φ after meta-training")
        ax1.axhline(5.0, color="gray", linestyle=":", label="minimum θ = 5")
        ax1.axvspan(-0.2, 2.2, color="gold", alpha=0.15, label="steps the meta-loss sees")
        ax1.set_xlabel("inner step t")
        ax1.set_ylabel("θ_t")
        ax1.set_title("θ_t before and after")
        ax1.legend(fontsize=8)
        plt.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        After meta-training, $\\theta_2 = 5$ to within $10^{-4}$: the meta-loss is essentially 0.
        After step 2 the trained optimizer overshoots, because nothing in the meta-loss asked it
        to stay put. That is why the paper's meta-loss is the *sum* of the losses over a long run
        (100 steps) rather than the last one; notebook 02 does exactly that with an LSTM.

        The same numbers come from the command line: `l2l-jax seed-example` (or `--json`).
        """
    ),
]

# --------------------------------------------------------------------------------------
# 02: quadratics
# --------------------------------------------------------------------------------------

QUADRATICS = [
    md(
        """
        # 02 · Meta-training the LSTM optimizer on quadratics

        The paper's first experiment (Andrychowicz et al., 2016, §3.1): learn an optimizer for
        random 10-dimensional quadratics $f(\\theta) = \\lVert W\\theta - y \\rVert^2$, with $W$ and
        $y$ drawn from a standard normal distribution.

        * **The optimizer** is a small LSTM (2 layers of 20 units) applied to *each coordinate*
          separately, with weights shared across coordinates. It reads a preprocessed gradient
          and outputs that coordinate's update, so the same $\\varphi$ works for any number of
          parameters.
        * **Meta-training** unrolls 100 optimization steps on a batch of random quadratics, in
          truncations of 20 steps. After each truncation, $\\varphi$ takes an Adam step on the
          meta-gradient of the meta-loss $\\sum_t f(\\theta_t)$ (truncated backpropagation
          through time).

        Here we meta-train with a small budget (600 meta-steps, about half a minute on 2 CPU
        cores), compare with hand-designed optimizers whose learning rates are tuned, and look at
        the shipped, longer-trained `quadratic-lstm`.
        """
    ),
    code(
        """
        %matplotlib inline
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        from IPython.display import Markdown, display

        import l2l_jax
        from l2l_jax import MetaTrainConfig, meta_train
        from l2l_jax.evaluation import compare_with_baselines
        """
    ),
    md(
        """
        ## The task family

        A *task family* samples tasks: `sample(key)` draws a task's parameters (here $W$ and
        $y$), `init(task, key)` draws the starting point $\\theta_0$ (small, $N(0, 0.01^2)$) and
        `loss(task, theta, key)` evaluates $f$ (the key would draw a minibatch for stochastic
        tasks; quadratics ignore it).
        """
    ),
    code(
        """
        family = l2l_jax.tasks.get("quadratic")  # dim=10
        task = family.sample(jax.random.key(0))
        theta0 = family.init(task, jax.random.key(1))
        print(family)
        print({k: v.shape for k, v in task.items()}, "θ0:", theta0.shape)
        print("f(θ0) =", float(family.loss(task, theta0, jax.random.key(2))))
        """
    ),
    md(
        """
        ## Meta-training

        `MetaTrainConfig` holds every setting; the defaults follow the paper (LSTM preset
        `"paper"`, horizon 100, truncation 20, Adam on $\\varphi$). We shorten the run: 600
        meta-steps on batches of 64 quadratics, meta-learning rate $10^{-2}$ decayed with a cosine
        schedule. Every 100 meta-steps $\\varphi$ is validated on 64 held-out quadratics (full
        100-step runs) and the best $\\varphi$ is kept.
        """
    ),
    code(
        """
        config = MetaTrainConfig(
            task="quadratic",
            optimizer="lstm",
            num_meta_steps=600,
            batch_size=64,
            meta_lr=1e-2,
            meta_lr_schedule="cosine",
            validate_every=100,
            num_val_tasks=64,
            seed=0,
        )
        t0 = time.perf_counter()
        result = meta_train(config, progress=True)  # pass a run directory to keep checkpoints
        print(f"meta-training took {time.perf_counter() - t0:.0f} s; "
              f"best validation meta-loss {result.best_val:.1f}")
        """
    ),
    md(
        """
        `result.history` has one row per meta-step. The training meta-loss is noisy (every
        meta-step sees other quadratics, and the five truncations of a run have different loss
        levels); the validation meta-loss, on fixed held-out tasks, shows the trend.
        """
    ),
    code(
        """
        steps = [r["step"] for r in result.history]
        val = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        ax.plot(steps, [r["meta_loss"] for r in result.history], lw=0.7, alpha=0.6,
                label="meta-loss (training batch, one truncation)")
        ax.plot(*zip(*val), "o-", label="validation meta-loss (100-step runs)")
        ax.set_yscale("log")
        ax.set_xlabel("meta-step")
        ax.set_ylabel("meta-loss (sum of losses)")
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        plt.show()
        """
    ),
    md(
        """
        ## Comparison with tuned baselines

        `compare_with_baselines` tunes the learning rate of SGD, momentum, NAG, RMSprop and Adam
        on 64 held-out "tune" quadratics (on a 7-point grid from $10^{-3}$ to 1; the library's
        default grid has 21 points), then runs every optimizer for 100 steps on 64 other "test"
        quadratics. Besides the optimizer we just trained, we include the shipped
        `quadratic-lstm` (trained for 4000 meta-steps on batches of 128).
        `pretrained.load_meta_params` returns the learned optimizer and its $\\varphi$.
        """
    ),
    code(
        """
        shipped = l2l_jax.pretrained.load_meta_params("quadratic-lstm")  # (optimizer, φ)
        t0 = time.perf_counter()
        comparison = compare_with_baselines(
            {
                "learned lstm (this notebook)": (result.optimizer, result.meta_params),
                "learned lstm (shipped)": shipped,
            },
            family,
            num_steps=100,
            num_tune_tasks=64,
            num_test_tasks=64,
            grid=tuple(float(lr) for lr in np.logspace(-3, 0, 7)),
            progress=False,
        )
        print(f"comparison took {time.perf_counter() - t0:.0f} s")
        assert not any(t.at_edge for t in comparison.tunings.values()), "widen the grid"
        display(Markdown(comparison.table()))
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, curves in comparison.curves.items():
            mean = curves.mean(axis=0)
            learned = name.startswith("learned")
            ax.plot(mean, lw=2.5 if learned else 1.2, ls="-" if learned else "--",
                    label=f"{name}" + ("" if learned else f" (lr {comparison.learning_rates[name]:.3g})"))
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("mean loss over 64 test quadratics")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        plt.show()
        """
    ),
    md(
        """
        Even this short run is competitive with the tuned baselines, and the shipped optimizer is
        better still. The mean final loss is dominated by a few ill-conditioned quadratics that
        no optimizer solves in 100 steps; the median column tells the typical case. The full-size
        result, on 256 test quadratics with the 21-point grid, is in
        [`benchmarks/results/quadratic.md`](../benchmarks/results/quadratic.md).

        ## The shipped optimizer is an optax optimizer

        `l2l_jax.pretrained.load(name)` returns a ready `optax` transformation, usable in any
        training loop. Here it is on one new quadratic, beside Adam with the tuned learning rate:
        """
    ),
    code(
        """
        task = family.sample(jax.random.key(42))
        theta0 = family.init(task, jax.random.key(43))


        def loss_fn(theta):
            return family.loss(task, theta, None)  # quadratics need no minibatch key


        def run(tx, num_steps=100):
            @jax.jit
            def step(theta, state):
                loss, grad = jax.value_and_grad(loss_fn)(theta)
                updates, state = tx.update(grad, state, theta)
                return optax.apply_updates(theta, updates), state, loss

            theta, state, losses = theta0, tx.init(theta0), []
            for _ in range(num_steps):
                theta, state, loss = step(theta, state)
                losses.append(float(loss))
            return losses + [float(loss_fn(theta))]


        runs = {
            "learned lstm (shipped)": run(l2l_jax.pretrained.load("quadratic-lstm")),
            f"adam (lr {comparison.learning_rates['adam']:.3g})": run(optax.adam(comparison.learning_rates["adam"])),
        }
        for name, losses in runs.items():
            print(f"{name:24s} f(θ0) = {losses[0]:.3g}   f(θ100) = {losses[-1]:.3g}")
        """
    ),
]

# --------------------------------------------------------------------------------------
# 03: MNIST
# --------------------------------------------------------------------------------------

MNIST = [
    md(
        """
        # 03 · MNIST: the paper's experiment at laptop size

        The paper's second experiment (§3.2) trains a small neural network: an MLP with one
        hidden layer of 20 sigmoid units on MNIST, minibatches of 128. The learned optimizer (the
        coordinatewise LSTM of notebook 02) is meta-trained on 200-step runs of this MLP from
        random initialisations, then compared with tuned hand-designed optimizers on *new*
        initialisations.

        The full experiment, `python benchmarks/mnist.py --ship` (thousands of meta-steps, about
        45 minutes of meta-training on 2 CPU cores), ships with the package as `mnist-lstm`.
        This notebook

        1. looks at the task,
        2. runs a few dozen meta-steps to show the mechanics,
        3. compares the shipped optimizer with tuned Adam, RMSprop, SGD and NAG.
        """
    ),
    code(
        """
        %matplotlib inline
        import os
        import time

        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Markdown, display

        import l2l_jax
        from l2l_jax import MetaTrainConfig, meta_train
        from l2l_jax.evaluation import BASELINES, learned_curves, loss_curves, sample_tasks

        # A folder holding the MNIST .gz files (in it or in its mnist/ subfolder), or None.
        # None: download them (once) into ~/.cache/l2l_jax/mnist. Under pytest this is the
        # repository's small test fixture (300 images).
        DATA_DIR = os.environ.get("L2L_JAX_DATA_DIR")
        DOWNLOAD = DATA_DIR is None
        """
    ),
    md(
        """
        ## The task

        `l2l_jax.tasks.get("mnist")` is the paper's MLP task family. A task is "train a freshly
        initialised MLP"; `loss(task, params, key)` draws a minibatch of 128 images (with
        replacement) from `key` and returns the cross-entropy. The family uses the 60,000-image
        training split when it can find it (in `data_dir`, `$L2L_JAX_DATA_DIR` or the user
        cache directory); otherwise it falls back to the 10,000-image test split and says so in
        `data_description`. It downloads only when asked to (`download=True`).
        """
    ),
    code(
        """
        family = l2l_jax.tasks.get("mnist", data_dir=DATA_DIR, download=DOWNLOAD)  # 784-20-10, sigmoid, batch 128
        print(family.data_description)

        params = family.init((), jax.random.key(0))
        print(jax.tree.map(jnp.shape, params))
        print("parameters:", sum(p.size for p in jax.tree.leaves(params)))
        print("loss at initialisation:", float(family.loss((), params, jax.random.key(1))))
        """
    ),
    md(
        """
        ## Meta-training, briefly

        Each meta-step unrolls 20 training steps of one MLP (`batch_size=1`: one task per
        meta-step) and backpropagates through them to $\\varphi$. `remat=True` recomputes each
        inner step during the backward pass instead of storing its activations, which keeps
        memory small. Every 10 meta-steps $\\varphi$ is validated on 2 held-out initialisations
        (full 100-step runs).

        With only 40 meta-steps we use the LSTM preset `"deepmind"` (the settings of DeepMind's
        released code: its outputs are scaled by 0.01 instead of 0.1). Its small initial steps
        let progress show up within a few dozen meta-steps; with the `"paper"` preset the first
        meta-steps learn to "not move" (the loss stays at $\\ln 10 \\approx 2.30$), and a run this
        short does not get past that. The shipped `mnist-lstm` uses the paper's preset and about
        a hundred times more meta-steps. **Forty meta-steps will not give an optimizer that beats
        Adam**; the point is the mechanics.
        """
    ),
    code(
        """
        config = MetaTrainConfig(
            task="mnist",
            optimizer="lstm",
            optimizer_options={"preset": "deepmind"},
            num_meta_steps=40,
            horizon=100,
            truncation=20,
            batch_size=1,
            meta_lr=1e-2,
            remat=True,
            validate_every=10,
            num_val_tasks=2,
            seed=0,
        )
        t0 = time.perf_counter()
        small = meta_train(config, family=family, progress=True)  # reuse the loaded data
        print(f"{config.num_meta_steps} meta-steps took {time.perf_counter() - t0:.0f} s")
        """
    ),
    md(
        """
        Each meta-loss is the sum of 20 training losses of one truncation. Five consecutive
        meta-steps make one 100-step run of one MLP (then a new MLP is drawn), so the loss drops
        *within* each run (the colours) as the MLP learns; the validation meta-loss (sum over
        100 steps on fixed held-out initialisations; $100 \\cdot \\ln 10 \\approx 230$ means "no
        progress") shows whether $\\varphi$ itself improves.
        """
    ),
    code(
        """
        hist = small.history
        steps = np.array([r["step"] for r in hist])
        meta = np.array([r["meta_loss"] for r in hist])
        truncation_index = (steps - 1) % (config.horizon // config.truncation)

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
        ax0.plot(steps, meta, color="lightgray", lw=0.8)
        sc = ax0.scatter(steps, meta, c=truncation_index + 1, cmap=plt.get_cmap("viridis", 5), s=18)
        fig.colorbar(sc, ax=ax0, label="truncation within the 100-step run", ticks=range(1, 6))
        ax0.set_xlabel("meta-step")
        ax0.set_ylabel("meta-loss (sum of 20 losses)")
        ax0.set_title("training meta-loss")
        val = [(r["step"], r["val_loss"]) for r in hist if "val_loss" in r]
        ax1.plot(*zip(*val), "o-")
        ax1.axhline(100 * np.log(10), color="gray", ls=":", label="100 · ln 10 (no progress)")
        ax1.set_xlabel("meta-step")
        ax1.set_ylabel("validation meta-loss (sum of 100 losses)")
        ax1.set_title("validation")
        ax1.legend()
        plt.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        ## The shipped, full-size optimizer

        `pretrained.info` returns the metadata saved next to $\\varphi$ (`optimizer.json`):
        architecture, task and training configuration. (`benchmarks/mnist.py` meta-trains in two
        stages, with 20-step and then 100-step truncations of 200-step runs; `training_config`
        records the second, `stage1` the first.)
        `pretrained.load_meta_params` gives the learned optimizer and its $\\varphi$, for the
        evaluation helpers; `pretrained.load` gives a ready optax optimizer (notebook 04).
        """
    ),
    code(
        """
        info = l2l_jax.pretrained.info("mnist-lstm")
        cfg = info["training_config"]
        print(f"{info['optimizer']} {info['optimizer_config']}")
        print(f"task {info['task']} {info['task_config']}")
        print(f"training_config: {info['meta_steps']} meta-steps (best φ on validation at {info['best_step']}), "
              f"{cfg['batch_size']} task per meta-step, horizon {cfg['horizon']}, truncation {cfg['truncation']}, "
              f"meta_lr {cfg['meta_lr']} ({cfg['meta_lr_schedule']})")
        shipped_opt, shipped_phi = l2l_jax.pretrained.load_meta_params("mnist-lstm")
        """
    ),
    md(
        """
        ## Comparison on fresh initialisations

        `sample_tasks` draws held-out initialisations (and minibatch keys) from streams separate
        from meta-training's. Each baseline's learning rate is tuned on 8 "tune"
        initialisations (lowest mean loss after 100 steps, on a small grid of 4 rates per
        optimizer), and every optimizer then trains 8 other "test" initialisations for 100
        steps. `loss_curves(make_tx, hyper, ...)` compiles once per optimizer and reuses the
        compiled code for every learning rate.
        """
    ),
    code(
        """
        num_steps = 100
        tune = sample_tasks(family, seed=2, num_tasks=8, stream="tune")
        test = sample_tasks(family, seed=2, num_tasks=8, stream="test")
        grids = {  # half-decade steps around each optimizer's usual range
            "adam": (0.003, 0.01, 0.03, 0.1),
            "rmsprop": (0.003, 0.01, 0.03, 0.1),
            "sgd": (0.3, 1.0, 3.0, 10.0),
            "nag": (0.1, 0.3, 1.0, 3.0),
        }

        t0 = time.perf_counter()
        curves, lrs = {}, {}
        curves["learned lstm (shipped)"] = learned_curves(shipped_opt, shipped_phi, family, test, num_steps)
        curves["learned lstm (40 meta-steps)"] = learned_curves(small.optimizer, small.meta_params, family, test,
                                                               num_steps)
        for name, grid in grids.items():
            make_tx = BASELINES[name]  # learning rate -> optax optimizer
            scores = [loss_curves(make_tx, jnp.float32(lr), family, tune, num_steps)[:, -1].mean() for lr in grid]
            scores = [s if np.isfinite(s) else np.inf for s in scores]
            lrs[name] = grid[int(np.argmin(scores))]
            if lrs[name] in (grid[0], grid[-1]):
                print(f"note: the best {name} rate is at the edge of its grid")
            curves[name] = loss_curves(make_tx, jnp.float32(lrs[name]), family, test, num_steps)
        print(f"evaluation took {time.perf_counter() - t0:.0f} s; tuned learning rates: {lrs}")

        rows = sorted(curves.items(), key=lambda kv: kv[1][:, -1].mean())
        table = ["| optimizer | lr | mean loss at step 100 | ± s.e. | mean loss over the run |", "| --- | --- | --- | --- | --- |"]
        for name, c in rows:
            final = c[:, -1]
            table.append(f"| {name} | {lrs.get(name, 'learned')} | {final.mean():.4f} "
                         f"| {final.std() / np.sqrt(len(final)):.4f} | {c[:, 1:].mean():.4f} |")
        display(Markdown("\\n".join(table)))
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, c in curves.items():
            learned = name.startswith("learned")
            label = name if learned else f"{name} (lr {lrs[name]:g})"
            ax.plot(c.mean(axis=0), lw=2.5 if learned else 1.2, ls="-" if learned else "--", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (minibatch), mean of 8 inits")
        ax.set_title("MNIST MLP 784-20-10, sigmoid")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        plt.show()
        """
    ),
    md(
        """
        The shipped optimizer brings the loss down fastest over the first few dozen steps. With
        only 8 initialisations, differences at step 100 of a few hundredths are within noise (see
        the ± s.e. column); the losses are minibatch losses, as in the paper's figures. The
        40-meta-step optimizer trains the MLP, slowly.

        In the full benchmark the shipped optimizer beats tuned Adam at steps 100 and 200, ties
        tuned NAG at step 100 and loses to it at step 200. The full result (48 test
        initialisations, paired differences, baselines tuned on finer grids separately for
        100 and 200 steps, and the paper's generalisation tests to 40 hidden units, two hidden
        layers and ReLU) is in [`benchmarks/results/mnist.md`](../benchmarks/results/mnist.md).

        Notebook 04 uses the shipped optimizer in ordinary Flax training loops.
        """
    ),
]

# --------------------------------------------------------------------------------------
# 04: Flax drop-in
# --------------------------------------------------------------------------------------

FLAX_DROPIN = [
    md(
        """
        # 04 · A learned optimizer as a drop-in optax optimizer in Flax

        `l2l_jax.pretrained.load("mnist-lstm")` returns an ordinary
        `optax.GradientTransformation`, so it goes wherever an optax optimizer goes. This
        notebook trains the paper's MNIST MLP (784-20-10, sigmoid, minibatches of 128) with it

        * (a) in a **Flax NNX** loop, with `nnx.Optimizer`,
        * (b) in a **Flax linen** loop, with `flax.training.train_state.TrainState`,

        each beside Adam (learning rate 0.03) in the same loop, and (c) saves and restores the
        optimizer state mid-run.

        One difference from Adam: the learned optimizer's state is an LSTM hidden state for
        *every parameter* (2 layers × 20 units × (h, c) = 80 numbers per parameter, where Adam
        keeps 2), so it suits small and medium models.
        """
    ),
    code(
        """
        %matplotlib inline
        import os

        import flax
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        from flax import nnx
        from flax.training import train_state

        import l2l_jax
        from l2l_jax.data import as_float_arrays, load_mnist_for_experiment

        # A folder holding the MNIST .gz files (in it or in its mnist/ subfolder), or None.
        # None: download them (once) into ~/.cache/l2l_jax/mnist. Under pytest this is the
        # repository's small test fixture (300 images).
        DATA_DIR = os.environ.get("L2L_JAX_DATA_DIR")
        DOWNLOAD = DATA_DIR is None
        """
    ),
    md(
        """
        ## Data and optimizers

        The data: MNIST as float32 arrays, the 60,000-image training split when it is found or
        can be downloaded, else the 10,000-image test split (the printed description says which).
        Both loops draw the same minibatches.

        The optimizers: we clip the gradient's global norm to 1 before either optimizer, with
        `optax.chain`, to show that the learned optimizer composes like any other.
        """
    ),
    code(
        """
        images, labels, description = load_mnist_for_experiment(DATA_DIR, download=DOWNLOAD)
        x, y = as_float_arrays(images, labels)  # (N, 784) in [0, 1], (N,) int32
        print(description)

        STEPS, BATCH = 200, 128
        batches = np.random.default_rng(0).integers(0, len(x), size=(STEPS, BATCH))  # indices

        learned = optax.chain(optax.clip_by_global_norm(1.0), l2l_jax.pretrained.load("mnist-lstm"))
        adam = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.03))
        optimizers = {"learned lstm (mnist-lstm)": learned, "adam (lr 0.03)": adam}
        """
    ),
    md(
        """
        ## (a) Flax NNX

        The usual NNX loop: `nnx.Optimizer(model, tx, wrt=nnx.Param)` holds the optimizer state,
        and a `nnx.jit`-compiled step calls `optimizer.update(model, grads)`. Passing the loss as
        `optimizer.update(model, grads, value=loss)` is accepted too (optax's "extra args",
        needed by e.g. line searches); it is optional, and the LSTM ignores it.
        """
    ),
    code(
        """
        class MLP(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.hidden = nnx.Linear(784, 20, rngs=rngs)
                self.out = nnx.Linear(20, 10, rngs=rngs)

            def __call__(self, x):
                return self.out(jax.nn.sigmoid(self.hidden(x)))


        def nnx_loss(model, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


        @nnx.jit
        def nnx_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
            optimizer.update(model, grads, value=loss)  # `value=loss` is optional
            return loss


        nnx_losses = {}
        for name, tx in optimizers.items():
            model = MLP(nnx.Rngs(0))  # same initialisation for both optimizers
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            nnx_losses[name] = np.array([float(nnx_step(model, optimizer, x[b], y[b])) for b in batches])
            print(f"{name:26s} steps {int(optimizer.step[...])}, final minibatch loss {nnx_losses[name][-1]:.3f}")
        """
    ),
    md(
        """
        ## (b) Flax linen

        The usual linen loop: `TrainState.create(apply_fn=..., params=..., tx=tx)` and
        `state.apply_gradients(grads=grads)` in a `jax.jit`-compiled step.
        """
    ),
    code(
        """
        class LinenMLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(10)(nn.sigmoid(nn.Dense(20)(x)))


        def make_state(tx, seed=0):
            model = LinenMLP()
            params = model.init(jax.random.key(seed), jnp.zeros((1, 784)))["params"]
            return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


        @jax.jit
        def linen_step(state, x, y):
            def loss_fn(params):
                logits = state.apply_fn({"params": params}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss


        def train(state, batch_indices):
            losses = []
            for b in batch_indices:
                state, loss = linen_step(state, x[b], y[b])
                losses.append(float(loss))
            return state, np.array(losses)


        linen_losses = {}
        for name, tx in optimizers.items():
            final_state, linen_losses[name] = train(make_state(tx), batches)
            print(f"{name:26s} steps {int(final_state.step)}, final minibatch loss {linen_losses[name][-1]:.3f}")
        """
    ),
    code(
        """
        def smooth(v, k=10):
            return np.convolve(v, np.ones(k) / k, mode="valid")


        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        for ax, (title, runs) in zip(axes, (("(a) Flax NNX", nnx_losses), ("(b) Flax linen", linen_losses))):
            for name, losses in runs.items():
                ax.plot(losses, alpha=0.25)
                ax.plot(np.arange(9, STEPS), smooth(losses), color=ax.lines[-1].get_color(), label=name)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[0].set_ylabel("minibatch loss (10-step average)")
        plt.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        The two loops behave alike (their MLPs start from different random weights). The
        learned optimizer is faster over the first few dozen steps; Adam with a good learning
        rate ends lower by step 200. `mnist-lstm` was meta-trained on runs of this very MLP and
        is competitive with tuned baselines, not better; see
        [`benchmarks/results/mnist.md`](../benchmarks/results/mnist.md) and notebook 03.
        """
    ),
    md(
        """
        ## (c) Saving and restoring the optimizer state

        The learned optimizer's state is a pytree of arrays (`LSTMState(h, c)` inside optax's
        chain state), so the usual Flax serialization works: `flax.serialization.to_bytes` on
        the `TrainState` (step, params and optimizer state), `from_bytes` into a freshly built
        state of the same structure. We train 100 steps, save, restore into a new state, train
        the remaining 100 steps, and check that the losses are identical to the uninterrupted
        200-step run of (b).
        """
    ),
    code(
        """
        name = "learned lstm (mnist-lstm)"
        state, first_half = train(make_state(learned), batches[:100])
        blob = flax.serialization.to_bytes(state)  # bytes: write them to a file
        print(f"checkpoint: {len(blob) / 1024:.0f} KiB after step {int(state.step)}")

        template = make_state(learned, seed=123)  # e.g. in a new process: same structure, any values
        restored = flax.serialization.from_bytes(template, blob)
        print("LSTM hidden state restored:", type(restored.opt_state[1]).__name__,
              all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored))))

        _, second_half = train(restored, batches[100:])
        resumed = np.concatenate([first_half, second_half])
        print("resumed run == uninterrupted run:", np.array_equal(resumed, linen_losses[name]))
        assert np.array_equal(resumed, linen_losses[name])
        """
    ),
    md(
        """
        The restored state continues bit for bit. Resetting the optimizer state instead (e.g.
        `tx.init(params)` after loading only the parameters) would restart the LSTM from a zero
        hidden state, like restarting Adam without its moments.

        To meta-train a learned optimizer on *your own* Flax model, see
        `l2l_jax.tasks.FlaxModelFamily` and `meta_train(config, family=...)`.
        """
    ),
]

NOTEBOOKS = {
    "01_worked_example.ipynb": WORKED_EXAMPLE,
    "02_quadratics.ipynb": QUADRATICS,
    "03_mnist.ipynb": MNIST,
    "04_flax_dropin.ipynb": FLAX_DROPIN,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A v4 notebook with no outputs, numbered cell ids and the python3 kernel."""
    nb = v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        nbformat.write(build(cells), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
