"""OIDC tokens: indexes on user_id

Deprovisioning (``idp.lifecycle``) revokes every refresh and access token of the account
(``OidcService.revoke_user``), and deleting a user cascades to its refresh tokens: both look tokens up by user.

Revision ID: e3a1fed00002
Revises: e3a1fed00001
Create Date: 2026-12-07 14:00:00
"""

from alembic import op

revision = 'e3a1fed00002'
down_revision = 'e3a1fed00001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_oidc_refresh_tokens_user', 'oidc_refresh_tokens', ['user_id'])
    op.create_index('ix_oidc_access_tokens_user', 'oidc_access_tokens', ['user_id'])


def downgrade() -> None:
    op.drop_index('ix_oidc_access_tokens_user', table_name='oidc_access_tokens')
    op.drop_index('ix_oidc_refresh_tokens_user', table_name='oidc_refresh_tokens')
