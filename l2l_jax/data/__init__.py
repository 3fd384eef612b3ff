"""Data sets: the IDX reader (``idx``), MNIST's download, verification, cache and loading (``mnist``), and the
standard-library text of the character-level language model (``text``).

Every problem with a data file (missing, corrupt, truncated, failed download)
raises `l2l_jax.errors.DataError`.
"""

from l2l_jax.data.idx import read_idx
from l2l_jax.data.mnist import (
    MIRRORS,
    SHA256,
    SHA256_DECOMPRESSED,
    as_float_arrays,
    cache_dir,
    find_mnist_dir,
    load_mnist,
    load_mnist_for_experiment,
    mnist_arrays,
)

__all__ = [
    "MIRRORS",
    "SHA256",
    "SHA256_DECOMPRESSED",
    "as_float_arrays",
    "cache_dir",
    "find_mnist_dir",
    "load_mnist",
    "load_mnist_for_experiment",
    "mnist_arrays",
    "read_idx",
]
