"""Create reality_nodes, the tree every other table hangs off.

Revision ID: 0001
Revises:
Create Date: 2024-06-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reality_nodes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("parent_id", sa.BigInteger(), sa.ForeignKey("reality_nodes.id"), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "attributes",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("kind <> ''", name="reality_nodes_kind_not_empty"),
        sa.CheckConstraint("name <> ''", name="reality_nodes_name_not_empty"),
    )
    # The API filters by kind and walks children by parent; both need an index to stay fast.
    op.create_index("ix_reality_nodes_kind", "reality_nodes", ["kind"])
    op.create_index("ix_reality_nodes_parent_id", "reality_nodes", ["parent_id"])


def downgrade() -> None:
    op.drop_table("reality_nodes")
