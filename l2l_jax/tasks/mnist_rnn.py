"""A recurrent network on MNIST: a GRU reads each image row by row, and a dense layer maps its last state to 10 logits."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from l2l_jax.checks import positive_int
from l2l_jax.tasks.char_lm import GRU
from l2l_jax.tasks.mnist import FULL_SIZE, MNISTImageFamily


class RowGRU(nn.Module):
    """(batch, rows, columns) images → a GRU over the rows → ``nn.Dense(10)`` of its last state.

    The GRU is ``l2l_jax.tasks.char_lm.GRU`` (``flax.linen.GRUCell``'s parameters,
    initialisers and arithmetic, named ``GRUCell_0``), its state starting at zero.

    Attributes:
      hidden_size: width of the GRU's state.
    """

    hidden_size: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        states = GRU(self.hidden_size, name="GRUCell_0")(x)
        return nn.Dense(10)(states[:, -1])


class MNISTRowGRUFamily(MNISTImageFamily):
    """Training a GRU that classifies MNIST digits read one row per time step; tasks differ by θ0 and minibatches.

    A sequence classifier: no language, no text. An ``MNISTImageFamily``: the data and
    minibatches are ``MNISTFamily``'s (pixels in [0, 1], batches drawn with replacement
    at every step); an image of side s is a sequence of s rows of s pixels; the loss is
    the mean softmax cross-entropy of the logits read from the GRU's last state.

    Args:
      hidden_size: width of the GRU's state.
      batch_size: minibatch size.
      image_size: the images' side: 28, or smaller to downsample them (see ``MNISTFamily``).
      data_dir: where to look for MNIST (see ``l2l_jax.data.load_mnist_for_experiment``):
        the training split when present, else the 10,000-image test split.
      download: try downloading the training split when it is missing.

    Attributes:
      data: the ``MNISTFamily`` (this ``batch_size`` and ``image_size``) that loads
        the data and draws the minibatches.
      data_description: which split was found where (for messages; names paths).
      data_record: what the data was, without paths (see ``l2l_jax.tasks.mnist.data_record``).

    Raises:
      ConfigError: if ``hidden_size`` or ``batch_size`` is not a positive integer,
        ``image_size`` not from 1 to 28 or ``download`` not a bool.
      DataError: if MNIST cannot be found (or downloaded).
    """

    name = "mnist_rnn"

    def __init__(
        self,
        hidden_size: int = 32,
        batch_size: int = 32,
        data_dir: str | None = None,
        download: bool = False,
        image_size: int = FULL_SIZE,
    ) -> None:
        self.hidden_size = positive_int("hidden_size", hidden_size)
        super().__init__(RowGRU(hidden_size=self.hidden_size), batch_size, data_dir, download, image_size)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size)

    def config(self) -> dict[str, Any]:
        """The options that rebuild this family."""
        return {
            "hidden_size": self.hidden_size,
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
            "download": self.download,
            "image_size": self.image_size,
        }
