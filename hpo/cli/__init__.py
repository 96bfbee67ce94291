"""The `hpo` command: argument handling and Hydra composition (`command.main`), and the verbs.

`main` is the console script; it imports no torch until a verb needs it."""

from __future__ import annotations

from hpo.cli.command import main

__all__ = ["main"]
