"""extensions: the catalogue of extension types and each cluster's extensions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('extension_types',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('repository', sa.Text(), nullable=False),
    sa.Column('chart', sa.String(length=253), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.Column('default_values', sa.JSON(), nullable=False),
    sa.Column('release_namespace', sa.String(length=63), nullable=False),
    sa.Column('ca_cert', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('extensions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('protected_settings', sa.LargeBinary(), nullable=True),
    sa.Column('target_version', sa.String(length=64), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('observed_generation', sa.Integer(), nullable=False),
    sa.Column('deleting', sa.Boolean(), nullable=False),
    sa.Column('provisioning_state', sa.String(length=32), nullable=False),
    sa.Column('installed_version', sa.String(length=64), nullable=True),
    sa.Column('statuses', sa.JSON(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cluster_id', 'name')
    )


def downgrade() -> None:
    op.drop_table('extensions')
    op.drop_table('extension_types')
