"""The commands a hub's client runs: ``publish``, ``subscribe``, and ``token`` that mints what a
client connects with; how they find the hub (``--url``, ``--config``, ``--api-key``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import orjson

from clarion.cli.arguments import CURSOR_SOURCES, STDIN, json_value
from clarion.cli.command import load_settings, local_url
from clarion.errors import BadCursor, BadRequest, ClarionError, LocalCode


class Target:
    """The hub a client command talks to, and the API key it sends, with where each came from."""

    def __init__(self, url: str, key: str | None, key_from: str | None) -> None:
        self.url = url
        self.key = key
        self.key_from = key_from

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"apikey {self.key}"} if self.key else {}

    def call(
        self, action: str, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> Any:
        """One server API call; the hub's answer when it is a 200, else the error to report,
        with what the command can add (where a key comes from, what a wrong URL looks like)."""
        import httpx

        from clarion.client.endpoints import Endpoints

        try:
            endpoints = Endpoints.parse(self.url)  # a ws:// URL of the hub's /ws too
        except ValueError as exc:
            raise ClarionError(f"--url: {exc}", code=LocalCode.UNREACHABLE) from None
        from clarion.client.bounds import (
            MAX_ERROR_BYTES,
            MAX_REPLY_BYTES,
            UNCOMPRESSED,
            Dropped,
            dropped,
            read_body_sync,
        )

        url = endpoints.url(path)
        try:
            with httpx.stream(
                method,
                url,
                content=None if body is None else orjson.dumps(body),
                headers={"Content-Type": "application/json", **UNCOMPRESSED, **self.headers()},
                timeout=timeout,
            ) as streamed:
                # Read within the client's bounds: whatever answers at the URL may never end.
                if streamed.status_code == 200:
                    response = read_body_sync(streamed, MAX_REPLY_BYTES, "a reply", None)
                else:
                    what = f"an HTTP {streamed.status_code} body"
                    response = read_body_sync(streamed, MAX_ERROR_BYTES, what, None)
        except httpx.HTTPError as exc:
            raise ClarionError(
                f"cannot reach {self.url}: {exc}", code=LocalCode.UNREACHABLE
            ) from None
        except Dropped as exc:
            raise ClarionError(dropped(url, exc), code=LocalCode.UNREACHABLE) from None
        if response.status_code != 200:
            from clarion.client.api import nothing_serves

            error = self.refused(action, response)
            if nothing_serves(response):
                raise ClarionError(f"{error.message}\n{endpoints.doubt()}", code=error.code)
            raise error
        return response

    def refused(self, action: str, response: Any) -> ClarionError:
        error = refused(action, response)
        if response.status_code == 401:
            # The hub cannot say how to give it a key; the command can.
            hint = (
                f"the API key from {self.key_from} is not one of the hub's"
                if self.key
                else "pass the hub's API key: --api-key KEY, CLARION_API_KEY, or api_key in "
                "clarion.toml (or the file --config names)"
            )
            return ClarionError(f"{error.message}\n{hint}", code=error.code)
        return error


def client_target(args: argparse.Namespace) -> Target:
    """Where ``publish``, ``subscribe`` and ``webhooks`` go: ``--url`` or ``CLARION_URL``, else
    the hub ``clarion serve`` would run here (its host and port from ``--config`` or
    ``./clarion.toml`` and ``CLARION_*``); the key from ``--api-key``, else the configured one."""
    url = args.url or os.environ.get("CLARION_URL")
    key: str | None = getattr(args, "api_key", None)
    key_from = "--api-key" if key else None
    wants_key = hasattr(args, "api_key") and not key
    if url is None or wants_key:
        loaded = load_settings(argparse.Namespace(config=args.config))
        if url is None:
            source = str(loaded.config) if loaded.config is not None else "the configuration"
            url = local_url(loaded.settings, source)
        if wants_key and loaded.settings.api_keys:
            key = loaded.settings.api_keys[0]
            variable = "CLARION_API_KEY" in loaded.variables
            key_from = "CLARION_API_KEY" if variable else str(loaded.config)
    return Target(url, key, key_from)


def refused(action: str, response: Any) -> ClarionError:
    """The hub's answer to a server API call that failed, as the CLI reports it."""
    from clarion.client.api import failure

    error = failure(response)
    return ClarionError(
        f"{action} refused (HTTP {error.status}, {error.code}): {error.message}", code=error.code
    )


