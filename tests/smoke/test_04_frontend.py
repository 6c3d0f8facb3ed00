"""Phase 4, frontend: the page answers with the expected, accessible markup and its assets load."""

from __future__ import annotations

import re

import pytest

from pytest_dbsnap.plugin import RunningService

pytestmark = [pytest.mark.smoke, pytest.mark.order(4)]


def test_page_answers_with_expected_markup(frontend: RunningService) -> None:
    response = frontend.client.get("/")
    assert response.status_code == 200
    page = response.text
    assert re.search(r'<html[^>]*\blang="en"', page), "the page has no lang attribute"
    assert re.search(r"<title>[^<]+</title>", page), "the page has no title"
    assert len(re.findall(r"<h1\b", page)) == 1, "the page needs exactly one h1"
    assert 'id="node-list"' in page
    assert "<main" in page
    for select_id in re.findall(r'<select[^>]*id="([^"]+)"', page):
        assert f'for="{select_id}"' in page, f"the control #{select_id} has no label"


def test_assets_load(frontend: RunningService) -> None:
    page = frontend.client.get("/").text
    assets = re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', page)
    assert assets, "the page references no stylesheet or script"
    for asset in assets:
        response = frontend.client.get(asset)
        assert response.status_code == 200, f"{asset} answered {response.status_code}"
        assert response.content, f"{asset} is empty"


def test_frontend_is_pointed_at_the_backend(frontend: RunningService, backend: RunningService) -> None:
    config = frontend.client.get("/config.js")
    assert config.status_code == 200
    assert backend.url in config.text
