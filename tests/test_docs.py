import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import clarion_server
from .docblocks import DEDICATED, DOCUMENTS, MARKS, RUNNABLE, Block, Session, blocks, commands

ROOT = Path(__file__).parents[1]

pytestmark = clarion_server("the documentation's commands, run as written (`clarion serve`)")


def test_configuration_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "configdoc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_described() -> None:
    from pydantic import BaseModel

    from clarion.settings import NamespaceOptions, Settings

    models: list[type[BaseModel]] = [Settings, NamespaceOptions]
    for field in Settings.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models.append(field.annotation)
    for model in models:
        for name, field in model.model_fields.items():
            nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            if name != "namespaces" and not nested:
                assert field.description, f"{model.__name__}.{name} has no description"


# -- the code blocks of README.md and docs/ (conventions: docs/examples.md) --------------------


def _all_blocks() -> list[Block]:
    return [block for doc in DOCUMENTS for block in blocks(doc)]


def test_every_block_runs_or_is_marked() -> None:
    found = _all_blocks()
    assert len(found) > 50
    for block in found:
        assert block.lang, f"{block}: a block needs a language"
        assert block.marks <= MARKS, f"{block}: unknown marks {block.marks - MARKS}"
        assert len(block.marks) <= 1, block
        if not block.marks and block.lang in DEDICATED:
            runner = DEDICATED[block.lang]
            assert f'"{block.lang}"' in runner.read_text(), f"{block}: {runner.name} runs it"
        elif not block.marks:
            assert block.lang in RUNNABLE, f"{block}: {block.lang} cannot run: mark it fragment"


def test_json_blocks_parse() -> None:
    for block in _all_blocks():
        if block.lang == "json" and block.runs:
            json.loads(block.text)


def test_toml_blocks_are_accepted_by_the_settings_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clarion.settings import Settings

    for name in [k for k in os.environ if k.startswith("CLARION_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    checked = 0
    for block in _all_blocks():
        if block.lang == "toml" and block.runs:
            config = tmp_path / "clarion.toml"
            config.write_text(block.text)
            Settings.load(config)
            checked += 1
    assert checked >= 4


def test_python_blocks_compile() -> None:
    for block in _all_blocks():
        if block.lang == "python" and block.runs:
            compile(block.text, str(block), "exec")


def test_slow_blocks_are_valid_shell_naming_files_that_exist() -> None:
    checked = 0
    for block in _all_blocks():
        if "slow" not in block.marks:
            continue
        assert block.lang == "sh", block
        for command in commands(block.text):
            assert "…" not in command, f"{block}: a placeholder in a runnable command"
            for word in shlex.split(command, comments=True):
                if re.fullmatch(r"(\./)?(scripts|tests|fuzzing|benchmarks)/[\w./-]+", word):
                    assert (ROOT / word).exists(), f"{block}: {word} does not exist"
            module = re.search(r"python -m (benchmarks\.\w+)", command)
            if module:
                assert (ROOT / (module.group(1).replace(".", "/") + ".py")).exists(), block
            checked += 1
    assert checked >= 5


def _documents_that_run() -> list[Path]:
    return [
        d for d in DOCUMENTS if any(b.runs and b.lang in RUNNABLE_BY_SESSION for b in blocks(d))
    ]


RUNNABLE_BY_SESSION = {"sh", "console", "python"}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    running = Session(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.close()


def _run_document(session: Session, doc: Path) -> None:
    for block in blocks(doc):
        if block.runs and block.lang in RUNNABLE_BY_SESSION:
            session.run(block)
    session.finish()


@pytest.mark.parametrize("doc", _documents_that_run(), ids=lambda d: d.name)
def test_the_document_runs_as_written(session: Session, doc: Path) -> None:
    _run_document(session, doc)
    if doc.name == "README.md":
        _check_readme(session)


def _check_readme(session: Session) -> None:
    # What the first subscriber printed is what the README shows it prints: a line for each
    # publication, with the same fields (the block is a fragment: the hub's epoch, times and
    # cursors are its own).
    readme = blocks(ROOT / "README.md")
    (block,) = [b for b in readme if b.before.startswith("The subscriber prints")]
    shown = [json.loads(line) for line in block.text.splitlines()]
    printed = [json.loads(line) for line in session.output_of(r"subscribe chat:lobby$")]
    assert [(p.keys(), p["offset"], p["data"]) for p in printed[: len(shown)]] == [
        (s.keys(), s["offset"], s["data"]) for s in shown
    ]
    # Resumed from the cursor: exactly the three missed publications, in order, then live.
    resumed = [json.loads(line)["data"] for line in session.output_of(r"--since")]
    assert resumed[:3] == ["one", "two", "three"]
    # The cursor the README reads from /poll is the one the subscriber printed last.
    assert session.env["cursor"] == printed[1]["cursor"]
    # The FastAPI app's own hub delivered the order.
    (order,) = [json.loads(line) for line in session.output_of(r"subscribe orders:new")]
    assert order["channel"] == "orders:new" and order["data"] == {"item": "tea"}


def test_the_token_minting_example_mints_what_clarion_token_does(tmp_path: Path) -> None:
    """docs/client.md's PyJWT program and its `clarion token` line: one token, believed by a hub
    with the secret (the document's run checks that each runs, not what they mint)."""
    from clarion.core.auth import Authenticator
    from clarion.settings import Settings

    doc = blocks(ROOT / "docs" / "client.md")
    (program,) = [b for b in doc if b.runs and b.lang == "python" and "jwt.encode" in b.text]
    (command,) = [b for b in doc if b.runs and b.lang == "sh" and "clarion token" in b.text]
    secret = "t" * 43
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["CLARION_TOKEN_SECRET"] = secret
    (tmp_path / ".venv").symlink_to(sys.prefix)
    tokens = []
    for argv in ([sys.executable, "-c", program.text], ["bash", "-c", command.text]):
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert (done.returncode, done.stderr) == (0, ""), argv
        tokens.append(done.stdout.strip())
    hub = Authenticator(Settings(token_secret=secret))
    from_python, from_cli = (hub.verify(token) for token in tokens)
    assert from_python.user == "42" and "user:42" in from_python.channels
    assert from_python.publish
    assert (from_python.user, from_python.channels, from_python.publish) == (
        from_cli.user,
        from_cli.channels,
        from_cli.publish,
    )
    lifetimes = [c.claims["exp"] - c.claims["iat"] for c in (from_python, from_cli)]
    assert lifetimes == [3600, 3600]
