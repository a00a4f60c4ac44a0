"""cluster lists page by subscription (and group) in id order: two indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:00:00.000000
"""

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.create_index('ix_clusters_listing', ['subscription_id', 'id'], unique=False)
        batch_op.create_index('ix_clusters_group_listing', ['subscription_id', 'resource_group', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_index('ix_clusters_group_listing')
        batch_op.drop_index('ix_clusters_listing')
