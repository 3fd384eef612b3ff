"""``l2l-jax`` and ``python -m l2l_jax``: the command line's entry point.

``l2l-jax --help`` and ``l2l-jax --version`` answer at once, without importing JAX;
every command goes to `l2l_jax.cli.main`, which builds the full parser (and whose
``--help`` per command lists every registered task, optimizer and estimator).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: ``l2l-jax --help``: what ``l2l_jax.cli.build_parser().format_help()`` prints 80
#: columns wide (``tests/test_cli.py`` keeps the two equal).
TOP_LEVEL_HELP = """\
usage: l2l-jax [-h] [--version] {demo,meta-train,evaluate,seed-example} ...

l2l-jax: meta-train learned optimizers (Andrychowicz et al., 2016) and compare
them with tuned baselines.

positional arguments:
  {demo,meta-train,evaluate,seed-example}
    demo                meta-train the paper's LSTM on quadratics and compare
                        it with tuned baselines
    meta-train          meta-train a learned optimizer into a run directory
    evaluate            compare a run's learned optimizer with tuned baselines
    seed-example        the worked example, step by step, with exact meta-
                        gradients

options:
  -h, --help            show this help message and exit
  --version             show program's version number and exit
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l2l-jax`` command (see `l2l_jax.cli.main`, which it calls for commands).

    Args:
      argv: the arguments; ``None``: ``sys.argv[1:]``, run as the program.

    Returns:
      The exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(TOP_LEVEL_HELP, end="")
        return 0
    if args == ["--version"]:
        from l2l_jax.version import __version__

        print(f"l2l-jax {__version__}")
        return 0
    from l2l_jax import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
