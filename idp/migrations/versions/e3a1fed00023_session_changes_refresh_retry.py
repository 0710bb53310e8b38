"""Fleet faults: session change records; the answer to a refresh retried within its grace window

``session_changes`` records every session ended or renewed, in the transaction that does it, so every node stops
trusting its cached copy within a second even when the change could not reach Redis. ``retry_answer`` on a used
refresh token is the token response its rotation gave, encrypted with a key derived from the token itself, so a
client that lost the response and retries within the grace window gets the same answer.

Revision ID: e3a1fed00023
Revises: e3a1fed00022
Create Date: 2026-12-07 16:40:00
"""

import sqlalchemy as sa
from alembic import op

import idp.models

revision = 'e3a1fed00023'
down_revision = 'e3a1fed00022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'session_changes',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('session_id', sa.String(64), nullable=False),
        sa.Column('at', idp.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_session_changes')),
    )
    op.create_index(op.f('ix_session_changes_at'), 'session_changes', ['at'], unique=False)
    with op.batch_alter_table('oidc_refresh_tokens') as batch:
        batch.add_column(sa.Column('retry_answer', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oidc_refresh_tokens') as batch:
        batch.drop_column('retry_answer')
    op.drop_index(op.f('ix_session_changes_at'), table_name='session_changes')
    op.drop_table('session_changes')
