"""The paper's optimizer: a coordinatewise LSTM with weights shared over coordinates.

Owns `CoordinatewiseLSTM` and its constructor `lstm`, the presets,
the bounds on its sizes, and the implementation registry that picks how the LSTM
step is computed (``"auto"``, ``"reference"``, ``"fused"`` or ``"pallas"``; see
`masked_step_function`).

Every coordinate of every parameter leaf runs its own copy of a small stacked LSTM
with the same weights, reading its own preprocessed gradient and writing its own
update, so one φ optimizes models of any size.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.checks import finite_float, one_of, positive_float, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers._lstm_cell import (
    CPU_BLOCK,
    CellWeights,
    MaskedStepFn,
    StepFn,
    in_blocks,
    lstm_step_fused,
    lstm_step_reference,
    masked,
    partitioned_by_xla,
)
from l2l_jax.optimizers._lstm_pallas import kernel_call, lstm_step_pallas
from l2l_jax.optimizers.base import (
    LearnedOptimizer,
    MetaParams,
    PyTree,
    check_state_dtype,
    coordinatewise,
)
from l2l_jax.optimizers.preprocessing import check_preprocessing, num_features, preprocess

#: Settings of the paper (Andrychowicz et al., 2016, §3 and appendix A) and of
#: deepmind/learning-to-learn's released code (``LogAndSign`` with k = 5,
#: ``scale = 0.01``).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hidden_size": 20, "num_layers": 2, "preprocessing": "log_sign", "p": 10.0, "output_scale": 0.1},
    "deepmind": {"hidden_size": 20, "num_layers": 2, "preprocessing": "log_sign", "p": 5.0, "output_scale": 0.01},
}


#: Names of the ways to compute the LSTM step (the ``implementation`` option, which may
#: also be ``"auto"``: see `auto_step`).
IMPLEMENTATIONS = ("reference", "fused", "pallas")


def step_function(implementation: str) -> StepFn:
    """The LSTM step of an implementation.

    Args:
      implementation: one of `IMPLEMENTATIONS`.

    Returns:
      ``step(weights, x, h, c) -> (out, new_h, new_c)``.

    Raises:
      ConfigError: for an unknown implementation.
    """
    one_of("LSTM implementation", implementation, IMPLEMENTATIONS)
    return {"reference": lstm_step_reference, "fused": lstm_step_fused, "pallas": lstm_step_pallas}[implementation]


def masked_step_function(implementation: str) -> MaskedStepFn:
    """The LSTM step that an optimizer with this ``implementation`` runs on each leaf.

    The step takes a ``keep`` mask as its fifth argument (coordinates where it is
    False get output 0 and keep h and c), reads and writes h and c in the dtype they
    are stored in, and computes in x's dtype. The Pallas kernel applies the mask and
    the dtypes itself, so that the state is still read and written once, in place;
    the fused step runs in cache-sized blocks of coordinates on a CPU (`in_blocks`).

    Args:
      implementation: ``"auto"`` (`auto_step`) or one of `IMPLEMENTATIONS`.

    Returns:
      ``step(weights, x, h, c, keep) -> (out, new_h, new_c)``.

    Raises:
      ConfigError: for an unknown implementation.
    """
    one_of("LSTM implementation", implementation, ("auto", *IMPLEMENTATIONS))
    if implementation == "auto":
        return auto_step
    if implementation == "pallas":
        return _on_flat_coordinates(lstm_step_pallas)
    if implementation == "fused":
        return _fused_on_stored_state
    return _on_stored_state(masked(lstm_step_reference))


def _on_stored_state(step: MaskedStepFn) -> MaskedStepFn:
    # ``step`` on state stored in any float dtype, computing in x's dtype, like the Pallas step.
    def stored(
        weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        out, new_h, new_c = step(weights, x, h.astype(x.dtype), c.astype(x.dtype), keep)
        return out, new_h.astype(h.dtype), new_c.astype(c.dtype)

    return stored


def _on_flat_coordinates(step: MaskedStepFn) -> MaskedStepFn:
    # ``step``, which takes coordinates flat, on a leaf's coordinates of any shape.
    def flat(
        weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        n = keep.size
        out, new_h, new_c = step(
            weights, x.reshape(x.shape[0], n), h.reshape(*h.shape[:2], n), c.reshape(*c.shape[:2], n), keep.reshape(n)
        )
        return out.reshape(keep.shape), new_h.reshape(h.shape), new_c.reshape(c.shape)

    return flat


#: The masked fused step, in cache-sized blocks on a CPU, on the stored state.
_fused_on_stored_state = _on_stored_state(in_blocks(masked(lstm_step_fused), CPU_BLOCK, only_on="cpu"))


@jax.custom_vjp
def auto_step(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The masked LSTM step of ``implementation="auto"``: chosen per use.

    Not differentiated (the drop-in update): the Pallas kernel where the program is
    lowered for a GPU (CUDA or ROCm), which updates the state in place; the fused
    step elsewhere, and wherever XLA partitions the program over devices itself
    (`l2l_jax.optimizers._lstm_cell.partitioned_by_xla`), since XLA cannot partition
    the kernel and would gather a sharded leaf for it. Differentiated in reverse mode (meta-training): the fused step,
    forward and backward, on every platform. Both give the reference step's numbers.

    Args:
      weights: the cell's weights.
      x: the input features ``(F, *shape)``; the arithmetic is in its dtype.
      h: the hidden state ``(L, H, *shape)``, in the dtype it is stored in.
      c: the cell state ``(L, H, *shape)``, in the dtype it is stored in.
      keep: ``shape`` bool; where False the output is 0 and h, c are unchanged.

    Returns:
      ``(out, new_h, new_c)``; ``out`` in x's dtype, the state in its own.
    """
    if partitioned_by_xla():
        return _fused_on_stored_state(weights, x, h, c, keep)
    # The kernel compiled for the GPU (never the interpreter: that branch is for GPUs only).
    kernel = _on_flat_coordinates(functools.partial(kernel_call, interpret=False))
    return jax.lax.platform_dependent(weights, x, h, c, keep, cuda=kernel, rocm=kernel, default=_fused_on_stored_state)


