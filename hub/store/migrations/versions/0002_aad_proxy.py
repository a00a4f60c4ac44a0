"""impersonation mode: the cluster's kube-aad-proxy server name and serving certificate expiry

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('aad_proxy_server_name', sa.String(length=253), nullable=True))
        batch_op.add_column(sa.Column('aad_proxy_expires_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_column('aad_proxy_expires_at')
        batch_op.drop_column('aad_proxy_server_name')
