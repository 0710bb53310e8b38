"""OIDC: the apps of each idhub session (back-channel logout after the purge)

Revision ID: c7d1e0a0b001
Revises: b6c05c1a0001
Create Date: 2026-12-02 08:00:00
"""

from alembic import op
import sqlalchemy as sa
import idp.models


revision = 'c7d1e0a0b001'
down_revision = 'b6c05c1a0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oidc_session_clients',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.String(length=36), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', idp.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_session_clients_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_oidc_session_clients_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_session_clients')),
    sa.UniqueConstraint('session_id', 'client_id', name='uq_oidc_session_clients_session_client')
    )
    with op.batch_alter_table('oidc_session_clients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_session_clients_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_session_clients_workspace_id'), ['workspace_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oidc_session_clients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_session_clients_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_oidc_session_clients_user_id'))
    op.drop_table('oidc_session_clients')
