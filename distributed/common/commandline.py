"""Command-line plumbing shared by every command: one-line errors with exit code 2, argparse types."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from distributed.common.errors import UserError


def run_command(main_fn: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
                prog: str = "ppl-avvp") -> int:
    """Run a command's main; bad user input becomes one line on stderr and exit code 2."""
    try:
        return int(main_fn(argv) or 0)
    except UserError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)   # always one line
        return 2
    except FileNotFoundError as err:
        print(f"{prog}: error: file not found: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2 through ``run_command``)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(message)


def int_at_least(low: int, what: str, allow_all: bool = False) -> Callable[[str], int | str]:
    """argparse type: an integer >= ``low`` (or 'all' where allowed), the message naming what it counts."""
    def parse(text: str) -> int | str:
        if allow_all and text.strip().lower() == "all":
            return "all"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse
