"""Sessions: token_hash, the cookie's hash once a step-up renewed it

A step-up gives the browser a new session cookie for the same session record (its id, its OIDC ``sid`` and the
apps that took part in it stay): the record is then found by ``token_hash``, and the old cookie, whose hash is the
id, no longer matches. NULL (every existing row) means the cookie's hash is the id.

Revision ID: e3a1fed00010
Revises: e3a1fed00003
Create Date: 2026-12-07 14:45:00
"""

from alembic import op
import sqlalchemy as sa

revision = 'e3a1fed00010'
down_revision = 'e3a1fed00003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_sessions_token_hash'), ['token_hash'])


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_sessions_token_hash'), type_='unique')
        batch_op.drop_column('token_hash')
