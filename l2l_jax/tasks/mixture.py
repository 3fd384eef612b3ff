"""Task mixtures: one learned optimizer meta-trained across several task families.

A ``TaskMixture`` holds weighted member families (e.g. MNIST MLPs of several
widths, depths, activations and batch sizes, or quadratics of several
dimensions) and decides how a meta-step's tasks are shared among them.

Design:

- **Stratified sampling.** Every meta-step of B tasks draws ``split_batch(B)[i]``
  tasks from member i: the counts follow the weights (largest remainder), every
  member gets at least one, and they do not change from step to step. Each
  meta-gradient therefore covers every member, with less variance than drawing
  a member per task or per step at random.
- **Separate programs, not padding.** Members' parameters differ in shape, so a
  batch of tasks cannot be one ``vmap``. Each member is unrolled by its own
  vmapped program inside the one compiled meta-step, and the meta-losses are
  combined there. Padding every member to the largest shape would spend compute
  on the largest member's shape for every task, and would hide the real shapes
  from learned optimizers that read per-tensor structure.
- Variation that keeps the parameters' shapes (e.g. a quadratic's conditioning)
  belongs inside one member family, which can draw it per task in ``sample``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from l2l_jax.checks import positive_float, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import TaskFamily

__all__ = ["TaskMixture"]


class TaskMixture:
    """A weighted mixture of task families, sampled stratified by member.

    Not a ``TaskFamily``: its members' parameters have different shapes, so
    meta-training unrolls each member with its own vmapped program (see the
    module docstring). Weights are relative: they are normalised to sum to 1.

    Args:
      members: ``(family, weight)`` pairs; at least one, each family a
        ``TaskFamily`` and each weight a positive finite number.

    Attributes:
      name: ``"mixture"``, the registry name.
      families: the member families, in the order given.
      weights: the normalised weights (they sum to 1), in the same order.

    Raises:
      ConfigError: if there are no members, a member is not a ``(family,
        weight)`` pair, a family is not a ``TaskFamily`` (a mixture cannot
        contain a mixture) or a weight is not positive and finite; the
        message names the member's index.

    Example:
      >>> from l2l_jax.tasks import QuadraticFamily
      >>> mixture = TaskMixture([(QuadraticFamily(dim=2), 3.0), (QuadraticFamily(dim=5), 1.0)])
      >>> mixture.weights
      (0.75, 0.25)
      >>> mixture.split_batch(8)
      (6, 2)
    """

    name = "mixture"

    def __init__(self, members: Sequence[tuple[TaskFamily, float]]) -> None:
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
            raise ConfigError(f"a task mixture needs at least one (family, weight) member, got {members!r}")
        families, given = [], []
        for i, member in enumerate(members):
            if not isinstance(member, (tuple, list)) or len(member) != 2:
                raise ConfigError(f"mixture member {i} must be a (family, weight) pair, got {member!r}")
            family, weight = member
            if not isinstance(family, TaskFamily):
                raise ConfigError(f"mixture member {i} must be a TaskFamily, got {type(family).__name__}")
            families.append(family)
            given.append(positive_float(f"mixture member {i} weight", weight))
        total = sum(given)
        self.families: tuple[TaskFamily, ...] = tuple(families)
        self.weights: tuple[float, ...] = tuple(w / total for w in given)
        self._given_weights: tuple[float, ...] = tuple(given)

    def split_batch(self, batch_size: int) -> tuple[int, ...]:
        """How many of a meta-step's ``batch_size`` tasks each member gets.

        Member i's quota is q_i = weight_i · batch_size. Each member gets
        max(1, ⌊q_i⌋); the tasks left over go one each to the members with the
        largest q_i - count_i, and if the minimum of one overshoots, the members
        furthest above their quota give one back (ties: the lower index first
        in both cases). The arithmetic is exact (rational), so the result
        depends only on the weights and ``batch_size``.

        Args:
          batch_size: the meta-step's number of tasks.

        Returns:
          One count per member, in member order; each ≥ 1 and they sum to
          ``batch_size``.

        Raises:
          ConfigError: if ``batch_size`` is not a positive integer or is
            smaller than the number of members.
        """
        batch_size = positive_int("batch_size", batch_size)
        n = len(self.families)
        if batch_size < n:
            raise ConfigError(
                f"batch_size {batch_size} is smaller than the task mixture's {n} members: "
                f"every member needs at least one task per meta-step"
            )
        total = sum(Fraction(w) for w in self._given_weights)
        quotas = [Fraction(w) * batch_size / total for w in self._given_weights]
        counts = [max(1, int(q)) for q in quotas]
        # Largest q_i - count_i first; Python's sort is stable, so ties keep member order.
        by_shortfall = sorted(range(n), key=lambda i: quotas[i] - counts[i], reverse=True)
        for i in by_shortfall[: max(0, batch_size - sum(counts))]:
            counts[i] += 1
        while sum(counts) > batch_size:
            over = min((i for i in range(n) if counts[i] > 1), key=lambda i: quotas[i] - counts[i])
            counts[over] -= 1
        return tuple(counts)

    def config(self) -> dict[str, Any]:
        """The options that rebuild this mixture: ``l2l_jax.tasks.get("mixture", **mixture.config())``.

        Each member is recorded by its family's registry name and options, and
        its weight as given (not normalised).
        """
        return {
            "members": [
                {"task": family.name, "options": family.config(), "weight": weight}
                for family, weight in zip(self.families, self._given_weights, strict=True)
            ]
        }

    def __repr__(self) -> str:
        members = ", ".join(
            f"({family!r}, {weight!r})" for family, weight in zip(self.families, self._given_weights, strict=True)
        )
        return f"TaskMixture([{members}])"
