"""The layering of the package is part of its design: check it mechanically."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

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


# Modules that exist to talk to Redis: the only ones that may import the optional `redis` extra.
REDIS_MODULES = ("clarion.engines.redis", "clarion.webhooks.redis_outbox")

BLOCK_REDIS = """
import importlib.abc, sys

class BlockRedis(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockRedis())
"""


def _run_without_redis(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_REDIS + code], capture_output=True, text=True, timeout=120
    )


def test_the_blocker_blocks_redis() -> None:
    result = _run_without_redis("import redis")
    assert result.returncode != 0 and "No module named 'redis'" in result.stderr


def test_everything_but_the_redis_modules_imports_without_redis() -> None:
    import clarion

    modules = [m for m in _modules(clarion) if not m.startswith(REDIS_MODULES)]
    assert "clarion.webhooks.service" in modules and "clarion.cli" in modules
    result = _run_without_redis(
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from clarion import Hub\n"
        "import clarion.cli\n"
        "clarion.cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not {m for m in loaded if m == "redis" or m.startswith(("redis.", *REDIS_MODULES))}


def test_a_memory_hub_with_webhooks_runs_without_redis(tmp_path: Path) -> None:
    # Start, publish (a webhook delivery is queued to the local outbox) and close: the whole
    # memory-engine path, with every module it loads lazily on the way.
    result = _run_without_redis(
        "import asyncio, sys\n"
        "from clarion import Hub, Settings\n"
        "async def main():\n"
        f"    settings = Settings(data_dir={str(tmp_path)!r},\n"
        "        webhooks=[{'url': 'http://127.0.0.1:9/hook', 'channels': ['chat:*']}],\n"
        "        webhook_allow_hosts=['127.0.0.1'])\n"
        "    hub = Hub(settings)\n"
        "    await hub.start()\n"
        "    hub.asgi_app()\n"
        "    await hub.publish('chat:lobby', {'text': 'hi'})\n"
        "    assert sum(hub.webhooks.backlog.values()) == 1, hub.webhooks.backlog\n"
        "    await hub.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if 'redis' in m))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
