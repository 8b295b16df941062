"""Alembic's entry point, configured in code by ``node.db.migration_config`` (no alembic.ini).

It runs on the connection ``node.db`` hands it, inside the transaction that holds the upgrade lock,
so that a stamp and the upgrade after it are one unit. A new revision (a model changed): put the
next ``versions/revNNNN_*.py`` by hand, or let Alembic draft it against a database at head::

    alembic.command.revision(migration_config(connection), "what changed", autogenerate=True,
                             rev_id="0004")

and rename the file ``rev0004_…``; ``tests/test_migrations.py`` checks head against the models.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from node.db import Base, radnode_table

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("radnode's migrations run on a connection from node.db.migration_config")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_name=radnode_table,  # a shared database may hold other tables (the SQL broker's)
)
with context.begin_transaction():
    context.run_migrations()
