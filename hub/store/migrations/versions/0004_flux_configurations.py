"""flux configurations: a cluster's Flux v2 configurations and their reported compliance

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 11:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('flux_configurations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('protected_settings', sa.LargeBinary(), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('observed_generation', sa.Integer(), nullable=False),
    sa.Column('provisioning_state', sa.String(length=32), nullable=False),
    sa.Column('compliance_state', sa.String(length=32), nullable=False),
    sa.Column('statuses', sa.JSON(), nullable=False),
    sa.Column('source_synced_commit_id', sa.String(length=512), nullable=True),
    sa.Column('source_updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cluster_id', 'name')
    )


def downgrade() -> None:
    op.drop_table('flux_configurations')
