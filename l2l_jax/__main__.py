"""``python -m l2l_jax``: the ``l2l-jax`` command line."""

import sys

from l2l_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
