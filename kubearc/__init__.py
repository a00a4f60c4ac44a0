"""The `kubearc` command line: the composition root that wires the parts together.

Nothing imports this package but the console script (`kubearc.cli:main`); the
helpers the parts share live in `foundation`.
"""
