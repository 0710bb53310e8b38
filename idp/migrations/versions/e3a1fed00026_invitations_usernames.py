"""Invitations (a 7-day set-password link of their own) and SCIM userNames that are not e-mail addresses

``invitations`` holds the SHA-256 of each invitation link's secret, who invited, when it expires, and whether it
was accepted or ended (resent, revoked). ``users.username`` is a SCIM userName that is not the user's e-mail
address (NULL: the userName is the address); ``username_normalized`` (NFKC, case-folded) is unique per workspace;
``users.email_normalized`` becomes nullable (a SCIM user with no address).

Revision ID: e3a1fed00026
Revises: e3a1fed00025
Create Date: 2026-12-07 16:40:00
"""

import sqlalchemy as sa
from alembic import op

from idp.models import UTCDateTime

revision = 'e3a1fed00026'
down_revision = 'e3a1fed00025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'invitations',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('workspace_id', sa.String(36), sa.ForeignKey('workspaces.id', ondelete='CASCADE'), nullable=False),
        sa.Column('user_id', sa.String(36), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('token_hash', sa.String(64), nullable=False, unique=True),
        sa.Column('invited_by', sa.String(320), nullable=False),
        sa.Column('invited_by_name', sa.String(200), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('expires_at', UTCDateTime(), nullable=False),
        sa.Column('accepted_at', UTCDateTime(), nullable=True),
        sa.Column('revoked_at', UTCDateTime(), nullable=True),
        sa.Column('revoked_reason', sa.String(32), nullable=True),
    )
    op.create_index('ix_invitations_workspace_id', 'invitations', ['workspace_id'])
    op.create_index('ix_invitations_user_id', 'invitations', ['user_id'])
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('username', sa.String(320), nullable=True))
        batch.add_column(sa.Column('username_normalized', sa.String(320), nullable=True))
        batch.create_unique_constraint('uq_users_workspace_username', ['workspace_id', 'username_normalized'])
        # a SCIM user with a userName that is not an address and no emails has none (email ''): NULL keys
        # do not collide in the (workspace, email) unique constraint
        batch.alter_column('email_normalized', existing_type=sa.String(320), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.alter_column('email_normalized', existing_type=sa.String(320), nullable=False)
        batch.drop_constraint('uq_users_workspace_username', type_='unique')
        batch.drop_column('username_normalized')
        batch.drop_column('username')
    op.drop_index('ix_invitations_user_id', 'invitations')
    op.drop_index('ix_invitations_workspace_id', 'invitations')
    op.drop_table('invitations')
