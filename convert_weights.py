"""Convert the ACE-Step v1 checkpoint for acestep-jax (see ``acestep_jax/cli/convert.py``)."""

import sys

from acestep_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
