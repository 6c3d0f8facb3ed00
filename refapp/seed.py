"""Fill a migrated database with a reproducible universe: ``python -m refapp.seed [--scale N]``.

It inserts row by row through ``refapp.db`` in small transactions, as real applications
seed, which is exactly why it is slow and why pytest-dbsnap restores a dump instead.
The generator uses a fixed random seed and fixed timestamps, so two runs into two empty
databases produce identical rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import psycopg

from refapp import db, settings

DEFAULT_SCALE = 40_000  # ~20 s on a 2-core machine, while its dump restores in ~0.5 s
RANDOM_SEED = 20240601
COMMIT_EVERY = 50
EPOCH = datetime(2024, 6, 1, tzinfo=UTC)

# Which kinds may hang under which: the seed only ever builds trees that obey this.
CHILD_KINDS: dict[str, tuple[str, ...]] = {
    "universe": ("galaxy",),
    "galaxy": ("star_system", "star_system", "star_system", "nebula"),
    "star_system": ("star", "planet", "planet", "planet"),
    "planet": ("moon", "continent", "continent"),
    "continent": ("city",),
    "moon": ("outpost",),
}
RELATIONS = ("orbits", "trades_with", "allied_with", "at_war_with", "portal_to", "mirrors")
SYLLABLES = (
    "ka", "zor", "vel", "tri", "on", "mar", "qua", "lis", "dra", "nex", "por", "um",
    "sel", "ari", "bex", "tho", "yun", "gal", "rho", "ix", "ven", "cor", "ely", "sa",
)  # fmt: skip


@dataclass(frozen=True)
class NodeSpec:
    parent_index: int | None
    kind: str
    name: str
    attributes: dict[str, Any]
    created_at: datetime


def _name(rng: Random, kind: str) -> str:
    base = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    if kind in ("star_system", "planet") and rng.random() < 0.4:
        return f"{base}-{rng.randint(1, 999)}"
    if kind == "moon":
        return f"{base} {rng.choice(('I', 'II', 'III', 'IV', 'V'))}"
    return base


def _attributes(rng: Random, kind: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"stability": round(rng.random(), 4)}
    if kind == "universe":
        attrs |= {
            "age_gyr": round(rng.uniform(1, 40), 2),
            "dimensions": rng.choice((3, 3, 3, 4, 11)),
            "constants": {
                "c": rng.choice((299792458, 299792458, 1e9)),
                "g_scale": round(rng.uniform(0.5, 2), 3),
            },
        }
    elif kind == "galaxy":
        attrs |= {
            "shape": rng.choice(("spiral", "barred_spiral", "elliptical", "irregular")),
            "diameter_kly": round(rng.uniform(5, 500), 1),
        }
    elif kind == "nebula":
        attrs |= {"type": rng.choice(("emission", "reflection", "dark", "planetary"))}
    elif kind == "star_system":
        attrs |= {"coordinates": [round(rng.uniform(-1e4, 1e4), 2) for _ in range(3)]}
    elif kind == "star":
        attrs |= {
            "spectral_class": rng.choice("OBAFGKM") + str(rng.randint(0, 9)) + rng.choice(("V", "III", "I")),
            "luminosity": round(rng.lognormvariate(0, 1.5), 4),
        }
    elif kind == "planet":
        attrs |= {
            "mass_earths": round(rng.lognormvariate(0, 1.2), 3),
            "habitable": rng.random() < 0.2,
            "atmosphere": sorted(rng.sample(("n2", "o2", "co2", "h2", "he", "ch4", "ar"), rng.randint(0, 3))),
            "orbital_period_days": round(rng.uniform(1, 5000), 1),
        }
    elif kind == "moon":
        attrs |= {"radius_km": rng.randint(10, 3000), "tidally_locked": rng.random() < 0.7}
    elif kind == "continent":
        attrs |= {
            "area_mkm2": round(rng.uniform(0.1, 50), 2),
            "biomes": sorted(rng.sample(("desert", "forest", "tundra", "ocean", "crystal", "fungal"), 2)),
        }
    elif kind == "city":
        attrs |= {
            "population": rng.randint(100, 40_000_000),
            "founded_year": rng.randint(-5000, 3000),
            "tags": sorted(rng.sample(("port", "capital", "ruins", "floating", "underground", "holy"), 2)),
        }
    elif kind == "outpost":
        attrs |= {
            "crew": rng.randint(2, 400),
            "purpose": rng.choice(("mining", "research", "relay", "exile")),
        }
    return attrs


def generate_nodes(rng: Random, count: int) -> Iterator[NodeSpec]:
    """Grow a random tree: each node hangs under a random earlier node that may have children."""
    kinds: list[str] = []
    parents: list[int] = []  # indexes of nodes whose kind allows children
    for index in range(count):
        if index == 0 or rng.random() < 0.001:
            parent_index, kind = None, "universe"
        else:
            parent_index = rng.choice(parents)
            kind = rng.choice(CHILD_KINDS[kinds[parent_index]])
        kinds.append(kind)
        if kind in CHILD_KINDS:
            parents.append(index)
        yield NodeSpec(
            parent_index=parent_index,
            kind=kind,
            name=_name(rng, kind),
            attributes=_attributes(rng, kind),
            created_at=EPOCH + timedelta(seconds=index * 37),
        )


def generate_edges(rng: Random, node_count: int) -> Iterator[tuple[int, int, str]]:
    """About one edge per two nodes, between distinct nodes, as (source, target, relation) indexes."""
    if node_count < 2:
        return
    for _ in range(node_count // 2):
        source, target = rng.sample(range(node_count), 2)
        yield source, target, rng.choice(RELATIONS)


def add_node(conn: psycopg.Connection[Any], parent_id: int | None, spec: NodeSpec) -> int:
    """Create a node the way the app's service layer would: check the parent, keep sibling names unique."""
    if parent_id is not None:
        parent = db.get_node(conn, parent_id)
        if parent is None or spec.kind not in CHILD_KINDS.get(parent["kind"], ()):
            raise ValueError(f"a {spec.kind} cannot hang under node {parent_id}")
    name = spec.name
    suffix = 1
    while db.find_child(conn, parent_id, name) is not None:
        suffix += 1
        name = f"{spec.name} {suffix}"
    return db.create_node(conn, parent_id, spec.kind, name, spec.attributes, created_at=spec.created_at)


