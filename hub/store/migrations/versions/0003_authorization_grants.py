"""interactive sign-in: device codes and authorization codes waiting for the token endpoint

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('authorization_grants',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('user_code', sa.String(length=16), nullable=True),
    sa.Column('client_id', sa.String(length=256), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=True),
    sa.Column('credential', sa.String(length=64), nullable=True),
    sa.Column('interval', sa.Integer(), nullable=False),
    sa.Column('last_poll_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('redirect_uri', sa.Text(), nullable=True),
    sa.Column('code_challenge', sa.String(length=128), nullable=True),
    sa.Column('nonce', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['directory_objects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_code')
    )
    with op.batch_alter_table('authorization_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_authorization_grants_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('authorization_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_authorization_grants_expires_at'))
    op.drop_table('authorization_grants')
