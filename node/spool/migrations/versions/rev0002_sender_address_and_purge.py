"""Who sent what and to which AE title (audit trail, routes on the called AE title); retention's purge.

Revision ID: 0002
Revises: 0001

series.calling_address, series.called_ae_title, instance.calling_address: '' on existing rows.
purge: one row per study whose files retention removed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("series", sa.Column("calling_address", sa.String(45), nullable=False, server_default=""))
    op.add_column("series", sa.Column("called_ae_title", sa.String(16), nullable=False, server_default=""))
    op.add_column("instance", sa.Column("calling_address", sa.String(45), nullable=False, server_default=""))
    op.create_table(
        "purge",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("study.id"), nullable=False, unique=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("files_removed", sa.Integer, nullable=False),
        sa.Column("bytes_freed", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("purge")
    op.drop_column("instance", "calling_address")
    op.drop_column("series", "called_ae_title")
    op.drop_column("series", "calling_address")
