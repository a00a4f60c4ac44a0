"""`kubearc login` (being written)."""

import typer


def login() -> None:
    """Sign in (being written)."""
    raise typer.Exit(2)
