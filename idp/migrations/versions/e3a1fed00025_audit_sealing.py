"""Audit: keyed chains, sealed after append (key_id, mac; seq/prev_hash/hash filled by the sealer)

Events are appended without a lock and sealed (numbered and chained) afterwards, so ``seq``, ``prev_hash`` and
``hash`` become nullable; ``key_id`` and ``mac`` (HMAC of the contents under a key derived from the master secret)
are new, with a partial index of the rows still to seal. Existing chains are marked ``keyed = false``: the first
seal after the upgrade checks their unkeyed hashes and re-links them under the key.

Revision ID: e3a1fed00025
Revises: e3a1fed00024
Create Date: 2026-12-07 16:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = 'e3a1fed00025'
down_revision = 'e3a1fed00024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events') as batch:
        batch.add_column(sa.Column('key_id', sa.String(16), nullable=True))
        batch.add_column(sa.Column('mac', sa.String(64), nullable=True))
        batch.alter_column('seq', existing_type=sa.BigInteger(), nullable=True)
        batch.alter_column('prev_hash', existing_type=sa.String(64), nullable=True)
        batch.alter_column('hash', existing_type=sa.String(64), nullable=True)
    op.create_index('ix_audit_events_unsealed', 'audit_events', ['chain', 'id'],
                    postgresql_where=sa.text('seq IS NULL'), sqlite_where=sa.text('seq IS NULL'))
    with op.batch_alter_table('audit_chain_heads') as batch:
        batch.add_column(sa.Column('keyed', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('audit_chain_heads') as batch:
        batch.drop_column('keyed')
    op.drop_index('ix_audit_events_unsealed', table_name='audit_events')
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_column('mac')
        batch.drop_column('key_id')
