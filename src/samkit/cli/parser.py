"""The argument parser class of the ``samkit`` command line: argument errors in one line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["OneLineErrorParser"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and exit status 2, like every samkit user error.

    argparse's default prints the whole usage block before the error; a mistyped option then
    fills the screen with the options of the subcommand. The line names the subcommand and
    where its help is.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` to stderr and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)
