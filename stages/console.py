"""What every stage shares: one console, one way to fail on bad input, one way to make its app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from transformers.utils import logging as hf_logging

console = Console(stderr=True)
# transformers' per-checkpoint "Loading weights" bars only clutter stage logs
hf_logging.disable_progress_bar()


@contextmanager
def clear_errors(stage: str) -> Iterator[None]:
    """Turn expected input problems into one readable line and exit code 1.

    Bad data files raise ValueError/FileNotFoundError/KeyError with a message that names
    the file and record; a user should see that message, not a traceback.
    """
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # soft_wrap: each problem stays one line (rich would break it at the terminal width)
        text = escape(str(message))  # a message may hold [brackets]: text, not rich markup
        console.print(f"[bold red]{stage}: error:[/] {text}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None


def stage_app(command: Callable[..., None], doc: str | None) -> typer.Typer:
    """A stage's Typer app: ``command`` is its one command, ``doc`` (the stage module's
    docstring) its help; no shell-completion options."""
    app = typer.Typer(add_completion=False, help=doc)
    app.command()(command)
    return app
