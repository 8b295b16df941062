"""The schema of radnode's first release: study, series, instance, job, result, delivery.

Revision ID: 0001
Revises: (none)

Written out column by column, not from the models, so that it stays this schema when they change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(64)


def _state() -> sa.String:
    """The models' Enum(native_enum=False, length=20): a VARCHAR, no CHECK, so states can be added."""
    return sa.String(20)


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", UID, nullable=False, unique=True),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("study.id"), nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False, unique=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.Integer, nullable=True),
        sa.Column("series_description", sa.String(64), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("state", _state(), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instance_series_id", "instance", ["series_id"])
    op.create_table(
        "job",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id"), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("pipeline_version", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("destinations", sa.JSON, nullable=False),
        sa.Column("state", _state(), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("series_id", "pipeline", "revision"),
    )
    op.create_index("ix_job_series_id", "job", ["series_id"])
    op.create_index("ix_job_state", "job", ["state"])
    op.create_table(
        "result",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("job.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_result_job_id", "result", ["job_id"])
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("result.id"), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("state", _state(), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("result_id", "destination"),
    )
    op.create_index("ix_delivery_result_id", "delivery", ["result_id"])
    op.create_index("ix_delivery_state", "delivery", ["state"])


def downgrade() -> None:
    for table in ("delivery", "result", "job", "instance", "series", "study"):
        op.drop_table(table)
