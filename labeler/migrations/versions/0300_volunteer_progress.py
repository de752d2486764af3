"""issue 3: a per-volunteer, per-project label counter

Every task handed out needs the number of labels the volunteer gave in the project (gold
interleaving, the progress shown). It was counted from ``labels`` each time: a cost that grew
with each volunteer's work (a dedicated volunteer's thousandth label counted a thousand
rows). The counter is kept by the statements that store labels; this revision creates it
from the labels stored so far.

Revision ID: 0300_volunteer_progress
Revises: 0200_gold_index
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0300_volunteer_progress"
down_revision = "0200_gold_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volunteer_progress",
        sa.Column("volunteer_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["volunteer_id"], ["volunteers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("volunteer_id", "project_id"),
    )
    op.execute("INSERT INTO volunteer_progress (volunteer_id, project_id, labels) "
               "SELECT volunteer_id, project_id, count(*) FROM labels "
               "GROUP BY volunteer_id, project_id")


def downgrade() -> None:
    op.drop_table("volunteer_progress")