def cmd_publish(args: argparse.Namespace) -> int:
    data = args.data
    if data is STDIN:
        try:
            data = json_value(sys.stdin.read().strip())
        except argparse.ArgumentTypeError as exc:
            raise BadRequest(f"data from standard input: {str(exc)[:300]}") from None
    body: dict[str, Any] = {"channel": args.channel, "data": data}
    if args.id:
        body["id"] = args.id
    response = client_target(args).call("publish", "POST", "/api/publish", body)
    sys.stdout.write(response.text.rstrip("\n") + "\n")
    return 0


def _show_client_progress() -> None:
    """The client's connection lines (connecting, retrying, lost, connected) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clarion: %(message)s"))
    # Why the client stopped is the command's last line, in its own words: not twice.
    handler.addFilter(lambda record: not getattr(record, "stop", False))
    client_log = logging.getLogger("clarion.client")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)
    client_log.propagate = False


def cmd_subscribe(args: argparse.Namespace) -> int:
    import asyncio

    from clarion.client import run_subscribe
    from clarion.protocol.channels import validate_channel
    from clarion.protocol.codes import CloseCode
    from clarion.protocol.cursor import Cursor
    from clarion.protocol.errors import ErrorCode

    # Said before connecting, as the client itself would refuse the name only then.
    validate_channel(args.channel)
    url = client_target(args).url
    token = args.token or os.environ.get("CLARION_TOKEN")
    if args.since is not None and Cursor.decode(args.since).get(args.channel) is None:
        # Said before connecting: the client would say it only after the connection.
        raise BadCursor(
            f"--since: the cursor holds no position for channel {args.channel!r}: it was "
            f"taken from another channel; {CURSOR_SOURCES}"
        )
    _show_client_progress()
    try:
        return asyncio.run(
            run_subscribe(
                url,
                args.channel,
                since=args.since,
                token=token,
                transport=args.transport,
                out=sys.stdout,
            )
        )
    except KeyboardInterrupt:
        return 130
    except ClarionError as exc:
        # Refused at subscribe (WebSocket), or the stream closed for it (SSE, polling).
        refused = exc.code == ErrorCode.UNAUTHORIZED
        closed = getattr(exc, "close_code", None) == CloseCode.UNAUTHORIZED
        if token or not (refused or closed):
            raise
        # The hub cannot say where a token comes from; the command can. With --channels: a
        # token without it allows no channel, and this one would be refused in turn. (A
        # channel name needs no quoting in a shell: its alphabet has no special character.)
        mint = f"clarion token --user NAME --channels {args.channel}"
        hint = f"pass a token with --token or CLARION_TOKEN ({mint} mints one)"
        raise ClarionError(f"{exc.message}\n{hint}", code=exc.code) from None


def cmd_token(args: argparse.Namespace) -> int:
    from clarion.core.auth import mint_token, secret_note

    settings = load_settings(args).settings
    secret = args.secret or settings.token_secret
    if not secret:
        raise ClarionError(
            "no token secret: pass --secret, set token_secret in the config or "
            "CLARION_TOKEN_SECRET",
            code=LocalCode.CONFIG,
        )
    algorithm = settings.token_algorithm if settings.token_algorithm.startswith("HS") else "HS256"
    # Minted before any warning: every argument is checked by then (the parser checked the
    # flags' forms, the secret is found), so a warning is only ever about a token printed.
    token = mint_token(
        secret,
        args.user,
        args.channels,
        publish=args.publish,
        presence=args.presence,
        ttl=args.ttl,
        info=args.info,
        algorithm=algorithm,
    )
    note = secret_note(secret, algorithm)
    if note:  # a development secret is allowed, but not silently
        sys.stderr.write(f"clarion: warning: {note}\n")
    if not args.channels:  # a valid token, and useless for subscribing: say so
        sys.stderr.write(
            "clarion: warning: the token allows no channel: pass --channels, e.g. 'chat:*'\n"
        )
    sys.stdout.write(token + "\n")
    return 0
