"""Passkeys (WebAuthn): one row per registered credential

``credential_id`` (base64url) is unique across the hub, so a credential belongs to one user of one workspace;
only the public key (COSE) and the authenticator's signature counter are kept. Apps (OIDC clients, SAML SPs) gain
``require_phishing_resistant_mfa``.

Revision ID: e3a1fed00021
Revises: e3a1fed00020
Create Date: 2026-12-07 16:45:00
"""

import sqlalchemy as sa
from alembic import op

from idp.models import UTCDateTime

revision = 'e3a1fed00021'
down_revision = 'e3a1fed00020'
branch_labels = None
depends_on = None

APP_TABLES = ('oidc_clients', 'saml_service_providers')


def upgrade() -> None:
    op.create_table(
        'mfa_webauthn_credentials',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('user_id', sa.String(36), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('workspace_id', sa.String(36), sa.ForeignKey('workspaces.id', ondelete='CASCADE'), nullable=False),
        sa.Column('credential_id', sa.String(1400), nullable=False),
        sa.Column('public_key', sa.LargeBinary(), nullable=False),
        sa.Column('sign_count', sa.BigInteger(), nullable=False, server_default=sa.text('0')),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('aaguid', sa.String(36), nullable=False, server_default=''),
        sa.Column('transports', sa.String(200), nullable=False, server_default=''),
        sa.Column('discoverable', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('backed_up', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('last_used_at', UTCDateTime(), nullable=True),
        sa.UniqueConstraint('credential_id', name='uq_mfa_webauthn_credential_id'),
    )
    op.create_index('ix_mfa_webauthn_credentials_user_id', 'mfa_webauthn_credentials', ['user_id'])
    op.create_index('ix_mfa_webauthn_credentials_workspace_id', 'mfa_webauthn_credentials', ['workspace_id'])
    for table in APP_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('require_phishing_resistant_mfa', sa.Boolean(), nullable=False,
                                       server_default=sa.false()))


def downgrade() -> None:
    for table in APP_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column('require_phishing_resistant_mfa')
    op.drop_index('ix_mfa_webauthn_credentials_workspace_id', 'mfa_webauthn_credentials')
    op.drop_index('ix_mfa_webauthn_credentials_user_id', 'mfa_webauthn_credentials')
    op.drop_table('mfa_webauthn_credentials')