def _auto_fwd(weights, x, h, c, keep):
    out, vjp = jax.vjp(lambda w, x, h, c: _fused_on_stored_state(w, x, h, c, keep), weights, x, h, c)
    return out, vjp


def _auto_bwd(vjp, cotangents):
    return (*vjp(cotangents), None)


auto_step.defvjp(_auto_fwd, _auto_bwd)


#: At most this many layers: the step is unrolled layer by layer when it is traced.
MAX_NUM_LAYERS = 64
#: At most this many meta-parameters (elements of φ, all arrays together: 4 GiB in
#: float32). 2 layers of 9,000 units fit (about 0.97 * 2**30).
MAX_META_PARAMS = 2**30


def meta_param_count(hidden_size: int, num_layers: int, preprocessing: str = "log_sign") -> int:
    """The number of elements of φ for these sizes (exact, in Python integers).

    Args:
      hidden_size: units per layer.
      num_layers: stacked layers.
      preprocessing: the gradient preprocessing, which sets the first layer's inputs.

    Returns:
      The total over φ's arrays, as `CoordinatewiseLSTM.init` makes them.
    """
    total, in_size = 0, num_features(preprocessing)
    for _ in range(num_layers):
        total += (in_size + hidden_size) * 4 * hidden_size + 4 * hidden_size
        in_size = hidden_size
    return total + hidden_size + 1


class LSTMState(NamedTuple):
    """Per-coordinate LSTM state; each leaf has shape ``(num_layers, hidden_size, *param.shape)``.

    Hidden units before coordinates, so that each unit of each layer is one
    contiguous row over the coordinates (what fused and Pallas kernels stream).
    """

    h: PyTree
    c: PyTree


