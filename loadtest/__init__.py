"""Benchmarks that back performance claims with figures (see loadtest/README.md)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """Every benchmark's argument parser: a wrong argument is one line naming it, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
