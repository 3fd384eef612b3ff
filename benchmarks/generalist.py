"""Meta-train the generalist: the feature MLP on a mixture of MNIST MLPs, with PES.

The optimizer is ``feature_mlp`` with the ``"nominal"`` output: untrained, it is
Adam, and meta-training learns the rate and a per-coordinate correction and rescaling
from gradient, momenta at four decays, Adam-normalised momenta, the parameter value and
training progress. The recipes:

* ``v2`` (the default, shipped as ``generalist-v2``): v1's φ with its rate re-chosen, the
  update made width-aware (``reference_fan_in`` 128), meta-trained with PES on a
  cheaper, broader mixture (`V2_MEMBERS`: MNIST MLPs at 28x28, 14x14 and 8x8, two
  scale-augmented) over runs of 100 to 1,000 steps drawn log-uniformly (`V2_CONFIG`);
  after meta-training its optimizer gains `V2_ADDED_OPTIONS` (``reference_fan_out``
  128), which change the update only of tensors with more than 128 outputs.
* ``v3`` (``--recipe v3``, shipped as ``mnist-feature-mlp``): v2
  fine-tuned on the same mixture over runs of 100 to 300 steps (`V3_CONFIG`).
* ``v1`` (``--recipe v1``, shipped as ``generalist-v1``): from scratch on four 28x28
  MNIST MLPs, PES over whole 1,000-step runs (`CONFIG`), then 200-step runs (`FINETUNE`).
* ``v4`` (``--recipe v4``, not shipped): v3 on a broader mixture (`V4_MEMBERS`: v2's
  members, MNIST autoencoders and random quadratics), to test whether v3's losses off
  MNIST come from its MNIST-only mixture (`V4_CONFIG`; the result: the docs).
* ``v5`` (``--recipe v5``, not shipped): v4 over v2's runs of 100 to 1,000 steps (`V5_CONFIG`).
* ``v6`` (``--recipe v6``): v4 with every coordinate's step clipped to `STEP_BOUND` nominal
  steps (the feature MLP's ``step_bound``), in meta-training as after it (`V6_CONFIG`).
* ``v7`` (``--recipe v7``, shipped as ``generalist-v7``): halfway in φ from v2 to v5
  (`INTERPOLATIONS`), with v6's step bound added; it meta-trains v5 first (into
  ``runs/generalist-v5``) if it is not there.
* ``v8`` (``--recipe v8``): the same, halfway from v2 to v6.
* ``v9`` (``--recipe v9``): v5 with a recurrent member added to its mixture (`V9_MEMBERS`: a GRU
  reading 14x14 MNIST row by row), to test whether recurrent networks held out of the
  battery (its character-level LM) need one in meta-training (`V9_CONFIG`).
* ``v10`` (``--recipe v10``): v7's interpolation and step bound with v9 in v5's place.
* ``v11`` (``--recipe v11``): v5 run for 5,000 meta-steps instead of 1,500 (`V11_CONFIG`), to
  test whether more meta-training alone moves the cells v7 ties or loses.
* ``v12`` (``--recipe v12``, shipped as ``generalist``): v7's interpolation and step bound with v11 in
  v5's place; it meta-trains v11 first (into ``runs/generalist-v11``) if it is not there.
* ``v13`` (``--recipe v13``, not shipped): v12 fine-tuned on v11's mixture with the paper's MLP
  weighted `PAPER_WEIGHT` instead of 2 (`V13_CONFIG`), to test whether a meta-objective that
  counts the paper's task more closes its gap to tuned NAG.
* ``v14`` (``--recipe v14``, not shipped): halfway in φ from v12 to v13.
* ``v15`` (``--recipe v15``, not shipped): v13 with the feature MLP's tensor features switched on
  over v12 (`V15_CONFIG`; their weights start at zero, so it starts from v12's updates), to test
  whether an optimizer that sees each tensor's scales and shape can step harder on the paper's
  MLP without stepping harder elsewhere.
* ``v16`` (``--recipe v16``, not shipped): halfway in φ from v12 (its tensor features' weights
  at zero) to v15.
* ``v17`` (``--recipe v17``, not shipped): a new run from v15's φ, 1,000 meta-steps on v11's
  mixture, where the paper's MLP weighs 2 again (`V17_CONFIG`), to test whether more
  meta-training with tensor features keeps v15's gains without its losses; it meta-trains v15
  first (into ``runs/generalist-v15``) if it is not there.
* ``v18`` (``--recipe v18``, not shipped): v15 with the feature MLP's first-step warm-up
  (``warmup_steps`` `WARMUP_STEPS`) set from its first meta-step (`V18_CONFIG`), to test whether
  an optimizer meta-trained with the shorter first step keeps v15's gains without its losses.
* ``v19`` (``--recipe v19``, not shipped): halfway in φ from v12 to v18, with its warm-up.

All use 50-step truncations and the meta-loss Σ_t log f(θ_t), so every member's late,
small losses count.

Writes the run into ``--run-dir`` (resumable: rerun the same command) and, with
``--ship``, copies the best φ on validation into the package under the recipe's name
(`SHIPPED_NAMES`) with its metadata: recipe, architecture, mixture, estimator, compute
spent, the machine, and the held-out battery's figures for that name when the results
file (``--battery``, default ``benchmarks/results/generalisation.json``) has them (run
``benchmarks/generalisation.py --generalist RUN_DIR --label NAME`` first, then
``--ship`` again). A results file that records another φ under that name (an earlier
optimizer shipped as it) is refused, nothing shipped.

    python benchmarks/generalist.py --data-dir DIR                         # meta-train v2 (resumable)
    python benchmarks/generalist.py --recipe v12 --data-dir DIR            # v11, then v12 (resumable)
    python benchmarks/generalist.py --recipe v12 --data-dir DIR --ship     # ... and ship it as generalist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import generalisation
import harness
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import optimizers, pretrained
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, L2LError
from l2l_jax.evaluation import learned_curves, sample_tasks
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.optimizers import LearnedOptimizer

MEMBERS = [
    {"task": "mnist", "options": {"hidden_units": 20, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 128}},
    {"task": "mnist", "options": {"hidden_units": 32, "hidden_layers": 2, "activation": "relu", "batch_size": 64}},
    {"task": "mnist", "options": {"hidden_units": 40, "hidden_layers": 1, "activation": "tanh", "batch_size": 128}},
    {"task": "mnist", "options": {"hidden_units": 64, "hidden_layers": 2, "activation": "sigmoid", "batch_size": 32}},
]

OPTIMIZER_OPTIONS = {
    "hidden_sizes": [16, 16],
    "output": "nominal",
    "nominal_lr": 0.01,
    "step_mult": 0.01,
    "exp_mult": 1.0,
}

CONFIG = MetaTrainConfig(
    task="mixture",
    task_options={"members": MEMBERS},
    optimizer="feature_mlp",
    optimizer_options=OPTIMIZER_OPTIONS,
    estimator="pes",
    estimator_options={"sigma": 0.01, "num_pairs": 2},
    num_meta_steps=300,
    horizon=1000,
    truncation=50,
    batch_size=len(MEMBERS),
    meta_lr=3e-3,
    weighting="log",
    validate_every=100,
    num_val_tasks=4,
    checkpoint_every=10,
    seed=0,
)

#: Stage 2: stage 1's best φ, fine-tuned with PES on 200-step runs (4 truncations of 50).
FINETUNE = MetaTrainConfig.from_dict(
    {**CONFIG.to_dict(), "horizon": 200, "num_meta_steps": 600, "validate_every": 50, "num_val_tasks": 8}
)

#: v2's bound on the meta-gradient's global norm.
CLIP_NORM = 10.0

#: v2: a broader, cheaper mixture: MNIST downsampled to 8x8 and 14x14 beside the 28x28 MLPs
#: (the paper's weighted 2), widths 20 to 256, and two members scale-augmented.
V2_MEMBERS = [
    {"task": "mnist", "options": {**MEMBERS[0]["options"]}, "weight": 2.0},
    {"task": "mnist", "options": {**MEMBERS[1]["options"]}},
    {"task": "mnist", "options": {"hidden_units": 40, "hidden_layers": 1, "activation": "tanh", "batch_size": 128, "image_size": 14}},
    {"task": "mnist", "options": {"hidden_units": 128, "hidden_layers": 1, "activation": "relu", "batch_size": 64, "image_size": 14}},
    {"task": "mnist", "options": {"hidden_units": 64, "hidden_layers": 2, "activation": "sigmoid", "batch_size": 32, "image_size": 8}},
    {
        "task": "scale_augmented",
        "options": {
            "task": "mnist",
            "options": {"hidden_units": 128, "hidden_layers": 1, "activation": "relu", "batch_size": 128, "image_size": 8},
            "min_scale": 0.3,
            "max_scale": 3.0,
        },
    },
    {
        "task": "scale_augmented",
        "options": {
            "task": "mnist",
            "options": {"hidden_units": 256, "hidden_layers": 1, "activation": "relu", "batch_size": 32, "image_size": 8},
            "min_scale": 0.3,
            "max_scale": 3.0,
        },
    },
]  # fmt: skip

#: v2's optimizer: v1's, with width-aware updates (every tensor's update x min(1, 128 / fan-in)).
V2_OPTIMIZER_OPTIONS = {**OPTIMIZER_OPTIONS, "reference_fan_in": 128.0}

#: Options v2's optimizer gains after meta-training, with the same φ: the fan-out factor of
#: `FeatureMLP`, which leaves every tensor with at most 128 outputs as it was.
V2_ADDED_OPTIONS = {"reference_fan_out": 128.0}

#: v2: PES over runs of 100 to 1,000 steps (log-uniform), validated on 200-step runs.
V2_CONFIG = MetaTrainConfig(
    task="mixture",
    task_options={"members": V2_MEMBERS},
    optimizer="feature_mlp",
    optimizer_options=V2_OPTIMIZER_OPTIONS,
    estimator="pes",
    estimator_options={"sigma": 0.01, "num_pairs": 2},
    num_meta_steps=1200,
    horizon=1000,
    min_horizon=100,
    truncation=50,
    batch_size=8,
    meta_lr=1e-3,
    meta_lr_warmup=50,
    clip_norm=CLIP_NORM,
    weighting="log",
    validate_every=100,
    num_val_tasks=16,
    validation_horizon=200,
    checkpoint_every=10,
    seed=1,
)

#: v2 starts from v1's φ (shipped as ``generalist-v1``) with its learning rate η re-chosen for the width scaling.
V2_INIT = "generalist-v1"
#: The learning rates η tried for v2's start (on the mixture's members, initialisations not evaluated).
V2_START_LRS = tuple(float(x) for x in np.logspace(-2, -0.5, 7))

#: v3: v2 (with its added options) fine-tuned on runs of 100 to 300 steps, the horizons the battery
#: evaluates most, from v2 (shipped as ``generalist-v2``); it ships as ``mnist-feature-mlp`` (why: the
#: generalist's page in the docs).
V3_CONFIG = MetaTrainConfig.from_dict(
    {
        **V2_CONFIG.to_dict(),
        "optimizer_options": {**V2_OPTIMIZER_OPTIONS, **V2_ADDED_OPTIONS},
        "horizon": 300,
        "num_meta_steps": 3000,
        "seed": 2,
    }
)
V3_INIT = "generalist-v2"

#: v4: v2's mixture and three members that are neither MNIST classifiers nor battery families:
#: MNIST autoencoders at 8x8 and 14x14, and the paper's random quadratics.
V4_MEMBERS = [
    *V2_MEMBERS,
    {"task": "mnist", "options": {"hidden_units": 32, "hidden_layers": 1, "activation": "relu", "batch_size": 64, "image_size": 8, "objective": "autoencode"}},
    {"task": "mnist", "options": {"hidden_units": 64, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 32, "image_size": 14, "objective": "autoencode"}},
    {"task": "quadratic", "options": {"dim": 20}},
]  # fmt: skip

#: v4: v3's fine-tune (same start, runs, PES and seed) on `V4_MEMBERS`, 12 tasks per meta-step.
V4_CONFIG = MetaTrainConfig.from_dict(
    {**V3_CONFIG.to_dict(), "task_options": {"members": V4_MEMBERS}, "batch_size": 12, "num_meta_steps": 2000}
)

#: v5: v4 over v2's runs of 100 to 1,000 steps, 1,500 meta-steps.
V5_CONFIG = MetaTrainConfig.from_dict({**V4_CONFIG.to_dict(), "horizon": 1000, "num_meta_steps": 1500})

#: v9: v5's mixture and a recurrent member, a GRU reading 14x14 MNIST one row per step (``mnist_rnn``).
V9_MEMBERS = [
    *V4_MEMBERS,
    {"task": "mnist_rnn", "options": {"hidden_size": 32, "batch_size": 32, "image_size": 14}},
]

#: v9: v5 (same start, runs, PES and seed) on `V9_MEMBERS`, 13 tasks per meta-step (v5's 12 and one GRU).
V9_CONFIG = MetaTrainConfig.from_dict(
    {**V5_CONFIG.to_dict(), "task_options": {"members": V9_MEMBERS}, "batch_size": 13}
)

#: v11: v5 (same start, mixture, runs, PES and seed) for 5,000 meta-steps: its first 1,500 are v5's.
V11_CONFIG = MetaTrainConfig.from_dict({**V5_CONFIG.to_dict(), "num_meta_steps": 5000})

#: The step bound κ of v6: no coordinate moves by more than 3 nominal steps (``step_bound``).
STEP_BOUND = 3.0

#: v6: v4 with every coordinate's step bounded by `STEP_BOUND` nominal steps, in meta-training too.
V6_CONFIG = MetaTrainConfig.from_dict(
    {**V4_CONFIG.to_dict(), "optimizer_options": {**V4_CONFIG.optimizer_options, "step_bound": STEP_BOUND}}
)

#: The paper's MLP's weight in v13's mixture (v11's gives it 2, every other member 1).
PAPER_WEIGHT = 6.0
#: The sha256 of the φ v13 starts from: v12, shipped as ``generalist``.
V12_PHI_SHA256 = "0c80fdcd1f39fb8aa566f033e729547c783a5afa66d57d356350e07a61a8f465"
#: v13: v12 fine-tuned on v11's mixture with the paper's MLP weighted `PAPER_WEIGHT`, step bound kept.
V13_CONFIG = MetaTrainConfig.from_dict(
    {
        **V11_CONFIG.to_dict(),
        "task_options": {
            "members": [{**V11_CONFIG.task_options["members"][0], "weight": PAPER_WEIGHT}]
            + V11_CONFIG.task_options["members"][1:]
        },
        "optimizer_options": {**V11_CONFIG.optimizer_options, "step_bound": STEP_BOUND},
        "init": "generalist",
        "init_sha256": V12_PHI_SHA256,
        "meta_lr": 3e-4,
        "num_meta_steps": 1000,
        "seed": 3,
    }
)

#: v15: v13 with tensor features switched on over v12 (their weights start at zero, so v15 starts from v12).
V15_CONFIG = MetaTrainConfig.from_dict(
    {**V13_CONFIG.to_dict(), "optimizer_options": {**V13_CONFIG.optimizer_options, "tensor_features": True}}
)

#: v17: a new run from v15's φ on v11's mixture (the paper's MLP weighted 2 again), seed 4, 1,000 meta-steps; its
#: ``init`` (v15's run directory, beside v17's) is set by `stages_for`.
V17_CONFIG = MetaTrainConfig.from_dict(
    {
        **V15_CONFIG.to_dict(),
        "task_options": V11_CONFIG.task_options,
        "init": None,
        "init_sha256": None,
        "seed": 4,
    }
)

#: The first-step warm-up of v18 (``warmup_steps``, a free option of the feature MLP: no weights).
WARMUP_STEPS = 2
#: v18: v15 (same start, mixture, runs, PES and seed) with the warm-up set over v12 from its first meta-step.
V18_CONFIG = MetaTrainConfig.from_dict(
    {**V15_CONFIG.to_dict(), "optimizer_options": {**V15_CONFIG.optimizer_options, "warmup_steps": WARMUP_STEPS}}
)

#: The fine-tunes (each starts from `V3_INIT` unless its config's ``init`` names another φ):
#: recipe -> (config, what it is).
FINETUNES = {
    "v3": (V3_CONFIG, "the generalist fine-tuned on short runs"),
    "v4": (V4_CONFIG, "v3 on a broader mixture"),
    "v5": (V5_CONFIG, "v4 over 100- to 1,000-step runs"),
    "v6": (V6_CONFIG, "v4 with each coordinate's step bounded"),
    "v9": (V9_CONFIG, "v5 with a recurrent member"),
    "v11": (V11_CONFIG, "v5 for 5,000 meta-steps"),
    "v13": (V13_CONFIG, "v12 fine-tuned with the paper's MLP weighted 3 times as much"),
    "v15": (V15_CONFIG, "v13 with tensor features switched on over v12"),
    "v17": (V17_CONFIG, "a new run from v15's φ on v11's mixture, 1,000 meta-steps"),
    "v18": (V18_CONFIG, "v15 meta-trained with the first-step warm-up"),
}
#: Fine-tunes that continue another fine-tune's run, which they meta-train first if it is not there:
#: recipe -> the recipe they continue.
CONTINUES = {"v17": "v15"}
#: Recipes whose φ lies between a fine-tune's start (`start_of`) and its end, (1 − α) φ_start + α φ_fine-tune
#: (weight-space ensembling, WiSE-FT: Wortsman et al., 2022), with options added after meta-training:
#: recipe -> (fine-tune recipe, α, added options, what it is).
INTERPOLATIONS = {
    "v7": ("v5", 0.5, {"step_bound": STEP_BOUND}, "halfway from v2 to v5, with v6's step bound"),
    "v8": ("v6", 0.5, {"step_bound": STEP_BOUND}, "halfway from v2 to v6, with its step bound"),
    "v10": ("v9", 0.5, {"step_bound": STEP_BOUND}, "halfway from v2 to v9, with v6's step bound"),
    "v12": ("v11", 0.5, {"step_bound": STEP_BOUND}, "halfway from v2 to v11, with v6's step bound"),
    "v14": ("v13", 0.5, {}, "halfway from v12 to v13"),
    "v16": ("v15", 0.5, {}, "halfway from v12 to v15"),
    "v19": ("v18", 0.5, {}, "halfway from v12 to v18, with its warm-up"),
}
#: Every recipe, with what it is.
RECIPES = {
    "v1": "the first generalist's two stages",
    "v2": "v2, the generalist before v7",
    **{name: about for name, (_, about) in FINETUNES.items()},
    **{name: about for name, (*_, about) in INTERPOLATIONS.items()},
}
#: The name each recipe's ``--ship`` exports to.
SHIPPED_NAMES = {
    "v1": "generalist-v1",
    "v2": "generalist-v2",
    "v3": "mnist-feature-mlp",
    "v7": "generalist-v7",
    "v12": "generalist",
}
#: The name the battery gives each recipe's optimizer (``--label``): its shipped name, else ``generalist-<recipe>``.
LABELS = {name: SHIPPED_NAMES.get(name, f"generalist-{name}") for name in RECIPES}


def base_member(member: dict[str, Any]) -> dict[str, Any]:
    """The member itself, or for a scale-augmented one the member it wraps (``task`` and ``options``)."""
    if member["task"] == "scale_augmented":
        return base_member(member["options"])
    return member


def with_data_dir(config: MetaTrainConfig, data_dir: str | None) -> MetaTrainConfig:
    """``config`` with ``data_dir`` set on every member whose task takes one (``None`` keeps the library's lookup)."""

    def set_dir(task: str, options: dict[str, Any]) -> dict[str, Any]:
        if task == "scale_augmented":
            return {**options, "options": set_dir(options["task"], options["options"])}
        return {**options, "data_dir": data_dir} if "data_dir" in tasks_lib.options(task) else options

    members = [{**m, "options": set_dir(m["task"], m["options"])} for m in config.task_options["members"]]
    return MetaTrainConfig.from_dict({**config.to_dict(), "task_options": {"members": members}})


def without_data_dir(value: Any) -> Any:
    """``value`` (JSON) with every ``"data_dir"`` entry set to ``None``."""
    if isinstance(value, dict):
        return {k: None if k == "data_dir" else without_data_dir(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_data_dir(v) for v in value]
    return value


def steps_done(run_dir: Path) -> int:
    """The meta-steps a run directory has recorded (0 if it has none)."""
    path = run_dir / rd.METRICS
    return max((r["step"] for r in rd.read_metrics(path)), default=0) if path.exists() else 0


def battery_rows(results: Path, name: str, phi: Any) -> list[dict] | None:
    """The rows of optimizer ``name`` in the held-out battery's results file, if there is one.

    Raises:
      ConfigError: if the file records the φ it ran under ``name`` (``phi_sha256``, as
        ``generalisation.fingerprint`` computes it) and that is not ``phi``: its rows are
        another optimizer's.
    """
    if not results.exists():
        return None
    battery = json.loads(results.read_text())
    recorded = battery.get("phi_sha256", {}).get(name)
    if recorded is not None and recorded != generalisation.fingerprint(phi):
        raise ConfigError(
            f"{results}: its rows named {name!r} are of another φ than this recipe's; run the battery on this "
            f"optimizer under that name (generalisation.py --generalist RUN_DIR --label {name}) or pass --battery"
        )
    return [r for r in battery["rows"] if r["optimizer"] == name] or None


def start_for_v2(
    optimizer: Any, phi: Any, config: MetaTrainConfig, inits: int, steps: int
) -> tuple[Any, dict[str, Any]]:
    """v1's φ with η set to the rate in `V2_START_LRS` that gives the lowest mean log loss on v2's members.

    Each member runs ``inits`` initialisations (seed 7, the tuning stream: not the
    battery's) for ``steps`` steps; the score is the mean of log f over steps, inits and members.
    """
    families = config.build_task().families
    runs = [sample_tasks(f, 7, inits, "tune") for f in families]
    scores = []
    for lr in V2_START_LRS:
        candidate = {**phi, "log_lr": jnp.log(jnp.asarray(lr, jnp.float32))}
        curves = [learned_curves(optimizer, candidate, f, r, steps) for f, r in zip(families, runs)]
        scores.append(float(np.mean([np.mean(np.log(c)) for c in curves])))
    best = V2_START_LRS[int(np.nanargmin(scores))]
    record = {"source": V2_INIT, "lrs": list(V2_START_LRS), "scores": scores, "chosen_lr": best}
    return {**phi, "log_lr": jnp.log(jnp.asarray(best, jnp.float32))}, record


def recorded_start(run_dir: Path) -> dict[str, Any] | None:
    """The record of how v2's start was chosen, kept in a finished run's ``optimizer.json`` by an earlier call."""
    path = run_dir / rd.OPTIMIZER_META
    return rd.read_json(path).get("training", {}).get("start") if path.exists() else None


def stages_for(args: argparse.Namespace) -> list[tuple[MetaTrainConfig, int, Path]]:
    """The recipe's stages: (config, meta-steps, run directory)."""
    if args.recipe == "v1":
        return [
            (CONFIG, args.meta_steps or CONFIG.num_meta_steps, args.run_dir),
            (
                FINETUNE,
                args.finetune_steps or FINETUNE.num_meta_steps,
                args.run_dir.with_name(args.run_dir.name + "-finetune"),
            ),
        ]
    if args.recipe in INTERPOLATIONS:
        source = INTERPOLATIONS[args.recipe][0]
        config = FINETUNES[source][0]
        return [(config, args.meta_steps or config.num_meta_steps, args.run_dir.parent / f"generalist-{source}")]
    if args.recipe in CONTINUES:
        source = CONTINUES[args.recipe]
        source_config, source_dir = FINETUNES[source][0], args.run_dir.parent / f"generalist-{source}"
        config = dataclasses.replace(FINETUNES[args.recipe][0], init=str(source_dir))
        return [
            (source_config, args.meta_steps or source_config.num_meta_steps, source_dir),
            (config, args.finetune_steps or config.num_meta_steps, args.run_dir),
        ]
    config = V2_CONFIG if args.recipe == "v2" else FINETUNES[args.recipe][0]
    return [(config, args.meta_steps or config.num_meta_steps, args.run_dir)]


def finetune_config(recipe: str) -> MetaTrainConfig:
    """The config of a fine-tune recipe, or of an interpolation's fine-tune."""
    return FINETUNES[INTERPOLATIONS[recipe][0] if recipe in INTERPOLATIONS else recipe][0]


def start_of(recipe: str) -> str:
    """The shipped φ a fine-tune recipe, or an interpolation's fine-tune, starts from (a continuation: its source's)."""
    return start_of(CONTINUES[recipe]) if recipe in CONTINUES else finetune_config(recipe).init or V3_INIT


def continuation_start(recipe: str, source_dir: Path) -> dict[str, Any]:
    """The start of a continuation (`CONTINUES`): the run it continues, its φ's sha256, and where that run began."""
    return {
        "source": str(source_dir),
        "recipe": CONTINUES[recipe],
        "phi_sha256": rd.optimizer_params_sha256(source_dir),
        "source_start": start_of(recipe),
    }


def trained_config(recipe: str, configs: list[MetaTrainConfig]) -> MetaTrainConfig:
    """The config whose mixture the recipe's φ was meta-trained on last: a continuation's own, else the first stage's."""
    return configs[-1] if recipe in CONTINUES else configs[0]


def interpolate(recipe: str, source_dir: Path, dest: Path) -> LearnedOptimizer:
    """Writes ``recipe``'s optimizer into ``dest`` from the fine-tune in ``source_dir`` (see `INTERPOLATIONS`)."""
    _, alpha, added, _ = INTERPOLATIONS[recipe]
    start_name = start_of(recipe)
    tuned_optimizer, tuned = pretrained.load_meta_params(source_dir)
    start_optimizer, start = pretrained.load_meta_params(start_name)
    # A fine-tune may have switched on extensions over its start (`FINETUNES`' optimizer options): the start
    # gets them at the weights that change nothing (``extend``); and set free options, which have no weights.
    switched_on = start_optimizer.switched_on(tuned_optimizer.config())
    free = tuned_optimizer.freely_set(tuned_optimizer.config())
    if {**tuned_optimizer.config(), **added} != {**start_optimizer.config(), **switched_on, **free, **added}:
        raise ConfigError(f"{source_dir} is not a fine-tune of {start_name}: their optimizers differ")
    if switched_on:
        start = tuned_optimizer.extend(start)
    start_sha = rd.optimizer_params_sha256(pretrained.locate(start_name))
    pinned = finetune_config(recipe).init_sha256
    if pinned is not None and start_sha != pinned:
        raise ConfigError(
            f"{recipe} starts from the {start_name} whose φ has sha256 {pinned}; the {start_name} installed now "
            f"has {start_sha}"
        )
    phi = jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, start, tuned)
    optimizer = optimizers.get(tuned_optimizer.name, **{**tuned_optimizer.config(), **added})
    record = {
        "start": start_name,
        "start_phi_sha256": start_sha,
        "finetune": str(source_dir),
        "finetune_phi_sha256": rd.optimizer_params_sha256(source_dir),
        "alpha": alpha,
    }
    meta = {**rd.read_optimizer_meta(source_dir), "optimizer_config": optimizer.config()}
    dest.mkdir(parents=True, exist_ok=True)
    rd.save_optimizer(dest, {**meta, "added_after_training": added, "interpolation": record}, phi)
    return optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="v2",
        help="; ".join(f"{name}: {about}" for name, about in RECIPES.items()),
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="default runs/generalist-<recipe>; v1's stage 2 goes to <run-dir>-finetune; v7's, v8's, v10's, "
        "v12's, v14's, v16's and v19's fine-tunes to generalist-v5, -v6, -v9, -v11, -v13, -v15 and -v18 "
        "beside it (v17's first stage to generalist-v15 too)",
    )
    parser.add_argument("--meta-steps", type=harness.count, default=None, help="(v1, v17: stage 1's)")
    parser.add_argument("--finetune-steps", type=harness.count, default=None, help="v1, v17: stage 2's")
    parser.add_argument("--horizon", type=harness.count, default=None, help="every stage's (for quick checks)")
    parser.add_argument("--truncation", type=harness.count, default=None, help="every stage's (for quick checks)")
    parser.add_argument("--val-tasks", type=harness.count, default=None, help="every stage's (for quick checks)")
    parser.add_argument(
        "--start-inits", type=harness.count, default=4, help="v2: initialisations per member when choosing η"
    )
    parser.add_argument("--start-steps", type=harness.count, default=200, help="v2: steps per run when choosing η")
    parser.add_argument(
        "--ship", action="store_true", help=f"ship the best φ as pretrained {SHIPPED_NAMES} (by recipe)"
    )
    parser.add_argument(
        "--battery",
        type=Path,
        default=None,
        help="the battery's results file whose rows go into the metadata (default: <results-dir>/generalisation.json)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS, help="where generalisation.json lies")
    harness.add_data_dir_option(parser)
    args = parser.parse_args()
    args.run_dir = args.run_dir or Path(f"runs/generalist-{args.recipe}")
    quick = {"horizon": args.horizon, "truncation": args.truncation, "num_val_tasks": args.val_tasks}
    quick = {k: v for k, v in quick.items() if v is not None}
    if quick.get("horizon") is not None:  # Quick checks: fixed horizons no longer than the one given.
        quick.update(min_horizon=None, validation_horizon=None)
    if args.ship and args.recipe not in SHIPPED_NAMES:
        parser.error(f"--ship: recipe {args.recipe} is not shipped (the generalist's page in the docs says why)")
    if args.ship and (quick or args.start_inits != 4 or args.start_steps != 200):
        parser.error("--ship ships the documented recipe: drop --horizon, --truncation, --val-tasks and --start-*")
    stages = stages_for(args)
    members = max(len(config.task_options["members"]) for config, _, _ in stages)
    if args.val_tasks is not None and args.val_tasks < members:
        parser.error(f"--val-tasks {args.val_tasks}: validation takes at least one task of each of {members} members")
    try:
        run(args, stages, quick)
    except L2LError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace, stages: list[tuple[MetaTrainConfig, int, Path]], quick: dict[str, Any]) -> None:
    """Meta-trains the recipe's stages (each resumed if begun, kept if finished), records and ships it."""
    t0 = time.perf_counter()
    phi, start = None, None
    seconds, optimizee_steps, configs = [], 0, []
    for base, steps, run_dir in stages:
        config = MetaTrainConfig.from_dict({**base.to_dict(), **quick, "num_meta_steps": steps})
        config = with_data_dir(config, args.data_dir)
        finished = steps_done(run_dir) >= steps  # A finished stage is kept as it is.
        if args.recipe == "v2":
            start = recorded_start(run_dir) if finished else None
            if start is None:
                _, v1_phi = pretrained.load_meta_params(V2_INIT)
                phi, start = start_for_v2(config.build_optimizer(), v1_phi, config, args.start_inits, args.start_steps)
            print(f"v2 starts from {V2_INIT} with η = {start['chosen_lr']:.4g}", flush=True)
        elif args.recipe in FINETUNES or args.recipe in INTERPOLATIONS:
            # A config that names its start (``init``) loads it itself, and checks its checksum.
            phi = None if config.init is not None else pretrained.load_meta_params(start_of(args.recipe))[1]
        if not finished:
            meta_train(config, run_dir, progress=not args.no_progress, init_meta_params=phi)
        optimizer, phi = pretrained.load_meta_params(run_dir)
        metrics = rd.read_metrics(run_dir / rd.METRICS)
        seconds.append(sum(r["seconds"] for r in metrics))
        optimizee_steps += (
            len(metrics) * config.batch_size * config.estimator_option("num_pairs") * 2 * config.truncation
        )
        configs.append(config)
    final_dir = stages[-1][2]
    if args.recipe in CONTINUES:
        start = continuation_start(args.recipe, stages[0][2])
    elif args.recipe in FINETUNES or args.recipe in INTERPOLATIONS:
        name = start_of(args.recipe)
        start = {"source": name, "phi_sha256": rd.optimizer_params_sha256(pretrained.locate(name))}
    if args.recipe in INTERPOLATIONS:
        optimizer, final_dir = interpolate(args.recipe, final_dir, args.run_dir), args.run_dir
    if args.recipe == "v2":
        optimizer = optimizers.get(optimizer.name, **{**optimizer.config(), **V2_ADDED_OPTIONS})
        rd.update_optimizer_meta(final_dir, optimizer_config=optimizer.config(), added_after_training=V2_ADDED_OPTIONS)
    optimizer_meta = rd.read_json(final_dir / rd.OPTIMIZER_META)
    training = {
        "recipe": args.recipe,
        "machine": harness.describe_machine(),
        "command": harness.command(),
        "meta_training_seconds": sum(seconds),
        "stage_seconds": seconds,
        "meta_steps": [c.num_meta_steps for c in configs],
        "optimizee_steps": optimizee_steps,
        "best_step": optimizer_meta["best_step"],
        "best_val_loss": optimizer_meta["best_val_loss"],
    }
    if start is not None:
        training["start"] = start
    print(json.dumps(training, indent=1))
    # Data directories are where the data lay on the training machine: recorded without them.
    keys = (
        "estimator",
        "estimator_options",
        "horizon",
        "min_horizon",
        "truncation",
        "weighting",
        "num_meta_steps",
        "meta_lr",
    )
    rd.update_optimizer_meta(
        final_dir,
        **{k: without_data_dir(optimizer_meta[k]) for k in ("task_options", "task_config", "training_config")},
        stage1=without_data_dir(configs[0].to_dict()),
        architecture={"optimizer": optimizer.name, "options": optimizer.config()},
        mixture=with_data_dir(trained_config(args.recipe, configs), None).task_options["members"],
        estimator=[{k: c.to_dict()[k] for k in keys} for c in configs],
        training=training,
        data=tasks_lib.get("mnist", data_dir=args.data_dir).data_record,
        evaluation=battery_rows(
            args.battery or args.results_dir / "generalisation.json",
            LABELS[args.recipe],
            pretrained.load_meta_params(final_dir)[1],
        ),
    )
    print(f"meta-training {(time.perf_counter() - t0) / 60:.1f} min in this call")
    if args.ship:
        print(f"shipped as {pretrained.export(final_dir, pretrained.SHIPPED_DIR / SHIPPED_NAMES[args.recipe])}")


if __name__ == "__main__":
    main()
