"""A per-coordinate MLP over optimizer features with a bounded output: ``FeatureMLP``.

Owns `FeatureMLP`, its state and its constructor `feature_mlp`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.checks import boolean, one_of, positive_float, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import (
    LearnedOptimizer,
    MetaParams,
    PyTree,
    check_state_dtype,
    coordinatewise,
)

#: Time scales τ of the training-progress features tanh(t / τ).
PROGRESS_SCALES = (10.0, 100.0, 1000.0)

#: The output forms: the network's step alone, or added to a nominal Adam step.
OUTPUTS = ("bounded", "nominal")

#: The momentum decay of the nominal Adam step (one of ``momentum_decays``).
NOMINAL_DECAY = 0.9

#: Leaves with at least this many coordinates evaluate the network coordinate by
#: coordinate (one fused loop of scalar multiply-adds, see ``_coordinatewise_layers``);
#: smaller ones as matrix products over the coordinates. Same maths, other rounding.
COORDINATEWISE_MIN_SIZE = 65536

#: At most this many meta-parameters (elements of φ, all arrays together: 4 GiB in
#: float32), as for the LSTM.
MAX_META_PARAMS = 2**30


class FeatureMLPState(NamedTuple):
    """The state of `FeatureMLP`'s optimizer.

    Attributes:
      momenta: per parameter leaf, ``(len(momentum_decays), *param.shape)``
        exponential moving averages of the gradient.
      second_moment: per parameter leaf, the moving average of the squared gradient.
      count: steps taken (a scalar int32).
    """

    momenta: PyTree
    second_moment: PyTree
    count: jax.Array


class FeatureMLP(LearnedOptimizer):
    """A small MLP applied to every coordinate's features, with a bounded step.

    Features of each coordinate: the gradient, momenta at several decays, each
    divided by √(second moment) (Adam-like normalisation), the gradient so
    normalised, optionally the parameter value, and optionally the training
    progress tanh(t / τ) for τ in `PROGRESS_SCALES`. Every feature but progress is
    then divided by its root mean square over the parameter tensor (unless
    ``normalise_features`` is off), so the network
    sees the same scale in every tensor whatever its width or the loss's scale (with
    ``tensor_features`` it also sees those scales, below). The
    network outputs a direction d and a magnitude m. With ``output="bounded"`` the
    update is ``d · exp(exp_mult · m) · step_mult``. With ``output="nominal"`` it is
    ``exp(exp_mult · m) · (step_mult · d − η · n)``, where n is Adam's bias-corrected
    direction (momentum decay `NOMINAL_DECAY` over √(second moment)) and η = exp(φ's
    ``log_lr``) is learned; the last layer starts at zero, so the untrained optimizer is
    Adam with learning rate ``nominal_lr``.

    With ``reference_fan_in`` r set, the update of every tensor with two or more
    axes is multiplied by min(1, r / fan-in), where fan-in is the product of all
    axes but the last (Flax's ``Dense`` and ``Conv`` kernels are (..., in, out)).
    An Adam-like step moves each coordinate by about the same amount whatever the
    width, so a layer's output moves in proportion to its fan-in; the factor makes
    that movement the same for every fan-in above r, so one φ serves narrow and wide
    networks (μLO). Vectors and scalars (biases) have no fan-in factor.

    With ``reference_fan_out`` r' set, the update of every tensor with one or more axes
    (biases included: a bias is a kernel with fan-in 1) is also multiplied by
    √min(1, r' / fan-out), where fan-out is the last axis; scalars are not scaled. In a network in the standard parameterisation (weights initialised with
    variance 1/fan-in, as Flax does) the read-out sums the moves of n hidden units
    through weights of size 1/√n, so a layer's move reaches the output √n times larger
    when its n outputs feed the next layer; the factor takes that √n back.

    With ``step_bound`` κ set, every coordinate's step is clipped to ±κη (``"nominal"``;
    ±κ · ``step_mult`` with ``"bounded"``) before the width factors: however far the
    network extrapolates at coordinates whose features lie far outside those it was
    meta-trained on (a gradient many times its tensor's root mean square, as at a
    frequent token's embedding), no coordinate moves by more than κ nominal steps.

    With ``tensor_features`` on, every coordinate also sees features of its tensor,
    the same at all its coordinates: the log root mean square over the tensor of each
    per-coordinate feature (the scales the normalisation divides out) and the tensor's
    log fan-in and log fan-out, so one φ can step differently in tensors of different
    scales and shapes (and so gives up the invariance to the loss's scale that the
    normalisation gives). Their weights (φ's ``"tensor_w"``) start at zero: `extend`
    turns a trained φ without them into one that updates the same, up to float rounding.

    With ``warmup_steps`` k set, the update of step t (counting from 1) is multiplied by
    min(1, t / k): the first steps, taken when the momenta and second moment have seen
    one or a few gradients (Adam's first step moves every coordinate by the full rate),
    are shortened. It is a fixed schedule with no weights: a trained φ takes it as it
    is, and meta-training from one (``init``) may set it, as it may ``step_bound``
    (`free_options`).

    Non-finite gradients and (with ``use_params``) parameters: see `LearnedOptimizer`;
    a skipped coordinate is also left out of its tensor's normalisation.

    With ``state_dtype`` set (e.g. ``"bfloat16"``) the momenta and second moment are
    stored in that dtype and the update is computed in at least float32.

    References:
      Metz et al. (2022), "Practical tradeoffs between memory, compute, and performance in
      learned optimizers" (the small per-parameter MLP with this output form); Metz et al.
      (2020), "Tasks, stability, architecture, and compute"; Harrison et al. (2022), "A
      closer look at learned optimization: stability, robustness, and inductive biases";
      Thérien et al. (2024), "μLO: compute-efficient meta-generalization of learned
      optimizers" (the update scaled by 1/fan-in); Yang et al. (2021), "Tuning large
      neural networks via zero-shot hyperparameter transfer" (how the standard
      parameterisation's read-out amplifies the moves of wide layers).
    """

    name = "feature_mlp"
    extensions: ClassVar[dict[str, Any]] = {"tensor_features": True}
    free_options: ClassVar[frozenset[str]] = frozenset({"step_bound", "warmup_steps"})

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (32, 32),
        momentum_decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
        second_moment_decay: float = 0.999,
        use_params: bool = True,
        use_progress: bool = True,
        step_mult: float = 1e-3,
        exp_mult: float = 1e-3,
        output: str = "bounded",
        nominal_lr: float = 1e-2,
        normalise_features: bool = True,
        reference_fan_in: float | None = None,
        state_dtype: str | None = None,
        reference_fan_out: float | None = None,
        step_bound: float | None = None,
        tensor_features: bool = False,
        warmup_steps: int | None = None,
    ) -> None:
        try:
            sizes, decays = tuple(hidden_sizes), tuple(momentum_decays)
        except TypeError:
            raise ConfigError("hidden_sizes and momentum_decays must be lists of numbers") from None
        self.hidden_sizes = tuple(positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(sizes))
        self.momentum_decays = tuple(float(d) for d in decays)
        for i, d in enumerate(self.momentum_decays):
            if not 0.0 <= d < 1.0:
                raise ConfigError(f"momentum_decays[{i}] must be in [0, 1), got {d}")
        self.second_moment_decay = float(second_moment_decay)
        if not 0.0 < self.second_moment_decay < 1.0:
            raise ConfigError(f"second_moment_decay must be in (0, 1), got {second_moment_decay}")
        self.use_params = boolean("use_params", use_params)
        self.use_progress = boolean("use_progress", use_progress)
        self.step_mult = positive_float("step_mult", step_mult)
        self.exp_mult = positive_float("exp_mult", exp_mult)
        self.output = one_of("output", output, OUTPUTS)
        self.nominal_lr = positive_float("nominal_lr", nominal_lr)
        self.normalise_features = boolean("normalise_features", normalise_features)
        self.reference_fan_in = (
            None if reference_fan_in is None else positive_float("reference_fan_in", reference_fan_in)
        )
        self.reference_fan_out = (
            None if reference_fan_out is None else positive_float("reference_fan_out", reference_fan_out)
        )
        self.step_bound = None if step_bound is None else positive_float("step_bound", step_bound)
        self.tensor_features = boolean("tensor_features", tensor_features)
        self.warmup_steps = None if warmup_steps is None else positive_int("warmup_steps", warmup_steps)
        self.state_dtype = check_state_dtype(state_dtype)
        count = self.meta_param_count()
        if count > MAX_META_PARAMS:
            raise ConfigError(
                f"a feature MLP with hidden_sizes={list(self.hidden_sizes)} would have {count} meta-parameters; "
                f"at most 2**30 = {MAX_META_PARAMS} are supported"
            )
        if self.output == "nominal" and NOMINAL_DECAY not in self.momentum_decays:
            raise ConfigError(
                f"output='nominal' needs {NOMINAL_DECAY} among momentum_decays (its Adam momentum), "
                f"got {list(self.momentum_decays)}"
            )

    @property
    def num_features(self) -> int:
        """Inputs of the network per coordinate."""
        return self._num_coordinate_features + (len(PROGRESS_SCALES) if self.use_progress else 0)

    @property
    def num_tensor_features(self) -> int:
        """Inputs per tensor with ``tensor_features``: each per-coordinate feature's log RMS, log fan-in and fan-out."""
        return self._num_coordinate_features + 2

    @property
    def _num_coordinate_features(self) -> int:
        """Features that differ from coordinate to coordinate: the gradient, momenta, both normalised, the parameter."""
        return 2 + 2 * len(self.momentum_decays) + int(self.use_params)

    def meta_param_count(self) -> int:
        """The number of elements of φ (exact, in Python integers)."""
        sizes = (self.num_features, *self.hidden_sizes, 2)
        tensor = self.num_tensor_features * self.hidden_sizes[0] if self.tensor_features else 0
        return (
            sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))
            + int(self.output == "nominal")
            + tensor
        )

    def config(self) -> dict[str, Any]:
        """The options that rebuild this optimizer; ``reference_fan_in``/``_out``, ``state_dtype``, ``step_bound``, ``tensor_features`` and ``warmup_steps`` only when set."""
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "momentum_decays": list(self.momentum_decays),
            "second_moment_decay": self.second_moment_decay,
            "use_params": self.use_params,
            "use_progress": self.use_progress,
            "step_mult": self.step_mult,
            "exp_mult": self.exp_mult,
            "output": self.output,
            "nominal_lr": self.nominal_lr,
            "normalise_features": self.normalise_features,
            **({} if self.reference_fan_in is None else {"reference_fan_in": self.reference_fan_in}),
            **({} if self.state_dtype is None else {"state_dtype": self.state_dtype}),
            **({} if self.reference_fan_out is None else {"reference_fan_out": self.reference_fan_out}),
            **({} if self.step_bound is None else {"step_bound": self.step_bound}),
            **({"tensor_features": True} if self.tensor_features else {}),
            **({} if self.warmup_steps is None else {"warmup_steps": self.warmup_steps}),
        }

    def init(self, key: jax.Array) -> MetaParams:
        sizes = (self.num_features, *self.hidden_sizes, 2)
        layers = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            w = jax.random.normal(jax.random.fold_in(key, i), (fan_in, fan_out)) / jnp.sqrt(fan_in)
            if self.output == "nominal" and i == len(sizes) - 2:
                w = jnp.zeros_like(w)
            layers.append({"w": w, "b": jnp.zeros((fan_out,))})
        meta_params: MetaParams = {"layers": layers}
        if self.output == "nominal":
            meta_params["log_lr"] = jnp.log(jnp.asarray(self.nominal_lr, jnp.float32))
        return self.extend(meta_params) if self.tensor_features else meta_params

    def extend(self, meta_params: MetaParams) -> MetaParams:
        """``meta_params`` of this optimizer without tensor features, given them with zero weights.

        The weights of the tensor features start at zero, so the returned φ computes the
        same updates as ``meta_params`` does without them (up to float rounding):
        meta-training from a trained φ with ``tensor_features`` switched on starts from
        that optimizer.

        Args:
          meta_params: φ of a `FeatureMLP` with this one's options but ``tensor_features``.

        Returns:
          ``meta_params`` with ``"tensor_w"``, zeros of shape (`num_tensor_features`,
          first hidden width).
        """
        if not self.tensor_features or "tensor_w" in meta_params:
            raise ConfigError("extend needs an optimizer with tensor_features and a φ without them")
        zeros = jnp.zeros((self.num_tensor_features, self.hidden_sizes[0]), jnp.float32)
        return {**meta_params, "tensor_w": zeros}

    def _transformation(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        def advance(meta_params: MetaParams, count: jax.Array) -> tuple[PyTree, tuple[jax.Array]]:
            count = count + 1
            t = count.astype(jnp.float32)
            return (meta_params, t, jnp.tanh(t / jnp.asarray(PROGRESS_SCALES))), (count,)

        return coordinatewise(
            FeatureMLPState,
            [(len(self.momentum_decays),), ()],
            self._update_leaf,
            shared=meta_params,
            dtype=self.state_dtype,
            with_params=self.use_params,
            name="feature_mlp(use_params=True)",
            init_rest=lambda: (jnp.zeros((), jnp.int32),),
            advance=advance,
        )

    def _update_leaf(
        self,
        shared: tuple[MetaParams, jax.Array, jax.Array],
        grad: jax.Array,
        keep: jax.Array,
        momenta: jax.Array,
        v: jax.Array,
        p: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One leaf's update, for `coordinatewise`; ``shared`` is ``(φ, t, progress)``.

        Computed in at least float32 whatever dtype the state is stored in. A
        coordinate outside ``keep`` is left out of the tensor's normalisation too.
        """
        meta_params, t, progress = shared
        sdt = v.dtype
        dt = jnp.promote_types(sdt, jnp.float32)
        zero = jnp.zeros((), dt)
        g = jnp.where(keep, grad.astype(dt), zero)
        d = jnp.asarray(self.momentum_decays).astype(dt).reshape((-1,) + (1,) * g.ndim)
        m, v = momenta.astype(dt), v.astype(dt)
        beta2 = self.second_moment_decay
        new_m = jnp.where(keep, d * m + (1 - d) * g, m)
        new_v = jnp.where(keep, beta2 * v + (1 - beta2) * g * g, v)
        rsqrt = jax.lax.rsqrt(new_v + 1e-12)
        features = [g[None], new_m, new_m * rsqrt, (g * rsqrt)[None]]
        if self.use_params:
            features.append(jnp.where(keep, p.astype(dt), zero)[None])
        out = self._network(meta_params["layers"], features, progress, keep, meta_params.get("tensor_w"))
        if self.output == "nominal":
            nominal_m = new_m[self.momentum_decays.index(NOMINAL_DECAY)]
            m_hat = nominal_m / (1 - jnp.asarray(NOMINAL_DECAY, dt) ** t.astype(dt))
            v_hat = new_v / (1 - jnp.asarray(beta2, dt) ** t.astype(dt))
            adam = m_hat / (jnp.sqrt(v_hat) + 1e-8)
            lr = jnp.exp(meta_params["log_lr"].astype(dt))
            step = jnp.exp(self.exp_mult * out[1]) * (self.step_mult * out[0] - lr * adam)
            unit = lr
        else:
            step = out[0] * jnp.exp(self.exp_mult * out[1]) * self.step_mult
            unit = jnp.asarray(self.step_mult, dt)
        if self.step_bound is not None:
            step = jnp.clip(step, -self.step_bound * unit, self.step_bound * unit)
        if self.warmup_steps is not None:
            step = step * jnp.minimum(1, t.astype(dt) / self.warmup_steps)
        step = jnp.where(keep, step, zero) * self._width_factor(g.shape)
        return step.astype(grad.dtype), new_m.astype(sdt), new_v.astype(sdt)

    def _width_factor(self, shape: tuple[int, ...]) -> float:
        factor, (fan_in, fan_out) = 1.0, _fans(shape)
        if len(shape) >= 2 and self.reference_fan_in is not None:
            factor *= min(1.0, self.reference_fan_in / fan_in)
        if len(shape) >= 1 and self.reference_fan_out is not None:
            factor *= math.sqrt(min(1.0, self.reference_fan_out / fan_out))
        return factor

    def _network(
        self,
        layers: list[MetaParams],
        features: list[jax.Array],
        progress: jax.Array,
        keep: jax.Array,
        tensor_w: jax.Array | None = None,
    ) -> list[jax.Array]:
        """The MLP on ``features`` (arrays of shape (k, *shape), F rows in all); returns its 2 outputs.

        The same maths as dividing each feature by its root mean square over the
        coordinates in ``keep`` and appending progress (and, with ``tensor_w``, the
        tensor features) to every coordinate's features, without that copy: the
        normalisation scales layer 0's rows, and inputs that are the same at every
        coordinate add to layer 0's bias. Leaves of
        ``COORDINATEWISE_MIN_SIZE`` coordinates or more never gather the features
        into one array (see ``_coordinatewise_layers``).
        """
        dt = features[0].dtype
        n = sum(len(f) for f in features)
        weights = [layer["w"].astype(dt) for layer in layers]
        biases = [layer["b"].astype(dt) for layer in layers]
        if self.use_progress:
            biases[0] = biases[0] + progress.astype(dt) @ weights[0][n:]
        weights[0] = weights[0][:n]
        elementwise = keep.size >= COORDINATEWISE_MIN_SIZE
        rows = [f[k] for f in features for k in range(len(f))] if elementwise else None
        x = None if elementwise else jnp.concatenate(features, axis=0)
        if self.normalise_features or tensor_w is not None:
            count_finite = jnp.maximum(jnp.sum(keep), 1).astype(dt)
            zero = jnp.zeros((), dt)
            if elementwise:
                sum_squares = jnp.stack([jnp.sum(jnp.square(jnp.where(keep, r, zero))) for r in rows])
            else:
                sum_squares = jnp.sum(jnp.square(jnp.where(keep, x, zero)), axis=tuple(range(1, x.ndim)))
            mean_squares = sum_squares / count_finite + 1e-12  # inf if squares overflow: rsqrt gives 0
        if self.normalise_features:
            weights[0] = weights[0] * jax.lax.rsqrt(mean_squares)[:, None]
        if tensor_w is not None:
            biases[0] = biases[0] + _tensor_features(mean_squares, keep.shape) @ tensor_w.astype(dt)
        if elementwise:
            return _coordinatewise_layers(rows, weights, biases)
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = jnp.tensordot(w, x, (0, 0)) + b.reshape((-1,) + (1,) * keep.ndim)
            if i < len(layers) - 1:
                x = jax.nn.relu(x)
        return [x[0], x[1]]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor's fan-in, the product of all axes but the last (1 for vectors and scalars), and fan-out, the last axis (1 for scalars)."""
    return (math.prod(shape[:-1]) if len(shape) >= 2 else 1), (shape[-1] if shape else 1)


def _tensor_features(mean_squares: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A tensor's features: each per-coordinate feature's log RMS over it, its log fan-in and log fan-out (`_fans`)."""
    fans = jnp.log(jnp.asarray(_fans(shape), mean_squares.dtype))
    finite = jnp.minimum(mean_squares, jnp.finfo(mean_squares.dtype).max)  # log(inf) · 0 would be NaN
    return jnp.concatenate([0.5 * jnp.log(finite), fans])


def _coordinatewise_layers(x: list[jax.Array], weights: list[jax.Array], biases: list[jax.Array]) -> list[jax.Array]:
    """The MLP (ReLU between layers) on per-feature arrays, as scalar multiply-adds per coordinate.

    ``x[i]`` holds feature i at every coordinate; output j of a layer is
    ``sum_i w[i, j] * x[i] + b[j]``. Written elementwise, the whole network is one
    loop over the coordinates that keeps each coordinate's activations in registers,
    where matrix products with 16 rows would read and write every activation in memory.
    """
    for k, (w, b) in enumerate(zip(weights, biases)):
        x = [sum(w[i, j] * x[i] for i in range(len(x))) + b[j] for j in range(w.shape[1])]
        if k < len(weights) - 1:
            x = [jax.nn.relu(h) for h in x]
    return x


def feature_mlp(
    hidden_sizes: Sequence[int] = (32, 32),
    momentum_decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
    second_moment_decay: float = 0.999,
    use_params: bool = True,
    use_progress: bool = True,
    step_mult: float = 1e-3,
    exp_mult: float = 1e-3,
    output: str = "bounded",
    nominal_lr: float = 1e-2,
    normalise_features: bool = True,
    reference_fan_in: float | None = None,
    state_dtype: str | None = None,
    reference_fan_out: float | None = None,
    step_bound: float | None = None,
    tensor_features: bool = False,
    warmup_steps: int | None = None,
) -> FeatureMLP:
    """A learned optimizer built for generalisation: an MLP over per-coordinate features.

    Args:
      hidden_sizes: widths of the MLP's hidden layers (ReLU).
      momentum_decays: decays of the gradient's moving averages (one feature each,
        and each normalised by the second moment).
      second_moment_decay: decay of the squared gradient's moving average.
      use_params: feed the parameter's value (then ``update`` needs ``params``).
      use_progress: feed tanh(step / τ) for τ in ``PROGRESS_SCALES``.
      step_mult: the update's scale (the step is direction · exp(exp_mult · magnitude) · step_mult).
      exp_mult: how strongly the magnitude output scales the step.
      output: ``"bounded"`` (the network's step alone) or ``"nominal"`` (the network
        corrects and rescales a learned-rate Adam step; see `FeatureMLP`).
      nominal_lr: the Adam learning rate the untrained ``"nominal"`` optimizer starts at.
      normalise_features: divide every feature but progress by its root mean square
        over the tensor (off, the network sees raw magnitudes).
      reference_fan_in: width-aware updates: multiply the update of every tensor of
        two or more axes by min(1, reference_fan_in / fan-in) (see `FeatureMLP`);
        ``None``: off.
      state_dtype: store the momenta and second moment in this floating dtype
        (e.g. ``"bfloat16"``, half the state's memory of float32); ``None``: the
        parameter's dtype, at least float32. The update is computed in at least
        float32 either way.
      reference_fan_out: also multiply the update of every tensor of one or more
        axes, biases included, by √min(1, reference_fan_out / fan-out), fan-out being
        its last axis (see `FeatureMLP`); ``None``: off.
      step_bound: clip every coordinate's step to ±step_bound · η (``"nominal"``) or
        ±step_bound · step_mult (``"bounded"``), before the width factors (see
        `FeatureMLP`); ``None``: off.
      tensor_features: also feed every coordinate its tensor's features: the log root
        mean square over the tensor of each per-coordinate feature, and the tensor's log
        fan-in and log fan-out (see `FeatureMLP`); their weights start at zero.
      warmup_steps: multiply the update of step t (from 1) by min(1, t / warmup_steps),
        shortening the first steps (see `FeatureMLP`); ``None``: off.

    Returns:
      A `FeatureMLP`; ``as_optax(φ)`` is an ``optax.GradientTransformationExtraArgs``.

    Raises:
      ConfigError: for invalid options, or a network of more than `MAX_META_PARAMS`
        meta-parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> opt = feature_mlp()
      >>> tx = opt.as_optax(opt.init(jax.random.key(0)))
      >>> params = {"w": jnp.ones((3, 2))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
      >>> updates["w"].shape
      (3, 2)
    """
    return FeatureMLP(
        hidden_sizes,
        momentum_decays,
        second_moment_decay,
        use_params,
        use_progress,
        step_mult,
        exp_mult,
        output,
        nominal_lr,
        normalise_features,
        reference_fan_in,
        state_dtype,
        reference_fan_out,
        step_bound,
        tensor_features,
        warmup_steps,
    )
