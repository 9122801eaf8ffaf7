"""The client is an adapter that speaks the protocol: it never loads the hub's core."""

from __future__ import annotations

import json
import subprocess
import sys


def test_client_loads_no_core_engine_or_server() -> None:
    code = (
        "import json, sys\n"
        "import clarion.client, clarion.client.sse\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    forbidden = ("clarion.core", "clarion.engines", "clarion.asgi", "clarion.server", "starlette")
    assert not {m for m in loaded if m.startswith(forbidden)}
    assert "clarion.protocol.cursor" in loaded
