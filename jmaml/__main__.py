"""``python -m jmaml``: the ``jmaml`` command."""

import sys

from jmaml.experiment.cli import main

sys.exit(main())
