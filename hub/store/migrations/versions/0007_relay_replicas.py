"""relay replicas: the registry of live relay replicas (id, URL, last heartbeat)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'relay_replicas',
        sa.Column('id', sa.String(length=128), nullable=False),
        sa.Column('url', sa.String(length=512), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('relay_replicas', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_relay_replicas_seen_at'), ['seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('relay_replicas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_relay_replicas_seen_at'))
    op.drop_table('relay_replicas')
