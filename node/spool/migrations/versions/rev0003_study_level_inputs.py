"""Study-level jobs: job.inputs maps each input name to the series chosen for it ({} on existing rows).

Revision ID: 0003
Revises: 0002

The new job state 'waiting' needs no change: states are a VARCHAR(20) without a CHECK.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job", sa.Column("inputs", sa.JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    op.drop_column("job", "inputs")
