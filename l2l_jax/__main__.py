from l2l_jax.cli import main
import sys

sys.exit(main())
