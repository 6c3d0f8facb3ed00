"""Which PostgreSQL major a compose file's postgres image runs, and whether it agrees with the PostgreSQL a project's
sessions use: their pg_dump writes the dumps the image restores on its first start (`dbsnap init` asks).

The file is read by indentation, as `dbsnap init` reads it: PyYAML is not a dependency of the plugin."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pytest_dbsnap.errors import ToolError
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools, system_tools_of_major
from pytest_dbsnap.postgres.binaries import INSTALL_HINT, BinariesChoice, find_wheel

# postgres, postgis/postgis, pgvector/pgvector, with or without a registry in front.
_POSTGRES_IMAGE = re.compile(r"^(?:\S*/)?(?:postgres|postgis/postgis|pgvector/pgvector)(?::|@|$)")
_IMAGE_LINE = re.compile(r"^\s*image:\s*(?P<value>.*?)\s*(?:\s#.*)?$")
# ${NAME:-default} and ${NAME-default} give their default; ${NAME} and $NAME nothing (unknown here).
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-(?P<default>[^}]*)\}")
_BARE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
# 18, 18.6, 18-bookworm, 18.6-alpine3.22, pg18 (pgvector), 16-3.4 (postgis).
_TAG_MAJOR = re.compile(r"^(?:pg)?(?P<major>\d+)(?:[.\-_]|$)")
# From 18 the official image keeps its cluster in /var/lib/postgresql/<major>/docker and wants the volume one
# level up; up to 17 it is /var/lib/postgresql/data.
NEW_LAYOUT_MAJOR = 18


@dataclass(frozen=True)
class ComposeImage:
    """A service of a compose file that runs a postgres image."""

    service: str
    image: str  # as the file names it, variables resolved to their defaults
    major: int | None  # None: the tag names no major (latest, none, a digest)


def resolve_defaults(value: str) -> str:
    """Compose's interpolation, as far as the file alone tells: defaults stand in for their variables."""
    return _BARE.sub("", _DEFAULTED.sub(lambda match: match["default"], value)).strip("'\"")


def image_major(image: str) -> int | None:
    """The PostgreSQL major an image's tag names, or None."""
    reference = image.split("@", 1)[0]
    name_end = reference.rfind("/")
    colon = reference.rfind(":")
    if colon <= name_end:  # no tag (a colon before the last '/' is a registry's port)
        return None
    match = _TAG_MAJOR.match(reference[colon + 1 :])
    return int(match["major"]) if match else None


def postgres_images(text: str) -> list[ComposeImage]:
    """Every service of a compose file whose image is a postgres image, in file order."""
    found: list[ComposeImage] = []
    in_services, service, indent = False, None, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            in_services = line.startswith("services:")
            continue
        if not in_services:
            continue
        if indent is None or depth <= indent:
            indent = depth
            service = line.strip().rstrip(":").strip("'\"")
            continue
        match = _IMAGE_LINE.match(line)
        if match is None or service is None:
            continue
        image = resolve_defaults(match["value"])
        if _POSTGRES_IMAGE.match(image):
            found.append(ComposeImage(service, image, image_major(image)))
    return found


def _where(images: list[ComposeImage]) -> str:
    """'postgres:15 in services dumps and postgres', grouping the services of one image."""
    by_image: dict[str, list[str]] = {}
    for found in images:
        by_image.setdefault(found.image, []).append(found.service)
    parts = []
    for image, services in by_image.items():
        names = " and ".join([", ".join(services[:-1]), services[-1]] if len(services) > 1 else services)
        parts.append(f"{image} in service{'s' if len(services) > 1 else ''} {names}")
    return "; ".join(parts)


def _layout_note(image_major: int | None, target: int) -> str:
    """What else changes when the image crosses the data-folder change of 18."""
    if target >= NEW_LAYOUT_MAJOR and (image_major is None or image_major < NEW_LAYOUT_MAJOR):
        return (
            f" (from {NEW_LAYOUT_MAJOR} the image keeps its data in /var/lib/postgresql/{target}/docker: mount the "
            f"data volume at /var/lib/postgresql and drop any PGDATA setting)"
        )
    if target < NEW_LAYOUT_MAJOR and (image_major is None or image_major >= NEW_LAYOUT_MAJOR):
        last = NEW_LAYOUT_MAJOR - 1
        return f" (up to {last} the image keeps its data in /var/lib/postgresql/data: mount the data volume there)"
    return ""


def _programs_of(major: int, choice: BinariesChoice) -> str:
    """The setting that makes the sessions use PostgreSQL `major`, naming what this machine has."""
    system = system_tools_of_major(major, need_server=False)
    if choice.pg_bindir is not None:
        return f'pg_bindir = "{system.bindir if system else f"<the bin folder of PostgreSQL {major}>"}"'
    if system is not None:
        return f'postgres_binaries = "system" (PostgreSQL {system.version} is installed in {system.bindir})'
    wheel = find_wheel()
    if wheel is not None and wheel.version.split(".")[0] == str(major) and choice.postgres_binaries == "system":
        return f'postgres_binaries = "wheel" ({wheel.origin})'
    return (
        f'pg_bindir = "<the bin folder of PostgreSQL {major}>", or install PostgreSQL {major} and set '
        f'postgres_binaries = "system"'
    )


def compose_major_advice(compose_file: Path, choice: BinariesChoice) -> str | None:
    """None when every postgres image of `compose_file` runs the major of the programs `choice` gives the
    sessions; otherwise one paragraph saying what disagrees and what to change on either side."""
    images = postgres_images(compose_file.read_text(errors="replace"))
    if not images:
        return None
    name = compose_file.name
    try:
        tools: PgTools = find_pg_tools(choice, need_server=False)
    except ToolError:
        majors = sorted({image.major for image in images if image.major is not None})
        wanted = f"PostgreSQL {majors[0]}" if len(majors) == 1 else "the PostgreSQL of its image"
        return (
            f"{name} runs {_where(images)}, and no PostgreSQL programs were found here to write the dumps it "
            f"restores: install the server ({INSTALL_HINT}) and run an image of its major, or install {wanted} and "
            f'set postgres_binaries = "system".'
        )
    target = tools.major
    unpinned = [image for image in images if image.major is None]
    if unpinned:
        return (
            f"{name} runs {_where(unpinned)}, which names no PostgreSQL major: pin it to postgres:{target}, the "
            f"major of this project's {tools.describe()}, whose pg_dump writes the dumps the image restores (an "
            f"image older than that pg_dump refuses them){_layout_note(None, target)}."
        )
    other = [image for image in images if image.major != target]
    if not other:
        return None
    theirs = other[0].major
    assert theirs is not None
    if theirs < target:
        consequence = (
            f"the image's pg_restore {theirs} cannot read dumps of pg_dump {target}, so the first "
            f"`docker compose -f {name} up` would refuse to restore them"
        )
    else:
        consequence = (
            f"the image could restore them, but the local and the docker sessions would run different majors, and "
            f"pg_dump {target} refuses to dump a PostgreSQL {theirs} server"
        )
    return (
        f"{name} runs {_where(other)} (PostgreSQL {theirs}), but this project's sessions use {tools.describe()}, "
        f"whose pg_dump writes the dumps the image restores on its first start: {consequence}. Use one major on "
        f"both sides: change the image to postgres:{target}{_layout_note(theirs, target)}, or keep PostgreSQL "
        f"{theirs} and set {_programs_of(theirs, choice)} in [tool.dbsnap]."
    )
