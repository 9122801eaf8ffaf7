"""The ASGI adapter: HTTP API, WebSocket and HTTP streaming endpoints over the core hub."""
