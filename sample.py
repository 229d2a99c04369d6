"""Generate music with ACE-Step v1 in JAX (see ``acestep_jax/cli/sample.py``)."""

import sys

from acestep_jax.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
