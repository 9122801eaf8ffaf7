"""The code blocks of README.md and docs/*.md, and a runner that runs them as a reader would.

The conventions are those of docs/examples.md: the info string of a fence is the language,
optionally followed by ``fragment`` (shown, never run) or ``slow`` (runnable, too slow for the
suite: checked, not run). Everything else runs:

- ``sh``: each command runs in bash, in order, against a hub the runner started, and must end
  with status 0 — but a subscriber, a stream, a long poll or a server (``KEEPS_RUNNING``), which
  goes on in the background, as in a terminal of its own, until the document ends;
- ``console``: a transcript: ``$ `` lines are commands, the lines after them their output, which
  must match what the command prints. Cursors, epochs and times in the transcript stand for the
  ones the hub gives (the same value in the transcript is the same value from the hub, and a
  later command that quotes it gets the hub's), and ``…`` stands for any text;
- ``python``: a program, run to its end — or, when the paragraph before it says "save it as
  ``NAME``", a module written under that name for later commands;
- ``toml``: a configuration the settings model must accept; ``json``: a value that must parse.

The hub runs in development mode; ``localhost:8000`` and ``127.0.0.1:8000`` in blocks mean it,
and other ports in blocks get free ports of their own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import free_port, timeout

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"sh", "console", "python", "toml", "json"}
# Configuration for other programs, run as written by a test of its own.
DEDICATED = {
    "nginx": ROOT / "tests" / "deployment" / "test_nginx.py",
    "ini": ROOT / "tests" / "deployment" / "test_nginx.py",
    "html": ROOT / "tests" / "browser" / "test_client_js.py",
}
MARKS = {"fragment", "slow"}
HUB_PORT = 8000
# Commands a reader leaves running in a terminal of their own: subscribers, streams, long polls
# and servers. They run in the background until the document ends.
KEEPS_RUNNING = re.compile(
    r"\bclarion subscribe\b|\bcurl -N\b|\buvicorn\b|\bclarion serve\b|\bwhile true\b"
    r"|/poll\?[^ ]*timeout=[1-9]"
)
# How long a background command that talks to none of the hubs here is given to start.
BACKGROUND_AFTER = 3.0


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, from 1
    lang: str
    marks: set[str]
    text: str
    before: str  # the paragraph just above the fence

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return not self.marks and self.lang in RUNNABLE

    @property
    def saved_as(self) -> str | None:
        found = re.search(r"save it as `([\w.-]+)`", self.before, re.IGNORECASE)
        return found.group(1) if found else None


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)(.*)$", lines[i])
        if not fence:
            i += 1
            continue
        words = fence.group(2).split()
        end = i + 1
        while not lines[end].startswith(fence.group(1)):
            end += 1
        para_end = i
        while para_end > 0 and not lines[para_end - 1].strip():
            para_end -= 1
        para_start = para_end
        while para_start > 0 and lines[para_start - 1].strip():
            para_start -= 1
        found.append(
            Block(
                doc=doc,
                line=i + 1,
                lang=words[0] if words else "",
                marks=set(words[1:]),
                text="\n".join(lines[i + 1 : end]) + "\n",
                before="\n".join(lines[para_start:para_end]),
            )
        )
        i = end + 1
    return found


def commands(script: str) -> list[str]:
    """Split shell text into complete commands (a loop or a continued line stays whole)."""
    out: list[str] = []
    pending: list[str] = []
    for line in script.splitlines():
        if not pending and not line.strip():
            continue
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if check.returncode == 0:
            out.append(text)
            pending = []
    assert not pending, f"incomplete shell command: {pending}"
    return out


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"output before any command: {line!r}"
            pairs[-1][1].append(line)
    for _, expected in pairs:
        while expected and not expected[-1].strip():
            expected.pop()
    return pairs


# Values the hub chooses: they stand for themselves across a transcript.
_VARIABLE = re.compile(
    r"(?P<cursor>AQ[A-Za-z0-9_-]{8,})"
    r"|(?P<epoch>(?<![0-9A-Za-z])[0-9a-f]{12}(?![0-9A-Za-z]))"
    r"|(?P<time>(?<!\d)1\d{12}(?!\d))"
    r"|(?P<any>…)"
)
_VALUE = {"cursor": r"([A-Za-z0-9_-]+)", "epoch": r"([0-9a-f]{12})", "time": r"(\d{13})"}


@dataclass
class Background:
    command: str
    proc: subprocess.Popen[bytes]
    output: list[str]
    expected: list[str] | None
    block: Block


@dataclass
class Session:
    """One document's blocks, run in order in one working directory against one hub."""

    workdir: Path
    hub_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # transcript value -> the hub's
    background: list[Background] = field(default_factory=list)
    hub: subprocess.Popen[bytes] | None = None
    hub_log: list[str] = field(default_factory=list)
    outputs: list[tuple[str, list[str]]] = field(default_factory=list)

    # -- the hub ---------------------------------------------------------------------------

    def start(self) -> None:
        venv = Path(sys.prefix)
        (self.workdir / ".venv").symlink_to(venv)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "clarion.cli", "serve", "--port", "0"],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        port = _pump(self.hub, self.hub_log, r"listening on http://[^:]+:(\d+)")
        assert port, "the hub did not start:\n" + "".join(self.hub_log)
        self.hub_port = int(port)
        self.ports[str(HUB_PORT)] = self.hub_port
        env["CLARION_URL"] = f"http://127.0.0.1:{self.hub_port}"

    def close(self) -> None:
        for bg in self.background:
            _stop(bg.proc)
        if self.hub is not None:
            _stop(self.hub)

    # -- blocks ----------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        assert block.runs, block
        if block.lang == "sh":
            for command in commands(block.text):
                self.command(command, None, block)
        elif block.lang == "console":
            for command, expected in transcript(block.text):
                self.command(command, expected, block)
        elif block.lang == "python":
            self.python(block)

    def python(self, block: Block) -> None:
        code = self.substitute(block.text)
        compile(code, str(block), "exec")
        if block.saved_as:
            (self.workdir / block.saved_as).write_text(code)
            return
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout(60),
        )
        assert result.returncode == 0, f"{block}: the program failed:\n{result.stderr}"
        self.outputs.append((block.text, result.stdout.splitlines()))

    def command(self, command: str, expected: list[str] | None, block: Block) -> None:
        assert "…" not in command, f"{block}: a placeholder in a runnable command: {command}"
        self.settle()
        command = self.substitute(command)
        assignment = re.fullmatch(r"(?:export )?([A-Za-z_]\w*)=.*", command, re.DOTALL)
        script = command
        if assignment:  # keep the variable for the commands that follow, as a shell would
            script = f'{command}\nprintf %s "${assignment.group(1)}"'
        keeps_running = bool(KEEPS_RUNNING.search(command))
        hub = self.hub_of(command) if keeps_running else None
        before = self.subscriptions(hub) if hub else 0
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        output: list[str] = []
        errors: list[str] = []
        readers = [
            threading.Thread(target=_collect, args=(proc.stdout, output), daemon=True),
            threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True),
        ]
        for reader in readers:
            reader.start()
        if keeps_running:
            self.background.append(Background(command, proc, output, expected, block))
            self.ready(command, hub, before, proc, errors)
            return
        try:
            proc.wait(timeout(60))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{block}: `{command}` did not end: if it is meant to keep running, "
                "teach tests/docblocks.py's KEEPS_RUNNING"
            ) from None
        for reader in readers:
            reader.join(timeout(5))
        failed = f"{block}: `{command}` exited {proc.returncode}:\n" + "".join(errors)
        assert proc.returncode == 0, failed
        lines = [line.rstrip("\n") for line in output]
        if assignment:
            self.env[assignment.group(1)] = "".join(output)
            lines = []
        self.outputs.append((command, lines))
        if expected is not None:
            self.match(block, command, expected, lines)

    def hub_of(self, command: str) -> str | None:
        """The base URL of the hub a command talks to, if it talks to one."""
        url = re.search(r"--url (\S+)", command)
        if url:
            return url.group(1).rstrip("/")
        if f":{self.hub_port}" in command or re.search(r"\bclarion (subscribe|publish)\b", command):
            return f"http://127.0.0.1:{self.hub_port}"
        return None

    def ready(
        self,
        command: str,
        hub: str | None,
        before: int,
        proc: subprocess.Popen[bytes],
        errors: list[str],
    ) -> None:
        """Wait until a command that keeps running is in place, as a reader would see it."""
        ports = re.findall(r"--port (\d+)", command)
        for port in ports:
            _wait_listening(int(port))
        deadline = time.monotonic() + timeout(20)
        if hub:  # it subscribed on the hub: its session open is not enough, on a busy machine
            while self.subscriptions(hub) <= before:
                assert proc.poll() is None, f"`{command}` ended:\n" + "".join(errors)
                assert time.monotonic() < deadline, f"`{command}` never subscribed"
                time.sleep(0.05)
        elif not ports:  # nothing to watch: give it the time a reader would
            time.sleep(timeout(BACKGROUND_AFTER))

    def subscriptions(self, hub: str) -> int:
        """Subscriptions held on the hub at ``hub``, from its /metrics."""
        with urllib.request.urlopen(f"{hub}/metrics", timeout=timeout(10)) as response:
            text = response.read().decode()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("clarion_subscriptions{")
            )
        )

    def settle(self) -> None:
        """Check the transcripts of background commands that have printed all they show."""
        for bg in self.background:
            if bg.expected and len(bg.output) >= len(bg.expected):
                lines = [line.rstrip("\n") for line in bg.output[: len(bg.expected)]]
                self.match(bg.block, bg.command, bg.expected, lines)
                bg.expected = None

    def finish(self) -> None:
        """Stop what was left running; check what it printed against its transcript."""
        for bg in self.background:
            wanted = len(bg.expected or [])
            deadline = time.monotonic() + timeout(10)
            while len(bg.output) < wanted and time.monotonic() < deadline:
                time.sleep(0.05)
            _stop(bg.proc)
            lines = [line.rstrip("\n") for line in bg.output]
            self.outputs.append((bg.command, lines))
            if bg.expected:
                self.match(bg.block, bg.command, bg.expected, lines[: len(bg.expected)])
        self.background.clear()

    def output_of(self, pattern: str) -> list[str]:
        """The output of the first command (or program) that matches ``pattern``."""
        for command, lines in self.outputs:
            if re.search(pattern, command):
                return lines
        raise AssertionError(f"no command matches {pattern!r}")

    # -- values ----------------------------------------------------------------------------

    def substitute(self, text: str) -> str:
        def port(m: re.Match[str]) -> str:
            number = m.group(2)
            if number not in self.ports:
                self.ports[number] = free_port()
            return f"{m.group(1)}{self.ports[number]}"

        text = re.sub(r"(localhost:|127\.0\.0\.1:|--port )(\d{4,5})\b", port, text)
        for shown, actual in self.values.items():
            text = text.replace(shown, actual)
        return text

    def match(self, block: Block, command: str, expected: list[str], actual: list[str]) -> None:
        where = f"{block}: `{command}`"
        assert len(actual) == len(expected), f"{where} printed\n" + "\n".join(actual)
        for want, got in zip(expected, actual, strict=True):
            pattern, names = [], []
            last = 0
            for m in _VARIABLE.finditer(want):
                pattern.append(re.escape(want[last : m.start()]))
                kind = m.lastgroup or "any"
                if kind == "any":
                    pattern.append(".*?")
                else:
                    pattern.append(_VALUE[kind])
                    names.append((kind, m.group()))
                last = m.end()
            pattern.append(re.escape(want[last:]))
            found = re.fullmatch("".join(pattern), got)
            assert found, f"{where} printed\n{got}\nwhere the document shows\n{want}"
            for (kind, shown), value in zip(names, found.groups(), strict=True):
                if kind == "time":
                    continue
                bound = self.values.setdefault(shown, value)
                assert bound == value, f"{where}: {shown} stands for {bound} and {value}"
        assert len(set(self.values.values())) == len(self.values), f"{where}: {self.values}"


def _collect(stream: object, into: list[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        into.append(raw.decode(errors="replace"))


def _pump(proc: subprocess.Popen[bytes], log: list[str], pattern: str) -> str | None:
    """Read ``proc``'s stderr until ``pattern`` shows (its group), then keep draining it."""
    assert proc.stderr is not None
    found: str | None = None
    deadline = time.monotonic() + timeout(20)
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line:
            break
        log.append(line)
        m = re.search(pattern, line)
        if m:
            found = m.group(1)
            break
    threading.Thread(target=_collect, args=(proc.stderr, log), daemon=True).start()
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout(10))
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + timeout(20)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")
