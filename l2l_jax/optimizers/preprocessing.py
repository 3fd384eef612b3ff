"""Gradient preprocessing for coordinatewise learned optimizers: the features each coordinate sees.

Gradients span many orders of magnitude across coordinates and tasks; an LSTM
with weights shared over coordinates sees them best on a log scale. Andrychowicz
et al. (2016), appendix A:

    ∇ ↦ (log|∇| / p, sgn ∇)   if |∇| ≥ e^{-p}
        (-1, e^{p} ∇)          otherwise
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from l2l_jax.checks import one_of
from l2l_jax.errors import ConfigError

#: The preprocessing names: the raw gradient, or the paper's log/sign features.
PREPROCESSINGS = ("none", "log_sign")


def num_features(kind: str) -> int:
    """How many input features a preprocessing makes per coordinate.

    Raises:
      ConfigError: for an unknown preprocessing.
    """
    check_preprocessing(kind)
    return 1 if kind == "none" else 2


def check_preprocessing(kind: str, p: float = 10.0) -> None:
    """Checks a preprocessing name and its cut-off exponent.

    Raises:
      ConfigError: for an unknown preprocessing, or ``p <= 0`` with ``"log_sign"``.
    """
    one_of("preprocessing", kind, PREPROCESSINGS)
    if kind == "log_sign" and not p > 0:
        raise ConfigError(f"log/sign preprocessing needs p > 0, got p={p}")


def preprocess(grad: jax.Array, kind: str, p: float) -> jax.Array:
    """Maps gradients of any shape to features of shape ``grad.shape + (F,)``.

    Args:
      grad: gradient coordinates.
      kind: ``"none"`` (the raw gradient) or ``"log_sign"`` (the paper's).
      p: the log/sign cut-off exponent; the paper uses 10.

    Returns:
      The features, in ``grad``'s dtype.
    """
    if kind == "none":
        return grad[..., None]
    abs_grad = jnp.abs(grad)
    big = abs_grad >= jnp.exp(-p)
    # Clamp inside the log so the unused branch never produces -inf (whose
    # gradient would be NaN under jnp.where).
    log_part = jnp.where(big, jnp.log(jnp.maximum(abs_grad, jnp.exp(-p))) / p, -1.0)
    sign_part = jnp.where(big, jnp.sign(grad), jnp.exp(p) * grad)
    return jnp.stack([log_part, sign_part], axis=-1).astype(grad.dtype)
