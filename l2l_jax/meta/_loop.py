"""Meta-training's loop: compiled calls of meta-steps, validation and checkpoints on their grid, stopping.

A call runs up to ``steps_per_call`` meta-steps and ends on every step that
validates or checkpoints, so the run does not depend on how steps are grouped
into calls. The loop commits whole calls only: the state it holds is always that
of a completed step, which is what an interruption saves.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from l2l_jax.errors import MetaTrainingError, Terminated
from l2l_jax.meta import sharding as sh
from l2l_jax.meta._devices import place, task_constraint
from l2l_jax.meta._signals import signals_deferred
from l2l_jax.meta.horizons import HorizonFn
from l2l_jax.meta.step import Member, MetaTrainState, meta_step
from l2l_jax.optimizers.base import MetaParams

#: ``run_steps(state, num_steps)``: ``num_steps`` meta-steps in one compiled call, metrics stacked along a step axis.
RunSteps = Callable[[MetaTrainState, int], tuple[MetaTrainState, dict[str, jax.Array]]]


class Schedule(NamedTuple):
    """When the loop validates, checkpoints and ends its calls.

    Attributes:
      num_meta_steps: the run's length.
      steps_per_call: the most meta-steps in one compiled call.
      validate_every: validate every this many meta-steps (0: never).
      checkpoint_every: checkpoint every this many meta-steps (and at the end).
    """

    num_meta_steps: int
    steps_per_call: int
    validate_every: int
    checkpoint_every: int

    def call_length(self, done: int) -> int:
        """Steps in the next call: up to ``steps_per_call``, ending on every step that validates or checkpoints."""
        stops = [
            self.num_meta_steps,
            done + self.steps_per_call,
            (done // self.checkpoint_every + 1) * self.checkpoint_every,
        ]
        if self.validate_every:
            stops.append((done // self.validate_every + 1) * self.validate_every)
        return min(stops) - done

    def validates(self, done: int) -> bool:
        """Whether the run validates after step ``done``."""
        return bool(self.validate_every) and done % self.validate_every == 0

    def checkpoints(self, done: int) -> bool:
        """Whether the run checkpoints after step ``done``."""
        return done % self.checkpoint_every == 0 or done == self.num_meta_steps


def compile_steps(
    state: MetaTrainState,
    members: Sequence[Member],
    meta_optimizer: optax.GradientTransformation,
    *,
    horizon: int | HorizonFn,
    task_key: jax.Array,
    perturbation_key: jax.Array,
    truncation: int,
    mesh: sh.Mesh | None,
) -> tuple[MetaTrainState, RunSteps]:
    """``state`` placed on the mesh, and ``run_steps``: a jitted ``lax.scan`` of ``meta_step`` (see ``RunSteps``).

    Tasks and perturbations are drawn from the step number, so the run does not
    depend on how the steps are grouped into calls.
    """
    # Committed (placed explicitly) from the start, as every call returns it: one compilation for the run.
    state = place(state, mesh) if mesh is not None else jax.device_put(state, jnp.asarray(state.step).sharding)
    constrain = task_constraint(mesh)

    def run_steps(state: MetaTrainState, num_steps: int) -> tuple[MetaTrainState, dict[str, jax.Array]]:
        def one(state: MetaTrainState, _: None) -> tuple[MetaTrainState, dict[str, jax.Array]]:
            return meta_step(
                state,
                members,
                meta_optimizer,
                horizon=horizon,
                task_key=task_key,
                perturbation_key=perturbation_key,
                constrain=constrain,
                truncation=truncation,
            )

        return jax.lax.scan(one, state, length=num_steps)

    if mesh is None:
        return state, jax.jit(run_steps, static_argnums=1)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return state, jax.jit(run_steps, static_argnums=1, out_shardings=(state_shardings, sh.replicated(mesh)))


def run_loop(
    state: MetaTrainState,
    history: list[dict[str, Any]],
    *,
    schedule: Schedule,
    run_steps: RunSteps,
    validate: Callable[[MetaParams], jax.Array],
    checkpoint: Callable[[MetaTrainState], None],
    bar: tqdm,
    on_step: Callable[[int, dict[str, Any]], None] | None,
    max_consecutive_skipped: int | None,
    stop: Callable[[], int] | None = None,
) -> MetaTrainState:
    """Runs the meta-steps from ``state`` to the end (or a stop) and returns the last state; extends ``history``.

    Stops early, after a checkpoint, once ``max_consecutive_skipped`` steps in a
    row were skipped (``check_progress`` then says so). On ``KeyboardInterrupt``
    (and ``Terminated``), checkpoints the last completed step with signals held
    off, closes ``bar`` and re-raises.

    ``stop``, for runs over several processes: called after every call, it
    returns the signal that any process received (0: none); the loop then
    checkpoints and raises ``Terminated`` (SIGTERM) or ``KeyboardInterrupt`` at
    the same step on every process. A ``KeyboardInterrupt`` raised in the loop
    itself is then re-raised without a checkpoint, which needs every process.
    """
    try:
        done = int(state.step)
        while done < schedule.num_meta_steps:
            num = schedule.call_length(done)
            new_state, rows = _call(run_steps, state, done, num)
            done += num
            # Only on the grid (calls end there), so extending a finished run
            # validates exactly where a longer run would have.
            if schedule.validates(done):
                new_state = _validated(new_state, validate, done, rows)
            # Commit the steps: `state` only ever holds completed steps, so an
            # interruption anywhere saves a consistent checkpoint.
            history.extend(rows)
            state = new_state
            _show(bar, num, rows, state)
            saved = schedule.checkpoints(done)
            if saved:
                checkpoint(state)
            if on_step is not None:
                for row in rows:
                    on_step(row["step"], row)
            signum = stop() if stop is not None else 0
            if signum:
                if not saved:
                    checkpoint(state)
                bar.close()
                raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt()
            if max_consecutive_skipped is not None and (
                skipped_in_a_row(history, max_consecutive_skipped) >= max_consecutive_skipped
            ):
                if not saved:
                    checkpoint(state)
                break
    except KeyboardInterrupt:
        # `state` is always a completed step: save it so the run resumes from here.
        if stop is None:
            with signals_deferred():
                checkpoint(state)
        bar.close()
        raise
    return state


def _call(
    run_steps: RunSteps, state: MetaTrainState, done: int, num: int
) -> tuple[MetaTrainState, list[dict[str, Any]]]:
    """One compiled call of ``num`` steps after step ``done``: the new state and a metrics row per step."""
    t0 = time.perf_counter()
    new_state, metrics = run_steps(state, num)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}  # One transfer per call.
    seconds = (time.perf_counter() - t0) / num
    rows = [
        {
            "step": done + i + 1,
            "meta_loss": float(metrics["meta_loss"][i]),
            "grad_norm": float(metrics["grad_norm"][i]),
            "skipped": int(metrics["skipped"][i]),
            "seconds": seconds,
        }
        for i in range(num)
    ]
    return new_state, rows


def _validated(
    state: MetaTrainState, validate: Callable[[MetaParams], jax.Array], done: int, rows: list[dict[str, Any]]
) -> MetaTrainState:
    """``state`` with its φ kept as the best if its validation loss is finite and the lowest yet; records it in ``rows``."""
    val = float(validate(state.meta_params))
    rows[-1]["val_loss"] = val
    if math.isfinite(val) and val < float(state.best_val):
        # Placed as the compiled steps return them, so the next call does not compile again.
        state = state._replace(
            best_meta_params=state.meta_params,
            best_val=sh.put(jnp.asarray(val, jnp.float32), state.best_val.sharding),
            best_step=sh.put(jnp.asarray(done, jnp.int32), state.best_step.sharding),
        )
    return state


def _show(bar: tqdm, num: int, rows: Sequence[dict[str, Any]], state: MetaTrainState) -> None:
    """Advances the progress bar by ``num`` steps and sets its postfix from the last row."""
    bar.update(num)
    bar.set_postfix(  # refresh=False: redraws only at tqdm's own interval.
        meta_loss=f"{rows[-1]['meta_loss']:.4g}",
        best_val=f"{float(state.best_val):.4g}",
        skipped=rows[-1]["skipped"],
        refresh=False,
    )


def skipped_in_a_row(history: Sequence[dict[str, Any]], limit: int) -> int:
    """How many of the last meta-steps in ``history`` were skipped in a row, counting up to ``limit``."""
    n = 0
    for i in range(len(history) - 1, -1, -1):
        if i > 0:
            before = history[i - 1]["skipped"]
        else:  # The run's first row counts from 0; any other first row cannot be judged.
            before = 0 if history[i]["step"] == 1 else history[i]["skipped"]
        if n >= limit or history[i]["skipped"] <= before:
            break
        n += 1
    return n


def check_progress(
    state: MetaTrainState,
    history: Sequence[dict[str, Any]],
    num_meta_steps: int,
    limit: int | None,
    run_path: Path | None,
) -> None:
    """Raises ``MetaTrainingError`` if the run stopped on ``limit`` skipped steps in a row or skipped every step."""
    step, skipped = int(state.step), int(state.skipped)
    why = (
        "the meta-loss, the meta-gradient or the updated φ or meta-optimizer state was not finite; "
        "try a smaller meta_lr or a clip_norm, or check the task's loss"
    )
    where = f" (saved in {run_path})" if run_path is not None else ""
    if step < num_meta_steps:
        assert limit is not None
        head = (
            f"every one of the {step} meta-steps was skipped"
            if skipped == step
            else f"the last {skipped_in_a_row(history, limit)} meta-steps (to step {step}) were all skipped"
        )
        raise MetaTrainingError(
            f"{head}, so meta-training stopped at step {step} of {num_meta_steps}: it was not making progress "
            f"(max_consecutive_skipped={limit}); {why}. Its checkpoint and best φ so far{where} are kept"
        )
    if step > 0 and skipped == step:
        raise MetaTrainingError(f"every one of the {step} meta-steps was skipped, so φ is untrained{where}; {why}")
