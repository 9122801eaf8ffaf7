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


def test_every_export_exists() -> None:
    for name in clarion.__all__:
        assert getattr(clarion, name) is not None


def test_public_hub_serves_asgi() -> None:
    hub = clarion.Hub(clarion.Settings())
    assert callable(hub.asgi_app())
