"""Serve ACE-Step v1 generation over HTTP (see ``acestep_jax/cli/serve.py``)."""

import sys

from acestep_jax.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
