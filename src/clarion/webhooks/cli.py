"""``clarion webhooks list|add|remove``: manage a running hub's webhooks through its API.

Every ``clarion`` command builds this parser: the module imports what a command needs when it
runs (see :mod:`clarion.cli`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clarion.webhooks.kinds import EVENT_KINDS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``webhooks`` command group to the ``clarion`` parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhooks",
        help="list, add or remove webhook endpoints of a running hub",
        description="Manage webhooks through the server API of a running hub.",
    )
    from clarion.cli.arguments import add_client_options

    common = argparse.ArgumentParser(add_help=False)
    add_client_options(common, api_key=True)
    actions = parser.add_subparsers(dest="webhooks_command", required=True)

    listing = actions.add_parser(
        "list", parents=[common], help="endpoints with their delivery state"
    )
    listing.add_argument("--json", action="store_true", help="print the API's JSON")

    add = actions.add_parser(
        "add", parents=[common], help="register an endpoint; prints its id and secret"
    )
    add.add_argument("target", metavar="URL", help="where deliveries are POSTed")
    add.add_argument(
        "--channel",
        dest="channels",
        action="append",
        default=[],
        metavar="PATTERN",
        help="channel pattern to deliver (repeatable; * matches any run of characters)",
    )
    add.add_argument("--secret", help="whsec_ signing secret (generated when omitted)")
    add.add_argument(
        "--event",
        dest="events",
        action="append",
        default=[],
        choices=EVENT_KINDS,
        help="lifecycle event to deliver (repeatable)",
    )

    remove = actions.add_parser(
        "remove", parents=[common], help="delete an endpoint and its pending deliveries"
    )
    remove.add_argument("id")
    parser.set_defaults(func=run)
    return parser


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from clarion.cli.client import client_target
    from clarion.errors import ClarionError

    action = f"{method} {path}"
    response = client_target(args).call(action, method, path, body, timeout=30)
    try:
        return response.json()
    except ValueError:
        raise ClarionError(f"{action}: the answer is not JSON") from None


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    import datetime

    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.webhooks_command == "add":
        body: dict[str, Any] = {"url": args.target, "channels": args.channels}
        if args.secret:
            body["secret"] = args.secret
        if args.events:
            body["events"] = args.events
        created = _request(args, "POST", "/api/webhooks", body)
        out.write(f"id: {created['id']}\nsecret: {created['secret']}\n")
        return 0
    if args.webhooks_command == "remove":
        _request(args, "DELETE", f"/api/webhooks/{args.id}")
        out.write(f"removed {args.id}\n")
        return 0
    listing = _request(args, "GET", "/api/webhooks")
    if args.json:
        import orjson

        out.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for hook in listing["webhooks"]:
        state = "active"
        if hook["disabled"]:
            why = hook.get("disabled_reason")
            state = f"disabled ({why})" if why else "disabled"
        out.write(
            f"{hook['id']}  {state}  {hook['url']}\n"
            f"    channels: {' '.join(hook['channels']) or '-'}"
            f"  events: {' '.join(hook['events']) or '-'}\n"
            f"    backlog: {hook['backlog']}  dead letters: {hook['dead_letters']}"
            f"  next attempt: {_when(hook['next_attempt_at'])}\n"
        )
        delivered = hook.get("last_delivered")
        if delivered:  # beside the last error: which of the two is the newer
            out.write(f"    last delivered: {_when(delivered['at'])}\n")
        if hook["last_error"]:
            out.write(f"    last error ({_when(hook['last_error_at'])}): {hook['last_error']}\n")
    if not listing["webhooks"]:
        out.write("no webhooks\n")
    return 0
