"""`kubearc hub` (being written)."""


def hub() -> None:
    """Run the hub (being written)."""
