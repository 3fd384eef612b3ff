"""A character-level language model: a small GRU predicting the next byte of Python source text.

The text is the source of a fixed list of standard-library modules
(``l2l_jax.data.text``), so the task works offline with nothing shipped. The
tradeoff: the text is the installed Python's and differs slightly between Python
versions, where a file shipped in the package would not; ``data_record`` holds
its length and SHA-256 so that results say which text they were measured on.
"""

from __future__ import annotations

import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily
from l2l_jax.tasks.mnist import cross_entropy


def orthogonal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """``jax.nn.initializers.orthogonal()`` (flax's GRU recurrent-kernel default) without LAPACK.

    The same Gaussian draw is orthonormalised by Gram–Schmidt, applied twice per
    column, instead of by ``jnp.linalg.qr``: Q with R's diagonal made positive is
    unique, so the result equals flax's to float32 rounding. No LAPACK call is
    compiled, so a ``vmap`` over tasks cannot meet jaxlib 0.10's deadlock of batched
    CPU LAPACK calls (see the generalist's guide, "The character-level LM").

    Args:
      key: a PRNG key.
      shape: ``(rows, columns)``; the smaller side gets orthonormal vectors.
      dtype: a float dtype.
    """
    if len(shape) != 2:
        raise ValueError(f"orthogonal needs a 2-D shape, got {shape!r}")
    rows, cols = shape
    z = jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype)

    def column(j: jax.Array, q: jax.Array) -> jax.Array:
        v = jax.lax.dynamic_index_in_dim(z, j, axis=1, keepdims=False)
        for _ in range(2):  # Columns of q not yet set are zero, so they project nothing out.
            v = v - q @ (q.T @ v)
        return jax.lax.dynamic_update_index_in_dim(q, v / jnp.linalg.norm(v), j, axis=1)

    q = jax.lax.fori_loop(0, z.shape[1], column, jnp.zeros_like(z))
    return q.T if rows < cols else q


