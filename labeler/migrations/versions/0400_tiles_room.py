"""issue 3: the claim's queue holds only the tiles it may take

A claim walks the project's tiles in queue order (closest to completion first) and takes the
first one with room: ``label_count + lease_count`` below the target. The tiles at the top of
the queue are the ones volunteers are working on, so most of them are full with live leases,
and every claim walked past all of those: about 80 tiles per claim with 200 volunteers at
work, ten times that with 2,000. This revision adds ``tiles.has_room`` (kept by the statements
that change the two counters) and a partial index over the tiles a claim may take.

Revision ID: 0400_tiles_room
Revises: 0300_volunteer_progress
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0400_tiles_room"
down_revision = "0300_volunteer_progress"
branch_labels = None
depends_on = None

_WHERE = "state = 'live' AND has_room AND gold_answer IS NULL AND NOT tutorial"


def upgrade() -> None:
    from labeler.projects import project_target, set_room

    # plain ALTER TABLE on both backends: a batch "move and copy" of ``tiles`` on SQLite would
    # drop the table, and with foreign keys on, every label and lease with it
    op.add_column("tiles", sa.Column("has_room", sa.Boolean(), nullable=False,
                                     server_default=sa.true()))
    conn = op.get_bind()
    for pid, redundancy, retirement in conn.execute(sa.text(
            "SELECT id, redundancy, retirement FROM projects")).all():
        if isinstance(retirement, str):  # SQLite hands JSON back as text here
            import json

            retirement = json.loads(retirement)
        set_room(conn, pid, project_target(retirement or {}, redundancy))
    op.create_index("ix_tiles_room", "tiles", ["project_id", "label_count", "id"], unique=False,
                    sqlite_where=sa.text(_WHERE), postgresql_where=sa.text(_WHERE))


def downgrade() -> None:
    op.drop_index("ix_tiles_room", table_name="tiles")
    op.execute("ALTER TABLE tiles DROP COLUMN has_room")  # SQLite >= 3.35, see upgrade()
