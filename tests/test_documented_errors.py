"""The documented error codes, close codes and STOMP error messages are the ones the code uses.

The sources are read with ``ast``: every error code a hub module can give a peer (``code = "…"``
on an error class, ``code="…"`` where an error is raised, ``ErrorCode.…``) is compared with the
table of ``clarion.protocol.errors``, both ways, and that table with ``docs/protocol.md``; every
STOMP protocol-error message with the table of ``docs/stomp.md``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from clarion.errors import ClarionError, Forbidden, LimitExceeded, LocalCode
from clarion.protocol.codes import DISCONNECTS, CloseCode
from clarion.protocol.errors import ERRORS, ErrorCode

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "clarion"
DOCS = ROOT / "docs"

# Modules that do not answer peers of the hub: the Python client raises its own errors on the
# caller's side (documented by exception class in docs/client.md), and the CLIs print theirs.
NOT_HUB = ("client/", "cli/", "webhooks/cli.py", "demo/cli.py")
# Codes of exceptions that never leave the process: a configuration or an address refused at
# start-up, and the root classes that only give their subclasses a default.
NEVER_SENT = set(LocalCode)


def _table(doc: Path, heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading``, as lists of cell texts."""
    lines = doc.read_text().splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|[-:| ]+\|", line.strip()):  # not the separator row
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    return rows[1:]  # without the header row


def _hub_modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if not name.startswith(NOT_HUB) and name not in NOT_HUB:
            yield name, ast.parse(path.read_text())


def _error_classes() -> dict[str, type[ClarionError]]:
    import clarion.asgi.app
    import clarion.protocol.stomp
    import clarion.webhooks.service  # noqa: F401  (loads every hub-side error class)

    found: dict[str, type[ClarionError]] = {}
    todo: list[type[ClarionError]] = [ClarionError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _codes_in_source() -> set[str]:
    """Each error code a hub module gives: on an error class, or where an error is raised."""
    classes = _error_classes()
    codes: set[str] = set()
    for _, tree in _hub_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in classes:
                codes.add(classes[node.name].code)
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "ErrorCode"
            ):
                codes.add(ErrorCode[node.attr])
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                        codes.add(kw.value.value)
    return codes


def test_every_code_the_hub_gives_is_in_the_error_table_and_every_one_is_given() -> None:
    source = _codes_in_source() - NEVER_SENT
    assert source - set(ErrorCode) == set(), "codes outside clarion.protocol.errors"
    assert set(ErrorCode) - source == set(), "codes in the table that the hub never gives"


