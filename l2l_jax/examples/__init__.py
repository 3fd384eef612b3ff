"""Worked examples that reproduce the paper's figures by hand: ``worked_example``."""

from l2l_jax.examples import worked_example

__all__ = ["worked_example"]
