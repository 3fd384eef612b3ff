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

from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily
from l2l_jax.tasks.mnist import cross_entropy
from l2l_jax.validation import positive_int


class CharGRU(nn.Module):
    """Tokens → embedding → GRU → logits over the vocabulary at every position.

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
        cell = nn.GRUCell(self.hidden_size)
        h = jnp.zeros((x.shape[0], self.hidden_size), x.dtype)
        outputs = []
        # Unrolled in Python: on the CPU a scan over time nested in the training loop's
        # scan (under vmap) can stall XLA's thread pool.
        for t in range(x.shape[1]):
            h, y = cell(h, x[:, t])
            outputs.append(y)
        return nn.Dense(self.vocab_size)(jnp.stack(outputs, axis=1))


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