class _Affine(nn.Module):
    """The parameters of a ``flax.linen.Dense`` (same names, initialisers and order), returned unapplied."""

    features: int
    use_bias: bool
    kernel_init: Any

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        if not self.use_bias:
            return kernel, None
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class GRU(nn.Module):
    """``flax.linen.GRUCell`` run over a sequence, with its parameters, their initial values and its arithmetic.

    The three gates' input projections are one matrix product over the whole
    sequence, and their recurrent ones one product per step (a ``lax.scan`` over
    time), where flax's cell does six small products per step.

    Attributes:
      hidden_size: width of the state (which starts at zero).
    """

    hidden_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` (batch, length, features) → states (batch, length, hidden_size)."""
        h_size, in_size = self.hidden_size, x.shape[-1]
        lecun = nn.initializers.lecun_normal()
        inputs = [_Affine(h_size, True, lecun, name=n)(in_size) for n in ("ir", "iz", "in")]
        recurrent = [_Affine(h_size, n == "hn", orthogonal, name=n)(h_size) for n in ("hr", "hz", "hn")]
        w_in = jnp.concatenate([k for k, _ in inputs], axis=1)
        b_in = jnp.concatenate([b for _, b in inputs])
        w_h = jnp.concatenate([k for k, _ in recurrent], axis=1)
        b_hn = recurrent[2][1]

        def step(h: jax.Array, projected: jax.Array) -> tuple[jax.Array, jax.Array]:
            r_i, z_i, n_i = jnp.split(projected, 3, axis=-1)
            r_h, z_h, n_h = jnp.split(h @ w_h, 3, axis=-1)
            r, z = nn.sigmoid(r_i + r_h), nn.sigmoid(z_i + z_h)
            n = jnp.tanh(n_i + r * (n_h + b_hn))
            h = (1.0 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((x.shape[0], h_size), x.dtype)
        _, states = jax.lax.scan(step, h0, jnp.swapaxes(x @ w_in + b_in, 0, 1))
        return jnp.swapaxes(states, 0, 1)


class CharGRU(nn.Module):
    """Tokens → embedding → GRU → logits over the vocabulary at every position.

    The parameters are those of ``nn.Embed``, ``nn.GRUCell`` (as ``GRUCell_0``) and
    ``nn.Dense``, with flax's initialisers; see ``GRU`` and ``orthogonal`` for why the
    GRU is not flax's own cell.

    Attributes:
      vocab_size: number of token ids.
      embed_dim: width of the token embedding.
      hidden_size: width of the GRU's state (which starts at zero).
    """

    vocab_size: int = 128
    embed_dim: int = 32
    hidden_size: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """``tokens`` (batch, length) ints → logits (batch, length, vocab_size)."""
        x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
        return nn.Dense(self.vocab_size)(GRU(self.hidden_size, name="GRUCell_0")(x))


class CharLMFamily(TaskFamily):
    """Training a character-level GRU language model; tasks differ by initialisation and minibatches.

    The loss is the mean cross-entropy of predicting every next character of a
    minibatch of windows, each ``seq_len + 1`` characters long, whose starts are
    drawn uniformly with replacement from the text with the loss's ``key`` (so the
    loss is a pure function of the parameters and the key). Bytes are tokens: ASCII
    bytes are their own id and every non-ASCII byte is one shared id
    (``l2l_jax.data.text.byte_tokens``), a vocabulary of 128.

    Args:
      seq_len: characters predicted per window.
      batch_size: windows per minibatch.
      hidden_size: width of the GRU's state.
      embed_dim: width of the character embedding.

    Attributes:
      data_record: what the text was (``{"dataset", "characters", "sha256"}``,
        see ``l2l_jax.data.text.text_record``); the dataset names the Python version.
      tokens: the whole text as uint8 token ids.

    Raises:
      ConfigError: if an option is not a positive integer, or ``seq_len`` is not
        shorter than the text.
      DataError: if this Python installation lacks a module's source file.
    """

    name = "char_lm"

    def __init__(self, seq_len: int = 32, batch_size: int = 32, hidden_size: int = 64, embed_dim: int = 32) -> None:
        self.seq_len = positive_int("seq_len", seq_len)
        self.batch_size = positive_int("batch_size", batch_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        from l2l_jax.data.text import STDLIB_MODULES, VOCAB_SIZE, byte_tokens, stdlib_source, text_record

        text = stdlib_source(STDLIB_MODULES)
        if self.seq_len + 1 > len(text):
            raise ConfigError(f"seq_len must be below the text's length ({len(text)} characters), got {seq_len!r}")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.data_record = text_record(f"Python {version} standard-library source: {', '.join(STDLIB_MODULES)}", text)
        self.tokens = jnp.asarray(byte_tokens(text))
        self.vocab_size = VOCAB_SIZE
        self.model = CharGRU(vocab_size=VOCAB_SIZE, embed_dim=self.embed_dim, hidden_size=self.hidden_size)

    def config(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "hidden_size": self.hidden_size,
            "embed_dim": self.embed_dim,
        }

    def sample(self, key: jax.Array) -> PyTree:
        del key
        return ()  # Tasks differ only by θ0 and the minibatches.

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        return self.model.init(key, jnp.zeros((1, self.seq_len), jnp.int32))["params"]

    def batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A minibatch of windows: inputs and next-character targets, both (batch_size, seq_len) int32."""
        starts = jax.random.randint(key, (self.batch_size, 1), 0, self.tokens.shape[0] - self.seq_len)
        windows = self.tokens[starts + jnp.arange(self.seq_len + 1)].astype(jnp.int32)
        return windows[:, :-1], windows[:, 1:]

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del task_params
        inputs, targets = self.batch(key)
        return cross_entropy(self.model.apply({"params": params}, inputs), targets)
