"""Shared test set-up: CPU only, small seeded budgets."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
