"""Reading a compose file's postgres images and their majors, as `dbsnap init` does (no YAML parser)."""

from __future__ import annotations

import pytest

from pytest_dbsnap.postgres.compose_image import ComposeImage, image_major, postgres_images, resolve_defaults


@pytest.mark.parametrize(
    ("image", "major"),
    [
        ("postgres:18", 18),
        ("postgres:18.6", 18),
        ("postgres:15-bookworm", 15),
        ("docker.io/library/postgres:18.6-alpine3.22", 18),
        ("localhost:5000/postgres:17", 17),
        ("postgis/postgis:16-3.4", 16),
        ("pgvector/pgvector:pg16", 16),
        ("postgres:15@sha256:0123abcd", 15),
        ("postgres", None),
        ("postgres:latest", None),
        ("postgres:alpine", None),
        ("localhost:5000/postgres", None),  # the colon belongs to the registry, not to a tag
        ("postgres@sha256:0123abcd", None),
    ],
)
def test_image_major_reads_the_tag(image: str, major: int | None) -> None:
    assert image_major(image) == major


def test_variables_stand_for_their_defaults() -> None:
    assert resolve_defaults("${PG_IMAGE:-postgres:17}") == "postgres:17"
    assert resolve_defaults("postgres:${PG_MAJOR-16}-bookworm") == "postgres:16-bookworm"
    assert resolve_defaults('"postgres:${PG_MAJOR}"') == "postgres:"  # no default: unknown here


def test_postgres_images_lists_each_service_that_runs_one() -> None:
    text = """\
x-common: &common
  image: postgres:9.6   # not a service
services:
  web:
    image: nginx:1.27
    environment:
      IMAGE: postgres:12
  "dumps":
    image: 'postgres:15-bookworm'  # the stager
  db:
    image: ${DB_IMAGE:-postgres:18}
    healthcheck:
      test: ["CMD", "pg_isready"]
  exporter:
    image: quay.io/prometheuscommunity/postgres-exporter:v0.15.0
volumes:
  pgdata: {}
"""
    assert postgres_images(text) == [
        ComposeImage("dumps", "postgres:15-bookworm", 15),
        ComposeImage("db", "postgres:18", 18),
    ]


def test_a_file_without_services_or_postgres_has_none() -> None:
    assert postgres_images("version: '3'\n") == []
    assert postgres_images("services:\n  web:\n    image: nginx\n") == []
