"""The admin page's files as the hub serves them, and the chart library pinned by its lock."""

from __future__ import annotations

import json
import re
from typing import Any

from ..conftest import RunningHub
from ..docblocks import ROOT

VENDOR = ROOT / "src" / "clarion" / "static" / "admin" / "vendor"


def test_the_shipped_chart_library_is_the_locked_version() -> None:
    lock = json.loads((ROOT / "clients" / "admin" / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/uplot"]["version"]
    pinned = json.loads((ROOT / "clients" / "admin" / "package.json").read_text())
    assert pinned["dependencies"]["uplot"] == locked  # an exact pin, not a range
    header = (VENDOR / "uPlot.esm.js").read_text()[:400]
    assert re.search(r"\(v(\d+\.\d+\.\d+)\)", header)[1] == locked  # type: ignore[index]
    assert "MIT License" in (VENDOR / "uPlot.LICENSE").read_text()


async def test_the_page_and_its_modules_are_served_with_a_strict_policy(
    hub_factory: Any,
) -> None:
    hub: RunningHub = await hub_factory(admin=True, api_key="k")
    async with hub.http() as http:
        page = await http.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        for src in re.findall(r'(?:src|href)="(admin/[^"]+)"', page.text):
            asset = await http.get("/" + src)
            assert asset.status_code == 200, src
        module = await http.get("/admin/admin.js")
        assert module.headers["content-type"].startswith("text/javascript")
        for missing in ("/admin/nope.js", "/admin/vendor/"):
            assert (await http.get(missing)).status_code == 404
        # With a trailing slash the page's relative links would miss: it sends the reader back.
        slash = await http.get("/admin/")
        assert slash.status_code == 308 and slash.headers["location"] == "/admin"
        # The page itself holds no data and asks no key of the hub: the API behind it does.
        assert (await http.get("/api/info")).status_code == 401
