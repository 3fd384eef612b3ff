"""A small convolutional network on MNIST: strided 3x3 convolutions, then one dense layer to 10 logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.mnist import FULL_SIZE, MNISTImageFamily

#: The height and width of every convolution's kernel.
KERNEL = 3
#: The stride of every convolution (with "SAME" padding).
STRIDE = 2


class StridedConv(nn.Module):
    """``nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME")``, computed as patches times a matrix.

    Same parameters (``kernel`` (3, 3, in, features), ``bias``), initialisation and
    outputs as ``flax.linen.Conv``; written as slices and one matrix product so that
    ``jax.vmap`` over tasks (a different kernel per task) stays a batched matrix
    product instead of a grouped convolution, which XLA runs slowly on CPU.

    Attributes:
      features: output channels.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` (batch, height, width, in) → (batch, ⌈height/2⌉, ⌈width/2⌉, features)."""
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (KERNEL, KERNEL, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        out = [-(-size // STRIDE) for size in x.shape[1:3]]
        pads = [max((n - 1) * STRIDE + KERNEL - size, 0) for n, size in zip(out, x.shape[1:3])]
        x = jnp.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pads] + [(0, 0)])
        last = [STRIDE * (n - 1) + 1 for n in out]
        patches = [
            x[:, i : i + last[0] : STRIDE, j : j + last[1] : STRIDE, :] for i in range(KERNEL) for j in range(KERNEL)
        ]
        return jnp.concatenate(patches, axis=-1) @ kernel.reshape(KERNEL * KERNEL * channels, self.features) + bias


class CNN(nn.Module):
    """(batch, side, side, 1) images → 3x3 convolutions of stride 2 with ReLU → flatten → 10 logits.

    Every convolution halves the height and width ("SAME" padding: 28 → 14 → 7
    with two layers). Flax's default initialisation; the parameters are named and
    shaped as ``flax.linen.Conv``'s (``Conv_0``, ``Conv_1``, ...) and ``Dense_0``.

    Attributes:
      channels: output channels of each convolution, in order.
    """

    channels: Sequence[int] = (8, 16)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.channels):
            x = jax.nn.relu(StridedConv(width, name=f"Conv_{i}")(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _channels(value: object) -> tuple[int, ...]:
    """``value`` as a non-empty tuple of positive ints, or ``ConfigError``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"channels must be a non-empty list of positive integers, got {value!r}")
    return tuple(positive_int(f"channels[{i}]", c) for i, c in enumerate(value))


class MNISTCNNFamily(MNISTImageFamily):
    """Training a small CNN on MNIST; tasks differ by initialisation and minibatches.

    An ``MNISTImageFamily``: the data and minibatches are ``MNISTFamily``'s (pixels in
    [0, 1], batches drawn with replacement at every step), shaped as single-channel
    images; the loss is the mean softmax cross-entropy.

    Args:
      channels: output channels of each stride-2 3x3 convolution.
      batch_size: minibatch size.
      image_size: the images' side: 28, or smaller to downsample them (see ``MNISTFamily``).
      data_dir: where to look for MNIST (see ``l2l_jax.data.load_mnist_for_experiment``):
        the training split when present, else the 10,000-image test split.
      download: try downloading the training split when it is missing.

    Attributes:
      data: the ``MNISTFamily`` (default MLP options, this ``batch_size``) that loads
        the data and draws the minibatches.
      data_description: which split was found where (for messages; names paths).
      data_record: what the data was, without paths (see ``l2l_jax.tasks.mnist.data_record``).

    Raises:
      ConfigError: if ``channels`` is not a non-empty list of positive integers,
        ``batch_size`` is not a positive integer, ``image_size`` not from 1 to 28 or
        ``download`` not a bool.
      DataError: if MNIST cannot be found (or downloaded).
    """

    name = "mnist_cnn"

    def __init__(
        self,
        channels: Sequence[int] = (8, 16),
        batch_size: int = 128,
        data_dir: str | None = None,
        download: bool = False,
        image_size: int = FULL_SIZE,
    ) -> None:
        self.channels = _channels(channels)
        super().__init__(CNN(channels=self.channels), batch_size, data_dir, download, image_size)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 1)

    def config(self) -> dict[str, Any]:
        """The options that rebuild this family; ``image_size`` only when it is not 28 (as ``MNISTFamily``)."""
        config = {
            "channels": list(self.channels),
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
            "download": self.download,
        }
        return config if self.image_size == FULL_SIZE else {**config, "image_size": self.image_size}
