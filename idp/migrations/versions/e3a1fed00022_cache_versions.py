"""Cache versions: one row per kind of change, bumped by every change that per-process caches must forget

Every serving process reads these few rows at most every half second and drops its caches of each kind whose
version moved (idp.invalidation): the fallback when Redis pub/sub does not reach it.

Revision ID: e3a1fed00022
Revises: e3a1fed00021
Create Date: 2026-12-07 16:45:00
"""

import sqlalchemy as sa
from alembic import op

import idp.models

revision = 'e3a1fed00022'
down_revision = 'e3a1fed00021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cache_versions',
        sa.Column('kind', sa.String(40), primary_key=True),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('changed_at', idp.models.UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('cache_versions')
