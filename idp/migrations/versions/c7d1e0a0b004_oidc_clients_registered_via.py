"""OIDC: how a client was registered (registered_via: "api" for the admin API and console)

A client registered over the admin API or console has its backchannel_logout_uri and jwks_uri called through
idp.netfetch's SSRF checks; so does the SOAP SingleLogoutService of a SAML app registered there (marked in its
``app_settings``, a JSON column that exists already). The apps the audit log shows were created over the API or the
console before this revision (``admin.app.created``) are marked now; every other row keeps NULL (the config file).

Revision ID: c7d1e0a0b004
Revises: c7d1e0a0b003
Create Date: 2026-12-03 09:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'c7d1e0a0b004'
down_revision = 'c7d1e0a0b003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('oidc_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('registered_via', sa.String(length=16), nullable=True))
    _mark_api_apps()


def _mark_api_apps() -> None:
    """Apps created over the admin API or console before this revision, as the audit log tells."""
    audit = sa.table('audit_events', sa.column('workspace_id', sa.String), sa.column('type', sa.String),
                     sa.column('subject_id', sa.String), sa.column('data', sa.JSON))
    clients = sa.table('oidc_clients', sa.column('workspace_id', sa.String), sa.column('client_id', sa.String),
                       sa.column('registered_via', sa.String))
    sps = sa.table('saml_service_providers', sa.column('id', sa.String), sa.column('workspace_id', sa.String),
                   sa.column('slug', sa.String), sa.column('app_settings', sa.JSON))
    conn = op.get_bind()
    oidc, saml = set(), set()
    for ws, slug, data in conn.execute(sa.select(audit.c.workspace_id, audit.c.subject_id, audit.c.data)
                                       .where(audit.c.type == 'admin.app.created')):
        if not ws or not isinstance(data, dict):
            continue
        if data.get('protocol') == 'oidc' and isinstance(data.get('client_id'), str):
            oidc.add((ws, data['client_id']))
        elif data.get('protocol') == 'saml' and slug:
            saml.add((ws, slug))
    for ws, client_id in sorted(oidc):
        conn.execute(clients.update().where(clients.c.workspace_id == ws, clients.c.client_id == client_id)
                     .values(registered_via='api'))
    for ws, slug in sorted(saml):  # from a metadata_url the marker is there already; pasted metadata had none
        rows = conn.execute(sa.select(sps.c.id, sps.c.app_settings).where(sps.c.workspace_id == ws,
                                                                         sps.c.slug == slug)).all()
        for sp_id in [sp_id for sp_id, settings in rows if not settings]:
            conn.execute(sps.update().where(sps.c.id == sp_id).values(app_settings={'registered_via': 'api'}))


def downgrade() -> None:
    with op.batch_alter_table('oidc_clients', schema=None) as batch_op:
        batch_op.drop_column('registered_via')
