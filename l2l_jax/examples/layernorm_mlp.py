"""A model of your own that the generalist never saw: an MLP with LayerNorm and GELU on 14x14 MNIST.

The worked example of specialising a shipped optimizer (``docs/guide/specialise.md``,
``notebooks/05_specialise.py``). ``make`` returns it as a ``FlaxModelFamily``, the
way a user wraps their own model, so the command line builds it by import path::

    l2l-jax meta-train --init generalist --task l2l_jax.examples.layernorm_mlp:make \\
        --horizon 200 --run-dir runs/specialised
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2l_jax.checks import positive_int
from l2l_jax.data import load_mnist_for_experiment
from l2l_jax.tasks.flax_model import FlaxModelFamily, batch_sampler
from l2l_jax.tasks.mnist import downsample, image_side


class LayerNormMLP(nn.Module):
    """Dense → LayerNorm → GELU per hidden layer, then a linear layer to 10 logits."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.gelu(nn.LayerNorm()(nn.Dense(width)(x)))
        return nn.Dense(10)(x)


def cross_entropy(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` against ``batch["y"]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def make(
    data_dir: str | None = None,
    download: bool = False,
    image_size: int = 14,
    batch_size: int = 64,
    hidden_units: int = 64,
    hidden_layers: int = 2,
) -> FlaxModelFamily:
    """Training ``LayerNormMLP`` on MNIST from fresh initialisations, as a ``FlaxModelFamily``.

    Args:
      data_dir: where to look for MNIST (see ``l2l_jax.data.load_mnist_for_experiment``):
        the training split when present, else the 10,000-image test split.
      download: try downloading the training split when it is missing.
      image_size: the images' side after area averaging (28: unchanged).
      batch_size: examples per minibatch, drawn with replacement at every step.
      hidden_units: the width of every hidden layer.
      hidden_layers: the number of hidden layers.

    Returns:
      The task family (named ``"layernorm_mlp"``).

    Raises:
      ConfigError: for an invalid option.
      DataError: if MNIST cannot be found (or downloaded).
    """
    size = image_side(image_size)
    width, depth = positive_int("hidden_units", hidden_units), positive_int("hidden_layers", hidden_layers)
    images, labels, _ = load_mnist_for_experiment(data_dir, download=bool(download))
    x = downsample(images, size).reshape(len(images), -1).astype(np.float32) / 255.0
    arrays = {"x": jnp.asarray(x), "y": jnp.asarray(labels, jnp.int32)}
    sampler = batch_sampler(arrays, positive_int("batch_size", batch_size))
    return FlaxModelFamily(LayerNormMLP((width,) * depth), sampler, cross_entropy, name="layernorm_mlp")