class CoordinatewiseLSTM(LearnedOptimizer):
    """A stacked LSTM applied independently to every coordinate (see `lstm`).

    Non-finite gradients: see `LearnedOptimizer`; with every implementation.

    Raises:
      ConfigError: at construction, for options that make no sense (see `lstm`).
    """

    name = "lstm"

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocessing: str = "log_sign",
        p: float = 10.0,
        output_scale: float = 0.1,
        state_dtype: str | None = None,
        implementation: str = "auto",
        output_init_scale: float = 1.0,
    ) -> None:
        hidden_size = positive_int("hidden_size", hidden_size)
        num_layers = positive_int("num_layers", num_layers)
        if num_layers > MAX_NUM_LAYERS:
            raise ConfigError(f"num_layers must be at most {MAX_NUM_LAYERS}, got {num_layers}")
        p = finite_float("p", p)
        output_scale = positive_float("output_scale", output_scale)
        check_preprocessing(preprocessing, p)
        count = meta_param_count(hidden_size, num_layers, preprocessing)
        if count > MAX_META_PARAMS:
            raise ConfigError(
                f"an LSTM with hidden_size={hidden_size} and num_layers={num_layers} would have {count} "
                f"meta-parameters; at most 2**30 = {MAX_META_PARAMS} are supported"
            )
        output_init_scale = finite_float("output_init_scale", output_init_scale)
        if not output_init_scale >= 0:
            raise ConfigError(f"output_init_scale must be >= 0, got {output_init_scale!r}")
        state_dtype = check_state_dtype(state_dtype)
        one_of("LSTM implementation", implementation, ("auto", *IMPLEMENTATIONS))
        # How the step is computed, not what it computes: not part of config().
        self.implementation = implementation
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preprocessing = preprocessing
        self.p = p
        self.output_scale = output_scale
        self.output_init_scale = output_init_scale
        self.state_dtype = state_dtype

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocessing": self.preprocessing,
            "p": self.p,
            "output_scale": self.output_scale,
            "output_init_scale": self.output_init_scale,
            "state_dtype": self.state_dtype,
        }

    def init(self, key: jax.Array) -> MetaParams:
        """Uniform(±1/√H) weights (PyTorch's LSTM default), forget-gate bias 1; the
        output weights also times ``output_init_scale``."""
        hidden = self.hidden_size
        bound = 1.0 / hidden**0.5
        keys = jax.random.split(key, self.num_layers + 1)
        meta: dict[str, Any] = {}
        in_size = num_features(self.preprocessing)
        for layer in range(self.num_layers):
            # One matrix for [input, h] so each step is a single matmul.
            w = jax.random.uniform(keys[layer], (in_size + hidden, 4 * hidden), minval=-bound, maxval=bound)
            b = jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0)
            meta[f"layer_{layer}"] = {"w": w, "b": b}
            in_size = hidden
        meta["out"] = {
            "w": jax.random.uniform(keys[-1], (hidden,), minval=-bound, maxval=bound) * self.output_init_scale,
            "b": jnp.zeros(()),
        }
        return meta

    def _transformation(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        layers = self.num_layers
        step_fn = masked_step_function(self.implementation)

        def update_leaf(
            meta_params: MetaParams, grad: jax.Array, keep: jax.Array, h: jax.Array, c: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            # Compute in at least float32 even when the state is stored in bfloat16.
            sdt = h.dtype
            dt = jnp.promote_types(h.dtype, jnp.float32)
            weights = CellWeights(
                w=tuple(jnp.asarray(meta_params[f"layer_{i}"]["w"], dt) for i in range(layers)),
                b=tuple(jnp.asarray(meta_params[f"layer_{i}"]["b"], dt) for i in range(layers)),
                w_out=jnp.asarray(meta_params["out"]["w"], dt),
                b_out=jnp.asarray(meta_params["out"]["b"], dt),
            )
            # The leaf keeps its shape (no coordinate axis is reshaped), so a leaf
            # sharded along any axis stays sharded. The step applies ``keep`` to its
            # output and state itself.
            safe = jnp.where(keep, grad, jnp.zeros((), grad.dtype))
            x = jnp.moveaxis(preprocess(safe.astype(dt), self.preprocessing, self.p), -1, 0)
            out, new_h, new_c = step_fn(weights, x, h, c, keep)
            return (out * self.output_scale).astype(grad.dtype), new_h.astype(sdt), new_c.astype(sdt)

        lead = (self.num_layers, self.hidden_size)
        return coordinatewise(
            LSTMState, (lead, lead), update_leaf, shared=meta_params, dtype=self.state_dtype, per_shard=True
        )


def lstm(preset: str = "paper", **overrides: Any) -> CoordinatewiseLSTM:
    """The paper's coordinatewise LSTM optimizer.

    Args:
      preset: ``"paper"`` (log/sign preprocessing with p = 10, output × 0.1) or
        ``"deepmind"`` (deepmind/learning-to-learn's code: p = 5, output × 0.01).
        Both use 2 layers of 20 units.
      **overrides: any of ``hidden_size``, ``num_layers``, ``preprocessing``
        (``"log_sign"`` or ``"none"``), ``p``, ``output_scale``, ``state_dtype``,
        ``implementation``: ``"auto"`` (the default: per use, see `auto_step`;
        the Pallas kernel for an update that is not differentiated on a GPU, the
        fused step otherwise), ``"fused"`` (a hand-written, recomputing backward
        pass; on a CPU, leaves run in cache-sized blocks of coordinates),
        ``"reference"`` (plain JAX autodiff; needed for forward-mode ``jax.jvp``
        in φ) or ``"pallas"`` (one in-place Pallas/Triton kernel for the update
        on GPU; interpreted, slowly, elsewhere). All give the same numbers
        (tested); the choice is not part of `config`.
        ``output_init_scale`` multiplies the initial output weights: with 0.01 the
        untrained optimizer takes tiny steps, which keeps meta-training out of
        regions where the model saturates and meta-gradients vanish.
        ``hidden_size`` and ``num_layers`` are positive integers (not floats, strings or
        booleans); ``num_layers`` is at most `MAX_NUM_LAYERS` (64), and φ may
        have at most `MAX_META_PARAMS` (2**30) elements, which allows 2 layers
        of up to about 9,000 units. ``p``, ``output_scale`` and ``output_init_scale``
        are finite numbers; ``output_scale`` is positive and ``output_init_scale``
        is not negative.

    Returns:
      A `CoordinatewiseLSTM`; ``init(key)`` gives φ, ``as_optax(φ)`` the optimizer,
      which keeps the non-finite contract of `LearnedOptimizer` with every
      implementation (a skipped coordinate keeps h and c).

    Raises:
      ConfigError: for an unknown preset or option, or a value that makes no sense
        (a wrong type, a non-positive size, sizes past the bounds above).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> opt = lstm()
      >>> tx = opt.as_optax(opt.init(jax.random.key(0)))
      >>> params = {"w": jnp.ones((3, 2))}
      >>> updates, state = tx.update(params, tx.init(params))
      >>> updates["w"].shape, state.h["w"].shape
      ((3, 2), (2, 20, 3, 2))

    References:
      Andrychowicz et al., "Learning to learn by gradient descent by gradient
      descent", NeurIPS 2016.
    """
    one_of("LSTM preset", preset, PRESETS)
    valid = {*PRESETS["paper"], "state_dtype", "implementation", "output_init_scale"}
    unknown = set(overrides) - valid
    if unknown:
        raise ConfigError(
            f"unknown LSTM option(s) {', '.join(sorted(unknown))}; its options: preset, {', '.join(sorted(valid))}"
        )
    return CoordinatewiseLSTM(**{**PRESETS[preset], **overrides})
