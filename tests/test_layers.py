"""The layering of the package is part of its design: check it mechanically."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import clarion.asgi
import clarion.core
import clarion.protocol
import clarion.server
import clarion.tasks
import clarion.webhooks


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


# A module longer than this says at the top why it is long ("Long on purpose: …").
LONG_MODULE = 500
LONG_REASONS = ("Long on purpose:", "Over ~500 lines because")


def test_every_long_module_says_why() -> None:
    import clarion

    root = Path(clarion.__file__).parent
    silent = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > LONG_MODULE:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if not any(reason in docstring for reason in LONG_REASONS):
                silent.append(path.relative_to(root).as_posix())
    assert silent == []


def test_protocol_layer_never_imports_asyncio() -> None:
    loaded = _imported_after(_modules(clarion.protocol))
    assert "asyncio" not in loaded
    assert not {m for m in loaded if m.startswith(("clarion.core", "clarion.asgi"))}


def _imports(package: object) -> dict[str, set[str]]:
    """Each module of ``package`` -> the clarion modules it imports when it runs, lazily or
    not (imports under ``TYPE_CHECKING`` are for annotations only and are left out)."""
    out: dict[str, set[str]] = {}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):  # type: ignore[attr-defined]
        spec = info.module_finder.find_spec(info.name, None)  # type: ignore[call-arg]
        assert spec is not None and spec.origin is not None
        if not spec.origin.endswith(".py"):
            continue  # compiled (clarion.server._fastloop): it imports no module
        tree = ast.parse(Path(spec.origin).read_text())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        names: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        out[info.name] = {n for n in names if n == "clarion" or n.startswith("clarion.")}
    return out


def _importers(package: object, prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    found = {
        module: {n for n in names if n.startswith(prefixes)}
        for module, names in _imports(package).items()
    }
    return {module: names for module, names in found.items() if names}


def test_the_import_scan_sees_lazy_imports() -> None:
    # clarion.webhooks.service imports its HTTP routes inside a method: the scan must see it.
    assert "clarion.webhooks.api" in _imports(clarion.webhooks)["clarion.webhooks.service"]


def test_core_imports_nothing_above_it_not_even_lazily() -> None:
    above = ("clarion.asgi", "clarion.server", "clarion.webhooks", "clarion.hooks", "clarion.cli")
    above += ("clarion.client", "clarion.standalone", "clarion.demo")
    assert _importers(clarion.core, above) == {}


def test_transports_import_no_engine() -> None:
    # The engine's interface (clarion.engines.base) is all a transport may know of engines.
    engines = ("clarion.engines.memory", "clarion.engines.redis")
    for package in (clarion.asgi, clarion.server):
        assert _importers(package, engines) == {}
    loaded = _imported_after(_modules(clarion.asgi) + _modules(clarion.server))
    assert not {m for m in loaded if m.startswith(engines)}


def test_the_server_and_the_app_meet_only_at_asgitypes() -> None:
    # clarion.server is a plain ASGI server and clarion.asgi a plain ASGI app: the fast
    # extensions' names and protocols are clarion.asgitypes', which both import.
    app = {n for names in _imports(clarion.server).values() for n in names}
    assert {n for n in app if n == "clarion.asgi" or n.startswith("clarion.asgi.")} == set()
    assert _importers(clarion.asgi, ("clarion.server",)) == {}
    assert "clarion.asgitypes" in _imports(clarion.server)["clarion.server.fastws"]
    assert "clarion.asgitypes" in _imports(clarion.asgi)["clarion.asgi.pipe"]


def test_asgi_and_webhooks_are_not_a_cycle() -> None:
    # The webhooks' HTTP routes build on the ASGI helpers; the ASGI app mounts them through the
    # hub's extensions, without importing the webhooks.
    assert _importers(clarion.asgi, ("clarion.webhooks",)) == {}
    assert "clarion.webhooks.api" in _importers(clarion.webhooks, ("clarion.asgi",))
    loaded = _imported_after(_modules(clarion.asgi))
    assert not {m for m in loaded if m.startswith("clarion.webhooks")}


def test_tasks_imports_only_the_standard_library() -> None:
    # Every layer stops its background tasks with it, the client included.
    tree = ast.parse(Path(clarion.tasks.__file__).read_text())
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert "asyncio" in names and outside == set()


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
        "from clarion.webhooks import WebhookService\n"
        "async def main():\n"
        f"    settings = Settings(data_dir={str(tmp_path)!r},\n"
        "        webhooks=[{'url': 'http://127.0.0.1:9/hook', 'channels': ['chat:*']}],\n"
        "        webhook_allow_hosts=['127.0.0.1'])\n"
        "    hub = Hub(settings)\n"
        "    await hub.start()\n"
        "    hub.asgi_app()\n"
        "    await hub.publish('chat:lobby', {'text': 'hi'})\n"
        "    backlog = hub.extension(WebhookService).backlog\n"
        "    assert sum(backlog.values()) == 1, backlog\n"
        "    await hub.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if 'redis' in m))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_hub_loads_the_http_client_and_pyjwt_only_for_what_uses_them(tmp_path: Path) -> None:
    # httpx is webhooks' and [hooks]' client, PyJWT (with cryptography) the tokens': ~0.1 s of
    # CPU at every `clarion serve` that uses none of them.
    code = (
        "import asyncio, json, sys\n"
        "from clarion import Hub, Settings\n"
        "async def main(settings):\n"
        "    hub = Hub(settings)\n"
        "    await hub.start()\n"
        "    hub.asgi_app()\n"
        "    await hub.publish('chat:lobby', {'text': 'hi'})\n"
        "    await hub.close()\n"
        "    return sorted(m for m in ('httpx', 'jwt') if m in sys.modules)\n"
        "kw = json.loads(sys.argv[1])\n"
        "print(json.dumps(asyncio.run(main(Settings(**kw)))))\n"
    )

    def loaded(**kw: object) -> list[str]:
        kw["data_dir"] = str(tmp_path)
        args = [sys.executable, "-c", code, json.dumps(kw)]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
        return list(json.loads(out.stdout))

    assert loaded() == []
    assert loaded(token_secret="s" * 32) == ["jwt"]
    hook = {"url": "http://127.0.0.1:9/hook", "channels": ["chat:*"]}
    assert loaded(webhooks=[hook], webhook_allow_hosts=["127.0.0.1"]) == ["httpx"]
    hooks = {"secret": "whsec_" + "A" * 32, "connect_url": "http://127.0.0.1:9/connect"}
    assert loaded(hooks=hooks) == ["httpx"]
