#!/usr/bin/env python
"""Train the ACE-Step transformer (full or LoRA fine-tuning); see ``acestep_jax/cli/train.py``."""

import sys

from acestep_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
