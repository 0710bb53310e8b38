"""SAML: encryption, IdP-initiated SSO, rollover, SLO

Revision ID: a5a3150110a1
Revises: 9c1d0e5256a1
Create Date: 2026-11-28 11:20:00
"""

from alembic import op
import sqlalchemy as sa
import idp.models


revision = 'a5a3150110a1'
down_revision = '9c1d0e5256a1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('saml_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_certificate', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('next_private_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('next_active_at', idp.models.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('saml_service_providers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('slo_binding', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('slo_soap_url', sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column('encryption_certificate', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('encrypt_assertions', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('metadata_url', sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column('metadata_fetched_at', idp.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('app_settings', sa.JSON(), nullable=True))
    # SPs registered before this revision answered logout over HTTP-Redirect only.
    op.execute("UPDATE saml_service_providers SET slo_binding = "
               "'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect' WHERE slo_url IS NOT NULL")
    op.create_table('saml_session_participants',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.String(length=36), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('sp_id', sa.String(length=36), nullable=False),
    sa.Column('name_id', sa.Text(), nullable=False),
    sa.Column('nameid_format', sa.String(length=200), nullable=False),
    sa.Column('session_index', sa.String(length=64), nullable=False),
    sa.Column('created_at', idp.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sp_id'], ['saml_service_providers.id'], name=op.f('fk_saml_session_participants_sp_id_saml_service_providers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_saml_session_participants_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_saml_session_participants')),
    sa.UniqueConstraint('session_id', 'sp_id', name='uq_saml_participant_session_sp')
    )
    with op.batch_alter_table('saml_session_participants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_saml_session_participants_session_id'), ['session_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_saml_session_participants_session_index'), ['session_index'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('saml_session_participants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_saml_session_participants_session_index'))
        batch_op.drop_index(batch_op.f('ix_saml_session_participants_session_id'))
    op.drop_table('saml_session_participants')
    with op.batch_alter_table('saml_service_providers', schema=None) as batch_op:
        batch_op.drop_column('app_settings')
        batch_op.drop_column('metadata_fetched_at')
        batch_op.drop_column('metadata_url')
        batch_op.drop_column('encrypt_assertions')
        batch_op.drop_column('encryption_certificate')
        batch_op.drop_column('slo_soap_url')
        batch_op.drop_column('slo_binding')
    with op.batch_alter_table('saml_keys', schema=None) as batch_op:
        batch_op.drop_column('next_active_at')
        batch_op.drop_column('next_private_enc')
        batch_op.drop_column('next_certificate')
