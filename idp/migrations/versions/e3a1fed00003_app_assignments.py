"""Apps: assigned groups (who may use which app)

``assigned_groups`` on OIDC clients and SAML service providers: NULL means everyone in the workspace (as before),
a JSON list of group names means only members of those groups, ``[]`` nobody.

Revision ID: e3a1fed00003
Revises: e3a1fed00002
Create Date: 2026-12-07 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'e3a1fed00003'
down_revision = 'e3a1fed00002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('oidc_clients') as batch:
        batch.add_column(sa.Column('assigned_groups', sa.JSON(), nullable=True))
    with op.batch_alter_table('saml_service_providers') as batch:
        batch.add_column(sa.Column('assigned_groups', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('saml_service_providers') as batch:
        batch.drop_column('assigned_groups')
    with op.batch_alter_table('oidc_clients') as batch:
        batch.drop_column('assigned_groups')
