"""Users: how the e-mail address was verified (email_verified_via)

``email_verified`` in ID tokens and userinfo was true for every address; it is now true only for an address in a
domain the workspace claims (computed when the claim is made) or one whose verification is recorded here:
``mail`` (a link mailed to it was used), ``upstream:<connection slug>`` (a trusted upstream connection asserted it
for one of its domains), or NULL. Existing rows keep NULL: nothing recorded so far proves who owns an address
outside the claimed domains, and the next reset link or upstream sign-in records it.

Revision ID: e3a1fed00001
Revises: c7d1e0a0b004
Create Date: 2026-12-10 09:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = 'e3a1fed00001'
down_revision = 'c7d1e0a0b004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_verified_via', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('email_verified_via')
