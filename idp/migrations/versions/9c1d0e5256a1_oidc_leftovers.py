"""OIDC: ES256 keys, jwks_uri, purge

Revision ID: 9c1d0e5256a1
Revises: 8a0d1c0ffee0
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '9c1d0e5256a1'
down_revision = '8a0d1c0ffee0'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ES256 ID tokens per client
    with op.batch_alter_table('oidc_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('id_token_signed_response_alg', sa.String(length=10),
                                      server_default='RS256', nullable=False))
    # the purge deletes by expiry
    with op.batch_alter_table('oidc_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_codes_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('oidc_refresh_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_refresh_tokens_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('oidc_access_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_access_tokens_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oidc_access_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_access_tokens_expires_at'))
    with op.batch_alter_table('oidc_refresh_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_refresh_tokens_expires_at'))
    with op.batch_alter_table('oidc_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_codes_expires_at'))
    with op.batch_alter_table('oidc_clients', schema=None) as batch_op:
        batch_op.drop_column('id_token_signed_response_alg')
