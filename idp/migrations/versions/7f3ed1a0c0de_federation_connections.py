"""federation: upstream connections and identity links

Revision ID: 7f3ed1a0c0de
Revises: 309bd3b806a0
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '7f3ed1a0c0de'
down_revision = '309bd3b806a0'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("protocol", sa.String(length=10), nullable=False),
        sa.Column("preset", sa.String(length=20), nullable=False),
        sa.Column("domains", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("created_at", idp.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", idp.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "slug", name="uq_federation_connections_ws_slug"),
    )
    op.create_index("ix_federation_connections_workspace_id", "federation_connections", ["workspace_id"])
    op.create_table(
        "federation_links",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", idp.models.UTCDateTime(), nullable=False),
        sa.Column("last_signin_at", idp.models.UTCDateTime(), nullable=True),
        sa.Column("last_claims", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["federation_connections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("connection_id", "subject", name="uq_federation_links_conn_subject"),
    )
    op.create_index("ix_federation_links_user_id", "federation_links", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_federation_links_user_id", table_name="federation_links")
    op.drop_table("federation_links")
    op.drop_index("ix_federation_connections_workspace_id", table_name="federation_connections")
    op.drop_table("federation_connections")
