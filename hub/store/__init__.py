"""The hub's database: engine and migrations (`db`), tables (`models`), schema history (`migrations`)."""

import logging

# alembic (1.16 on) logs an INFO line per built-in plugin when it is imported: seven lines of
# noise before anything the hub says on every start. Its warnings still show.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
