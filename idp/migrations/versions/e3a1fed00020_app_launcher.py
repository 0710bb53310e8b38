"""Apps: the launcher (show_in_launcher, description, launcher_position; OIDC initiate_login_uri)

``show_in_launcher`` (default true) hides an app from the employees' launcher, ``description`` is the tile's short
text, ``launcher_position`` the app's place in the config file's ``apps`` list (NULL: registered over the admin API,
listed after them), and an OIDC client's ``initiate_login_uri`` (OIDC Core 4, Third-Party Initiated Login) is where
its tile opens.

Revision ID: e3a1fed00020
Revises: e3a1fed00010
Create Date: 2026-12-07 15:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'e3a1fed00020'
down_revision = 'e3a1fed00010'
branch_labels = None
depends_on = None

TABLES = ('oidc_clients', 'saml_service_providers')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('show_in_launcher', sa.Boolean(), nullable=False, server_default=sa.true()))
            batch.add_column(sa.Column('description', sa.String(300), nullable=True))
            batch.add_column(sa.Column('launcher_position', sa.Integer(), nullable=True))
    with op.batch_alter_table('oidc_clients') as batch:
        batch.add_column(sa.Column('initiate_login_uri', sa.String(2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oidc_clients') as batch:
        batch.drop_column('initiate_login_uri')
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('launcher_position')
            batch.drop_column('description')
            batch.drop_column('show_in_launcher')
