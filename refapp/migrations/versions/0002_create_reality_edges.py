"""Create reality_edges and a GIN index for attribute queries.

Revision ID: 0002
Revises: 0001
Create Date: 2024-06-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reality_edges",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column(
            "source_id",
            sa.BigInteger(),
            sa.ForeignKey("reality_nodes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "target_id",
            sa.BigInteger(),
            sa.ForeignKey("reality_nodes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("relation", sa.Text(), nullable=False),
        sa.CheckConstraint("source_id <> target_id", name="reality_edges_no_self_link"),
        sa.CheckConstraint("relation <> ''", name="reality_edges_relation_not_empty"),
    )
    op.create_index("ix_reality_edges_source_id", "reality_edges", ["source_id"])
    op.create_index("ix_reality_edges_target_id", "reality_edges", ["target_id"])
    # Containment queries on attributes (attributes @> '{"habitable": true}') use this index.
    op.create_index(
        "ix_reality_nodes_attributes",
        "reality_nodes",
        ["attributes"],
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index("ix_reality_nodes_attributes", table_name="reality_nodes")
    op.drop_table("reality_edges")
