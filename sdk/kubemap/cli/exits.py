"""How a kubemap command ends on an error: one line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from kubemap.cli.outcome import in_cli_words
from kubemap.errors import KubemapError


def exit_with_error(message: str) -> NoReturn:
    """Print `error: message` on stderr and end the command with exit status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def one_line_errors(command: click.Command) -> click.Command:
    """`command`, with kubemap's errors printed as one clear line instead of a traceback,
    their hints in the CLI's words (--backend local, not backend='local')."""
    callback = command.callback
    assert callback is not None

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KubemapError as exc:
            exit_with_error(in_cli_words(str(exc)))

    command.callback = wrapped
    return command
