"""agent usage samples: every usage report kept (for a time series), purged with the logs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agent_usage_samples',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('agent', sa.String(length=63), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cpu_millicores', sa.Integer(), nullable=False),
    sa.Column('memory_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('agent_usage_samples', schema=None) as batch_op:
        batch_op.create_index('ix_agent_usage_samples_cluster_agent_ts', ['cluster_id', 'agent', 'ts'], unique=False)


def downgrade() -> None:
    op.drop_table('agent_usage_samples')