def seed(conn: psycopg.Connection[Any], scale: int, progress: Callable[[str], None]) -> tuple[int, int]:
    """Insert ``scale`` nodes and ``scale // 2`` edges, committing every ``COMMIT_EVERY`` rows."""
    rng = Random(RANDOM_SEED)  # noqa: S311 - reproducible test data, not cryptography
    step = max(1, scale // 10)
    ids: list[int] = []
    pending = 0

    def tick() -> None:
        nonlocal pending
        pending += 1
        if pending >= COMMIT_EVERY:
            conn.commit()
            pending = 0

    for spec in generate_nodes(rng, scale):
        parent_id = None if spec.parent_index is None else ids[spec.parent_index]
        ids.append(add_node(conn, parent_id, spec))
        tick()
        if len(ids) % step == 0:
            progress(f"nodes {len(ids)}/{scale}")
    edges = 0
    for source, target, relation in generate_edges(rng, len(ids)):
        db.create_edge(conn, ids[source], ids[target], relation)
        edges += 1
        tick()
        if edges % step == 0:
            progress(f"edges {edges}/{scale // 2}")
    conn.commit()
    return len(ids), edges


def _scale(value: str) -> int:
    try:
        scale = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if scale < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refapp.seed", description=__doc__)
    parser.add_argument(
        "--scale", type=_scale, default=DEFAULT_SCALE, help=f"number of nodes (default {DEFAULT_SCALE})"
    )
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"refapp.seed: {message}", file=sys.stderr, flush=True)

    def fail(message: str) -> int:
        print(f"refapp.seed: error: {message}", file=sys.stderr)
        return 2

    try:
        url = settings.database_url()
    except settings.ConfigError as exc:
        return fail(str(exc))
    started = time.monotonic()
    try:
        conn = db.connect(url)
    except psycopg.OperationalError as exc:
        return fail(f"cannot connect to the database: {' '.join(str(exc).split())}")
    try:
        with conn:
            missing = db.missing_tables(conn)
            if missing:
                hint = "run `python -m refapp.migrate` first"
                return fail(f"schema not migrated (missing: {', '.join(missing)}); {hint}")
            existing = db.count_nodes(conn, None)
            if existing:
                return fail(f"database already holds {existing} nodes; seed into a freshly migrated database")
            conn.commit()
            progress(f"seeding {args.scale} nodes and {args.scale // 2} edges")
            nodes, edges = seed(conn, args.scale, progress)
    except psycopg.Error as exc:
        print(f"refapp.seed: error: database failed while seeding: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    progress(f"done: {nodes} nodes, {edges} edges in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
