"""`python -m hpo` is the `hpo` console script."""

from __future__ import annotations

import sys

from hpo.cli.command import main

sys.exit(main())
