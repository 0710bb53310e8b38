"""Audit streaming: a durable cursor per sink and audit chain (``idp/auditstream.py``)

A sink (the SIEM webhook, or a node's JSON-lines file) has delivered a chain's sealed events up to ``seq``; the
streamer advances it only once the sink has acknowledged them, so a SIEM outage or a restart loses nothing.

Revision ID: e3a1fed00029
Revises: e3a1fed00026
Create Date: 2026-12-07 16:50:00
"""

import sqlalchemy as sa
from alembic import op

import idp.models

revision = 'e3a1fed00029'
down_revision = 'e3a1fed00026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_stream_cursors',
        sa.Column('sink', sa.String(200), primary_key=True),
        sa.Column('chain', sa.String(64), primary_key=True),
        sa.Column('seq', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('delivered_at', idp.models.UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('audit_stream_cursors')
