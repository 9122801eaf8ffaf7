import ast
import importlib
import importlib.metadata
from pathlib import Path

import clarion

EXPECTED = {
    "BadChannel", "BadCursor", "BadRequest", "ClarionError", "ClientError", "CloseCode",
    "ConfigError", "Credentials", "Cursor", "Disconnect", "Engine", "EngineUnavailable",
    "Forbidden", "History", "Hub", "LimitExceeded", "Limits", "NamespaceOptions", "NotFound",
    "PresenceEntry", "Publication", "ServerError", "Session", "Settings", "StreamPosition",
    "SubscribeResult", "TooLarge", "Unauthorized", "__version__", "mint_token",
}  # fmt: skip


def test_public_api_is_pinned() -> None:
    assert set(clarion.__all__) == EXPECTED


def _declared_homes() -> dict[str, str]:
    """Each export's module, as the package's ``TYPE_CHECKING`` imports declare it to mypy."""
    tree = ast.parse(Path(clarion.__file__).read_text())
    homes: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module is not None
                homes.update((alias.asname or alias.name, stmt.module) for alias in stmt.names)
    return homes


def test_every_export_exists() -> None:
    # Exports load lazily: each must be the very object its declared module defines (what
    # type checkers see is what callers get), defined there under that name.
    homes = _declared_homes()
    assert set(homes) == set(clarion.__all__) - {"__version__"}
    for name, module in homes.items():
        value = getattr(clarion, name)
        assert value is getattr(importlib.import_module(module), name), name
        assert (value.__module__, value.__name__) == (module, name)
    assert clarion.__version__ == importlib.metadata.version("clarion")
    star: dict[str, object] = {}
    exec("from clarion import *", star)
    assert set(star) - {"__builtins__"} == set(clarion.__all__)


def test_public_hub_serves_asgi() -> None:
    hub = clarion.Hub(clarion.Settings())
    assert callable(hub.asgi_app())
