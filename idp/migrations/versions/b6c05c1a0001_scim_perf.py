"""SCIM: indexes for the hot paths

Revision ID: b6c05c1a0001
Revises: a5a3150110a1
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = 'b6c05c1a0001'
down_revision = 'a5a3150110a1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # scim/models.py: externalId lookups (Azure AD: filter=externalId eq "…") without a scan of the workspace
    op.create_index('ix_users_workspace_external_id', 'users', ['workspace_id', 'external_id'], unique=False)
    op.create_index('ix_groups_workspace_external_id', 'groups', ['workspace_id', 'external_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_groups_workspace_external_id', table_name='groups')
    op.drop_index('ix_users_workspace_external_id', table_name='users')
