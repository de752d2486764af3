"""issue 3: partial index on a project's gold tiles

The gold turn of a claim (every 10th task by default) looked for the project's gold tiles
with a scan of all its tiles; with this index it reads only the gold ones.

Revision ID: 0200_gold_index
Revises: 0100_issue5
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200_gold_index"
down_revision = "0100_issue5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tiles", schema=None) as batch_op:
        batch_op.create_index("ix_tiles_gold", ["project_id"], unique=False,
                              sqlite_where=sa.text("gold_answer IS NOT NULL"),
                              postgresql_where=sa.text("gold_answer IS NOT NULL"))


def downgrade() -> None:
    with op.batch_alter_table("tiles", schema=None) as batch_op:
        batch_op.drop_index("ix_tiles_gold")
