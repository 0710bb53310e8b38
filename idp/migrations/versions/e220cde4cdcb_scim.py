"""SCIM provisioning: scim_tokens, scim_values, SCIM columns of users and groups

Revision ID: e220cde4cdcb
Revises: dc8c23765b4a
Create Date: 2026-11-28 04:33:05.304286
"""

from alembic import op
import sqlalchemy as sa
import idp.models

revision = 'e220cde4cdcb'
down_revision = 'dc8c23765b4a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scim_tokens',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('created_at', idp.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', idp.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_scim_tokens_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scim_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_scim_tokens_token_hash')),
    sa.UniqueConstraint('workspace_id', 'name', name='uq_scim_tokens_workspace_name')
    )
    with op.batch_alter_table('scim_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scim_tokens_workspace_id'), ['workspace_id'], unique=False)

    op.create_table('scim_values',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner_id', sa.String(length=36), nullable=False),
    sa.Column('attr', sa.String(length=200), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('sub', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=1024), nullable=True),
    sa.Column('folded', sa.String(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_scim_values_owner_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scim_values'))
    )
    with op.batch_alter_table('scim_values', schema=None) as batch_op:
        batch_op.create_index('ix_scim_values_lookup', ['attr', 'sub', 'folded'], unique=False)
        batch_op.create_index(batch_op.f('ix_scim_values_owner_id'), ['owner_id'], unique=False)

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('updated_at', idp.models.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('given_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('family_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('display_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('scim', sa.JSON(), nullable=True))

    # ### end Alembic commands ###


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('scim')
        batch_op.drop_column('display_name')
        batch_op.drop_column('family_name')
        batch_op.drop_column('given_name')
        batch_op.drop_column('external_id')

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('external_id')

    with op.batch_alter_table('scim_values', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scim_values_owner_id'))
        batch_op.drop_index('ix_scim_values_lookup')

    op.drop_table('scim_values')
    with op.batch_alter_table('scim_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scim_tokens_workspace_id'))

    op.drop_table('scim_tokens')
