"""The paper's MNIST optimizee (a small Flax MLP on minibatches of 128 drawn with replacement), MNIST's
data helpers, and `MNISTImageFamily`, the base of the other MNIST classifiers' families."""

from __future__ import annotations

import abc
import hashlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2l_jax.checks import boolean, one_of, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


#: The side of MNIST's images.
FULL_SIZE = 28

#: What an MNIST task's MLP learns: the digit's class, or the image itself.
OBJECTIVES = ("classify", "autoencode")


class MLP(nn.Module):
    """Flattened image → hidden layers → ``outputs`` values (10 logits), with Flax's default initialisation."""

    hidden: Sequence[int] = (20,)
    activation: str = "sigmoid"
    outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.outputs)(x)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def reconstruction_error(outputs: jax.Array, pixels: jax.Array) -> jax.Array:
    """Mean squared error between ``sigmoid(outputs)`` and pixels in [0, 1], over pixels and examples."""
    return jnp.mean((jax.nn.sigmoid(outputs) - pixels) ** 2)


def data_record(description: str, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What the data was, without where it lay: split, number of examples and SHA-256 of the arrays.

    Args:
      description: the description ``l2l_jax.data.load_mnist_for_experiment`` returned
        (it starts ``"MNIST <split> split"``).
      images: the uint8 images.
      labels: the labels.
    """
    words = description.split()
    split = words[1] if len(words) > 2 and words[0] == "MNIST" and words[2] == "split" else "unknown"
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes())
    return {"dataset": "MNIST", "split": split, "examples": int(len(labels)), "sha256": digest.hexdigest()}


def _area_weights(size: int, new_size: int) -> np.ndarray:
    """(new_size, size): the share of each old pixel in each new one when ``size`` pixels become ``new_size``."""
    edges = np.arange(new_size + 1) * size / new_size
    left, right = np.arange(size), np.arange(size) + 1
    overlap = np.clip(np.minimum(right, edges[1:, None]) - np.maximum(left, edges[:-1, None]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 square images (n, s, s) resized to (n, size, size) by area averaging.

    Each new pixel is the mean of the old pixels it covers, weighted by the area
    covered (28 → 14 averages 2x2 blocks; 28 → 8 covers 3.5x3.5 pixels).

    Args:
      images: uint8 square images.
      size: the new side, from 1 to the old one; the old side returns ``images`` unchanged.

    Returns:
      uint8 images (n, size, size), rounded to the nearest level.
    """
    if size == images.shape[-1]:
        return images
    weights = _area_weights(images.shape[-1], size)
    small = np.einsum("ij,njk,lk->nil", weights, images.astype(np.float64), weights)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def image_side(value: object) -> int:
    """``value`` as an image side from 1 to 28, or ``ConfigError``."""
    size = positive_int("image_size", value)
    if size > FULL_SIZE:
        raise ConfigError(f"image_size must be from 1 to {FULL_SIZE} (MNIST is {FULL_SIZE}x{FULL_SIZE}), got {size}")
    return size


class MNISTFamily(TaskFamily):
    """Training an MLP on MNIST; tasks differ by initialisation and minibatches.

    Andrychowicz et al. (2016), §3.2: one hidden layer of 20 sigmoid units,
    minibatches of 128, pixels in [0, 1]. The generalisation studies change the
    width (40), depth (2 layers) or activation (ReLU). With ``objective="autoencode"``
    the MLP reconstructs its input instead: ``image_size²`` outputs, read through a
    sigmoid, and the loss is their mean squared error to the pixels.

    Args:
      hidden_units: width of every hidden layer.
      hidden_layers: number of hidden layers.
      activation: ``"sigmoid"``, ``"relu"`` or ``"tanh"``.
      batch_size: minibatch size; batches are drawn with replacement at every step.
      image_size: the images' side: 28 (MNIST as it is), or smaller to downsample
        every image once (area averaging; e.g. 8 or 14, the cheap tasks that learned
        optimizers are meta-trained on). The MLP's input has ``image_size²`` pixels.
      data_dir: where to look for MNIST (see ``l2l_jax.data.load_mnist_for_experiment``):
        the training split when present, else the 10,000-image test split.
      download: try downloading the training split when it is missing.
      objective: ``"classify"`` (cross-entropy on the 10 digits) or ``"autoencode"``
        (`reconstruction_error`; the labels are not used).

    Attributes:
      data_description: which split was found where (for messages; names paths).
      data_record: what the data was, without paths (for metadata): see ``data_record``.

    Raises:
      ConfigError: for an invalid option (``image_size`` must be from 1 to 28; ``objective``
        one of `OBJECTIVES`).
      DataError: if MNIST cannot be found (or downloaded).
    """

    name = "mnist"

    def __init__(
        self,
        hidden_units: int = 20,
        hidden_layers: int = 1,
        activation: str = "sigmoid",
        batch_size: int = 128,
        data_dir: str | None = None,
        download: bool = False,
        image_size: int = FULL_SIZE,
        objective: str = "classify",
    ) -> None:
        hidden_units = positive_int("hidden_units", hidden_units)
        self.objective = one_of("objective", objective, OBJECTIVES)
        self.image_size = image_side(image_size)
        hidden_layers = positive_int("hidden_layers", hidden_layers)
        batch_size = positive_int("batch_size", batch_size)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        from l2l_jax.data import load_mnist_for_experiment

        self.hidden_units, self.hidden_layers = int(hidden_units), int(hidden_layers)
        self.activation, self.batch_size = activation, int(batch_size)
        self.data_dir, self.download = data_dir, bool(download)
        images, labels, self.data_description = load_mnist_for_experiment(data_dir, download=download)
        self.data_record = data_record(self.data_description, images, labels)
        # uint8 on the device: 4x less memory than float32; scaled per minibatch.
        images = downsample(images, self.image_size)
        self.images = jnp.asarray(images.reshape(len(images), -1), jnp.uint8)
        self.labels = jnp.asarray(labels, jnp.int32)
        outputs = 10 if self.objective == "classify" else self.image_size**2
        self.model = MLP(hidden=(self.hidden_units,) * self.hidden_layers, activation=activation, outputs=outputs)

    def config(self) -> dict[str, Any]:
        """The options that rebuild this family; ``image_size`` and ``objective`` only when not the defaults.

        (Runs recorded before those options existed then resume unchanged.)
        """
        config = {
            "hidden_units": self.hidden_units,
            "hidden_layers": self.hidden_layers,
            "activation": self.activation,
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
            "download": self.download,
        }
        if self.image_size != FULL_SIZE:
            config["image_size"] = self.image_size
        if self.objective != "classify":
            config["objective"] = self.objective
        return config

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def sample(self, key: jax.Array) -> PyTree:
        del key
        return ()  # Tasks differ only by θ0 and the minibatches.

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        return self.model.init(key, jnp.zeros((1, self.image_size**2)))["params"]

    def batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A minibatch drawn with replacement: float32 pixels in [0, 1] and labels."""
        idx = jax.random.randint(key, (self.batch_size,), 0, self.num_examples)
        return self.images[idx].astype(jnp.float32) / 255.0, self.labels[idx]

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del task_params
        x, y = self.batch(key)
        outputs = self.model.apply({"params": params}, x)
        return cross_entropy(outputs, y) if self.objective == "classify" else reconstruction_error(outputs, x)


class MNISTImageFamily(TaskFamily):
    """Training a Flax classifier of MNIST images; tasks differ by initialisation and minibatches.

    The base of the CNN (``"mnist_cnn"``) and row-by-row GRU (``"mnist_rnn"``) families.
    The data and minibatches are an ``MNISTFamily``'s (pixels in [0, 1], batches drawn
    with replacement at every step), each image shaped as ``image_shape``; the loss is
    the mean softmax cross-entropy of the model's logits. A subclass passes its model and
    defines ``image_shape``, ``name`` and ``config``.

    Args:
      model: a Flax module from (batch, *image_shape) images to (batch, 10) logits.
      batch_size: minibatch size.
      data_dir: where to look for MNIST (see ``l2l_jax.data.load_mnist_for_experiment``):
        the training split when present, else the 10,000-image test split.
      download: try downloading the training split when it is missing.
      image_size: the images' side: 28, or smaller to downsample them (see ``MNISTFamily``).

    Attributes:
      data: the ``MNISTFamily`` (default MLP options, this ``batch_size`` and
        ``image_size``) that loads the data and draws the minibatches.
      data_description: which split was found where (for messages; names paths).
      data_record: what the data was, without paths (see `data_record`).

    Raises:
      ConfigError: if ``batch_size`` is not a positive integer, ``image_size`` not from
        1 to 28 or ``download`` not a bool.
      DataError: if MNIST cannot be found (or downloaded).
    """

    def __init__(
        self, model: nn.Module, batch_size: int, data_dir: str | None, download: bool, image_size: int
    ) -> None:
        self.image_size = image_side(image_size)
        self.batch_size = positive_int("batch_size", batch_size)
        self.download = boolean("download", download)
        self.data_dir = data_dir
        # The MLP family owns loading, recording and batching MNIST; this family only reshapes its batches.
        self.data = MNISTFamily(
            batch_size=self.batch_size, data_dir=data_dir, download=self.download, image_size=self.image_size
        )
        self.data_description, self.data_record = self.data.data_description, self.data.data_record
        self.model = model

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, ...]:
        """One image's shape as the model reads it."""

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def sample(self, key: jax.Array) -> PyTree:
        del key
        return ()  # Tasks differ only by θ0 and the minibatches.

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        return self.model.init(key, jnp.zeros((1, *self.image_shape)))["params"]

    def batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A minibatch drawn with replacement: float32 images (batch_size, *image_shape) in [0, 1] and labels."""
        x, y = self.data.batch(key)
        return x.reshape(-1, *self.image_shape), y

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del task_params
        x, y = self.batch(key)
        return cross_entropy(self.model.apply({"params": params}, x), y)
