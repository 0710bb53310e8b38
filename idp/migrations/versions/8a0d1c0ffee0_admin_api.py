"""admin API tokens and console

Revision ID: 8a0d1c0ffee0
Revises: 7f3ed1a0c0de
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '8a0d1c0ffee0'
down_revision = '7f3ed1a0c0de'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_api_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=True),
        sa.Column("operator", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", idp.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", idp.models.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", idp.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", idp.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"],
                                name=op.f("fk_admin_api_tokens_workspace_id_workspaces"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_admin_api_tokens_workspace_id"), "admin_api_tokens", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_admin_api_tokens_workspace_id"), table_name="admin_api_tokens")
    op.drop_table("admin_api_tokens")