def _string_literals(node: ast.expr) -> Iterator[str]:
    """The string constants ``node`` may evaluate to (itself, or a branch of ``a if c else b``,
    ``a or b``, a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        yield ast.unparse(node)
    elif isinstance(node, ast.IfExp):
        yield from _string_literals(node.body)
        yield from _string_literals(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _string_literals(value)
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _string_literals(element)


def _is_code(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "code") or (
        isinstance(node, ast.Name) and node.id == "code"
    )


def _free_string_codes(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Where ``tree`` spells an error code as a string: ``code="…"`` given to a call,
    ``code = "…"`` on a class, ``….code == "…"`` (or ``in ("…", …)``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "code":
                    for text in _string_literals(kw.value):
                        yield node.lineno, text
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets = (
                    stmt.targets
                    if isinstance(stmt, ast.Assign)
                    else [stmt.target]
                    if isinstance(stmt, ast.AnnAssign)
                    else []
                )
                value = getattr(stmt, "value", None)
                if value is not None and any(_is_code(t) for t in targets):
                    for text in _string_literals(value):
                        yield stmt.lineno, text
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_code(side) for side in sides):
                for side in sides:
                    for text in _string_literals(side):
                        yield node.lineno, text


def test_no_error_code_is_a_free_string() -> None:
    # Every code is a member of ErrorCode (sent to peers) or LocalCode (never leaves the
    # process), or a ForeignCode made where an application's or a newer hub's code is read:
    # mypy refuses a plain string where an error is made, and this catches the spellings it
    # lets through (class attributes, comparisons) in every module, the client's included.
    found = [
        f"{path.relative_to(SRC)}:{line}: {text!r}"
        for path in sorted(SRC.rglob("*.py"))
        for line, text in _free_string_codes(ast.parse(path.read_text()))
    ]
    assert found == []


def test_the_free_string_check_finds_each_spelling() -> None:
    source = (
        'raise BadRequest("x", code="bad_json")\n'
        'raise Forbidden("x", code=app if ok else "forbidden")\n'
        'class Refused(ClarionError):\n    code = "refused"\n'
        'if exc.code in ("token_expired", "revoked"): pass\n'
        'if code == "unsupported_version": pass\n'
        'raise Forbidden("x", code=ErrorCode.FORBIDDEN)\n'
        "if exc.code == ErrorCode.BAD_TIMEOUT: pass\n"
    )
    found = [text for _, text in sorted(_free_string_codes(ast.parse(source)), key=lambda f: f[0])]
    assert found == [
        "bad_json",
        "forbidden",
        "refused",
        "token_expired",
        "revoked",
        "unsupported_version",
    ]


def test_the_documented_error_table_is_the_one_in_the_code() -> None:
    documented = [
        (code.strip("`"), int(status), int(close), meaning)
        for code, status, close, meaning in _table(DOCS / "protocol.md", "## Error codes")
    ]
    table = [
        (rule.code.value, rule.status, int(rule.close), rule.meaning)
        for rule in ERRORS.values()
        if not rule.stomp_only
    ]
    assert documented == table
    stomp_doc = (DOCS / "stomp.md").read_text()
    stomp = [rule.code for rule in ERRORS.values() if rule.stomp_only]
    assert [code for code in stomp if f"`{code}`" not in stomp_doc] == []


def test_an_error_answers_with_the_status_and_close_code_of_its_code() -> None:
    # Classes give a default; a code given where the error is raised brings its own rule, and
    # an application's own code (a hook's refusal) keeps the class's.
    assert Forbidden("no").status == 403
    assert ClarionError("x", code="method_not_allowed").status == 405
    assert ClarionError("x", code="shutting_down").rule.close == CloseCode.SHUTDOWN
    assert LimitExceeded("x", code="too_many_connections").rule.close == 4503
    refused = Forbidden("banned for a day", code="banned")
    assert (refused.status, refused.rule.close) == (403, CloseCode.FORBIDDEN)
    assert ClarionError("x", code="stomp").status == 500


def test_the_close_code_table_is_the_one_clients_implement() -> None:
    rows = _table(DOCS / "protocol.md", "## Close and disconnect codes")
    documented = {
        int(code): (reason, reconnect == "yes", meaning)
        for code, reason, reconnect, meaning in rows
    }
    actual = {d.code: (d.reason, d.reconnect, d.meaning) for d in DISCONNECTS.values()}
    assert documented == actual


STOMP_FILES = [*(SRC / "protocol" / "stomp").glob("*.py"), *(SRC / "asgi").glob("stomp*.py")]


def _stomp_strings() -> set[str]:
    """Every string constant of the STOMP code (messages kept in tables, e.g. ``UNSUPPORTED``)."""
    return {
        node.value
        for path in STOMP_FILES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def _stomp_messages() -> list[str]:
    """The message of every ``RemoteProtocolError`` the STOMP code raises, as a regex."""
    patterns: list[str] = []
    for path in STOMP_FILES:
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            assigned: dict[str, list[ast.expr]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            assigned.setdefault(target.id, []).append(node.value)
            for node in ast.walk(func):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "RemoteProtocolError"
                    and node.args
                ):
                    continue
                arg = node.args[0]
                values = assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [arg]
                patterns.extend(p for p in map(_pattern, values) if p is not None)
    return patterns


def _pattern(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(re.escape(str(value.value)))
            else:
                parts.append(".+")
        return "".join(parts)
    if isinstance(node, ast.BinOp):  # "…" + " ".join(…): the computed part is a placeholder
        return (_pattern(node.left) or ".+") + (_pattern(node.right) or ".+")
    return None  # built elsewhere (e.g. a table of messages): not checked here


def test_the_stomp_error_messages_are_the_ones_the_hub_sends() -> None:
    rows = _table(DOCS / "stomp.md", "| message | cause |")
    documented = []
    for row in rows:
        for shown in re.findall(r"`([^`]+)`", row[0].split(" (`")[0]):
            documented.append(shown.replace("\\\\", "\\"))
    assert documented
    sent = _stomp_messages()
    assert len(sent) > 20
    constants = _stomp_strings()
    unknown = [
        d for d in documented if d not in constants and not any(re.fullmatch(p, d) for p in sent)
    ]
    assert unknown == [], "documented STOMP messages the hub never sends"
    missing = [p for p in sent if not any(re.fullmatch(p, d) for d in documented)]
    assert missing == [], "STOMP messages the docs do not list"


def _hub_message_patterns() -> list[str]:
    """Every string and f-string of the hub-side modules, as a regex (placeholders: ``.+``)."""
    patterns = []
    for _, tree in _hub_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                patterns.append(_pattern(node) or "")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                patterns.append(re.escape(node.value))
    return [p for p in patterns if p]


def test_the_hub_messages_quoted_by_the_stomp_docs_are_the_hubs() -> None:
    text = (DOCS / "stomp.md").read_text()
    start = text.index("Errors from the hub keep their own messages")
    paragraph = text[start : text.index("\n\n", start)].replace("\n", " ")
    quoted = [
        q.replace("N", "7") if q.startswith("data is") else q
        for q in re.findall(r"`([^`]+)`", paragraph)
    ]
    assert len(quoted) >= 8
    patterns = _hub_message_patterns()
    unknown = [q for q in quoted if not any(re.fullmatch(p, q) for p in patterns)]
    assert unknown == [], "messages the hub does not send"
