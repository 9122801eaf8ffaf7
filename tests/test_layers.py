"""The layering of the package is part of its design: check it mechanically."""

import json
import pkgutil
import subprocess
import sys

import clarion.core
import clarion.protocol


def _modules(package: object) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]  # type: ignore[attr-defined]


def _imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_protocol_layer_never_imports_asyncio() -> None:
    loaded = _imported_after(_modules(clarion.protocol))
    assert "asyncio" not in loaded
    assert not {m for m in loaded if m.startswith(("clarion.core", "clarion.asgi"))}


def test_core_knows_no_http() -> None:
    loaded = _imported_after(_modules(clarion.core))
    forbidden = ("starlette", "httptools", "httpx", "websockets", "clarion.asgi", "clarion.server")
    assert not {m for m in loaded if m.startswith(forbidden)}
