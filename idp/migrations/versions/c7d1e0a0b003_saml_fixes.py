"""SAML: a stored pairwise NameID salt per workspace (persistent NameIDs no longer keyed by IDHUB_SECRET_KEY)

Existing rows keep NULL: the first use after the upgrade stores the salt the running code used to derive from the
secret key (saml.keys.SamlKeys.nameid_salt), so persistent NameIDs already issued do not change.

Revision ID: c7d1e0a0b003
Revises: c7d1e0a0b001
Create Date: 2026-12-02 09:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'c7d1e0a0b003'
down_revision = 'c7d1e0a0b001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('saml_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('nameid_salt', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('saml_keys', schema=None) as batch_op:
        batch_op.drop_column('nameid_salt')
