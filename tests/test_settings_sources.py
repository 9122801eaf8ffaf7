"""Reading settings from the environment and files, and naming the origin of a bad value."""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from clarion import ConfigError, Settings
from clarion.settings import url_host
from clarion.settings_sources import CLIENT_VARIABLES, annotation_at, load


def _list_settings() -> list[str]:
    return [
        name
        for name, field in Settings.model_fields.items()
        if typing.get_origin(field.annotation) is list
        and typing.get_args(field.annotation) == (str,)
    ]


# Two valid entries for the list settings that check theirs.
SAMPLES = {
    "allowed_origins": ("https://a.example", "http://localhost:*"),
    "trusted_proxies": ("10.0.0.0/8", "192.0.2.1"),
}


def test_every_list_setting_takes_json_or_commas() -> None:
    names = _list_settings()
    assert "allowed_origins" in names and "webhook_allow_hosts" in names
    for name in names:
        variable = f"CLARION_{name.upper()}"
        a, b = SAMPLES.get(name, ("a.example", "b.example"))
        settings, _ = load(Settings, None, {}, environ={variable: f" {a} , {b},"})
        assert getattr(settings, name) == [a, b], name
        settings, _ = load(Settings, None, {}, environ={variable: json.dumps([b, a])})
        assert getattr(settings, name) == [b, a], name
        settings, _ = load(Settings, None, {}, environ={variable: ""})
        assert getattr(settings, name) == [], name


def test_a_bad_entry_is_shown_as_written() -> None:
    with pytest.raises(ConfigError) as caught:
        load(Settings, None, {}, environ={"CLARION_TRUSTED_PROXIES": "10.0.0.0/8,nonsense"})
    assert caught.value.message == (
        "CLARION_TRUSTED_PROXIES=10.0.0.0/8,nonsense: not an address or CIDR block: 'nonsense'"
    )


def test_api_key_is_one_key_or_a_json_list() -> None:
    settings, _ = load(Settings, None, {}, environ={"CLARION_API_KEY": "k1,k2"})
    assert settings.api_keys == ["k1,k2"]
    settings, _ = load(Settings, None, {}, environ={"CLARION_API_KEY": '["k1", "k2"]'})
    assert settings.api_keys == ["k1", "k2"]


def test_a_string_setting_is_never_parsed() -> None:
    secret = '["not", "a list"]'
    settings, _ = load(Settings, None, {}, environ={"CLARION_TOKEN_SECRET": secret})
    assert settings.token_secret == secret


def test_nested_variables_merge_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "clarion.toml"
    config.write_text("[limits]\nmax_connections = 5\n[namespaces.chat]\nhistory_size = 7\n")
    settings, sourced = load(
        Settings,
        config,
        {"port": 0},
        environ={
            "CLARION_LIMITS__MAX_CONNECTIONS_PER_IP": "3",
            "CLARION_NAMESPACES__CHAT__PRESENCE": "false",
            "CLARION_URL": "http://elsewhere",
            "PATH": "/bin",
        },
    )
    assert (settings.limits.max_connections, settings.limits.max_connections_per_ip) == (5, 3)
    chat = settings.namespace("chat")
    assert (chat.history_size, chat.presence) == (7, False)
    assert settings.port == 0
    assert sourced.variables == [
        "CLARION_LIMITS__MAX_CONNECTIONS_PER_IP",
        "CLARION_NAMESPACES__CHAT__PRESENCE",
    ]


@pytest.mark.parametrize("variable", sorted(CLIENT_VARIABLES))
def test_the_client_commands_variables_are_not_settings(variable: str) -> None:
    settings, sourced = load(Settings, None, {}, environ={variable: "x"})
    assert sourced.variables == [] and settings == Settings.model_validate({})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CLARION_": "1"}, "CLARION_: not a setting name (empty part between '__')"),
        (
            {"CLARION_LIMITS____X": "1"},
            "CLARION_LIMITS____X: not a setting name (empty part between '__')",
        ),
        ({"CLARION_PORT__X": "1"}, "CLARION_PORT__X: port: must be a valid integer"),
        ({"CLARION_HOST__X": "1"}, "CLARION_HOST__X: host: must be a valid string"),
        (
            {"CLARION_WEBHOOKS": "a,b"},
            "CLARION_WEBHOOKS: webhooks[0]: must be a table\n"
            "CLARION_WEBHOOKS: webhooks[1]: must be a table",
        ),
        ({"CLARION_NAMESPACES__CHAT": "5"}, "CLARION_NAMESPACES__CHAT=5: must be a table"),
        ({"CLARION_INSECURE": "maybe"}, "CLARION_INSECURE=maybe: must be a valid boolean"),
        ({"clarion_port": "x"}, "clarion_port=x: must be a valid integer"),
    ],
)
def test_bad_variables_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(Settings, None, {}, environ=environ)
    assert caught.value.message == message


def _union_settings() -> list[tuple[str, ...]]:
    """Every setting whose type is a union of more than one type besides None."""
    found: list[tuple[str, ...]] = []

    def visit(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if typing.get_origin(annotation) in (typing.Union, types.UnionType):
                if len([a for a in typing.get_args(annotation) if a is not type(None)]) > 1:
                    found.append((*path, name))
            elif typing.get_origin(annotation) in (dict, list):  # [namespaces.chat], [[webhooks]]
                item = typing.get_args(annotation)[-1]
                if isinstance(item, type) and issubclass(item, BaseModel) and name != "webhooks":
                    visit(item, (*path, name, "chat"))
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                visit(annotation, (*path, name))

    visit(Settings, ())
    return found


def test_a_value_of_no_type_of_a_union_is_one_line_of_what_it_accepts(tmp_path: Path) -> None:
    unions = _union_settings()
    assert set(unions) >= {("api_key",), ("namespaces", "chat", "join_leave")}
    config = tmp_path / "clarion.toml"
    for path in unions:
        # A table is of none of their types: from a file, and from the environment.
        table = f"[{'.'.join(path[:-1])}]\n" if path[:-1] else ""
        config.write_text(f"{table}{path[-1]} = {{ x = 1 }}\n")
        variable = "CLARION_" + "__".join(path).upper()
        for file, environ, named in [
            (config, {}, ".".join(path)),
            (None, {variable: '{"x": 1}'}, variable),
        ]:
            with pytest.raises(ConfigError) as caught:
                load(Settings, file, {}, environ=environ)
            (line,) = caught.value.message.splitlines()
            # The setting as written, not a member of pydantic's naming (join_leave.bool).
            assert re.search(rf"{re.escape(named)}[ =]", line), line
            assert ": must be " in line and " or " in line and "valid" not in line, line


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"CLARION_NAMESPACES__CHAT__JOIN_LEAVE": "users"},
            'CLARION_NAMESPACES__CHAT__JOIN_LEAVE=users: must be true, false, "user" or "client"',
        ),
        (
            {"CLARION_NAMESPACES": '{"chat": {"join_leave": 3}}'},
            "CLARION_NAMESPACES: namespaces.chat.join_leave: "
            'must be true, false, "user" or "client"',
        ),
        (
            {"CLARION_API_KEY": '["k1", 2]'},
            "CLARION_API_KEY (value not shown): must be a valid string",
        ),
        (
            {"CLARION_NAMESPACES__CHAT__SLOW_CONSUMER": "drop"},
            'CLARION_NAMESPACES__CHAT__SLOW_CONSUMER=drop: must be "disconnect" or "conflate"',
        ),
    ],
)
def test_choices_are_said_as_a_file_writes_them(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(Settings, None, {}, environ=environ)
    assert caught.value.message == message


def test_many_errors_are_counted_beyond_five() -> None:
    environ = {f"CLARION_UNKNOWN_{n}": "1" for n in range(8)}
    with pytest.raises(ConfigError) as caught:
        load(Settings, None, {}, environ=environ)
    lines = caught.value.message.splitlines()
    assert len(lines) == 6 and lines[-1] == "… and 3 more"


def test_overrides_in_code_are_named_as_such() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(port=70000)
    assert caught.value.message == "Settings.load(port=70000): must be less than or equal to 65535"


def test_settings_built_in_code_read_the_environment_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLARION_ALLOWED_ORIGINS", "https://a.example,https://b.example")
    assert Settings().allowed_origins == ["https://a.example", "https://b.example"]
    # A variable at fault is named as Settings.load names it, with the same error.
    monkeypatch.setenv("CLARION_NOT_A_SETTING", "1")
    for make in (Settings, Settings.load):
        with pytest.raises(ConfigError) as caught:
            make()
        assert caught.value.message == "CLARION_NOT_A_SETTING: unknown setting"
    with pytest.raises(ConfigError) as caught:  # with a value in code at fault beside it
        Settings(port="x")
    assert caught.value.message.splitlines() == [
        "Settings(port='x'): must be a valid integer",
        "CLARION_NOT_A_SETTING: unknown setting",
    ]
    monkeypatch.delenv("CLARION_NOT_A_SETTING")
    monkeypatch.setenv("CLARION_LIMITS__MAX_CONNECTIONS", "-5")
    with pytest.raises(ConfigError) as caught:
        Settings(port=9000)
    assert caught.value.message == (
        "CLARION_LIMITS__MAX_CONNECTIONS=-5: must be greater than or equal to 1"
    )


def test_settings_built_in_code_win_over_the_environment_key_by_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLARION_PORT", "9000")
    monkeypatch.setenv("CLARION_HOST", "127.0.0.2")
    monkeypatch.setenv("CLARION_LIMITS__MAX_CONNECTIONS", "7")
    monkeypatch.setenv("CLARION_LIMITS__MAX_CONNECTIONS_PER_IP", "3")
    settings = Settings(port=9001, limits={"max_connections": 8})
    assert (settings.host, settings.port) == ("127.0.0.2", 9001)
    # A table given in code is merged with the environment's, not put in its place.
    assert (settings.limits.max_connections, settings.limits.max_connections_per_ip) == (8, 3)
    # Validated as any value: a bad one given in code is pydantic's error, as it always was.
    with pytest.raises(ValidationError, match="port"):
        Settings(port="not a port")
    # Read afresh at each construction; a copy keeps what its original read.
    monkeypatch.setenv("CLARION_PORT", "9002")
    assert Settings().port == 9002
    assert settings.model_copy().port == 9001


def test_annotation_at_follows_tables_lists_and_namespaces() -> None:
    assert annotation_at(Settings, ("limits", "max_connections")) is int
    assert annotation_at(Settings, ("namespaces", "anything", "history_size")) is int
    assert annotation_at(Settings, ("webhooks", 0, "url")) is str
    assert annotation_at(Settings, ("nothing",)) is None
    assert annotation_at(Settings, ("port", "x")) is None


@pytest.mark.parametrize(
    ("host", "url", "listening"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000", "127.0.0.1"),
        ("0.0.0.0", "http://127.0.0.1:8000", "0.0.0.0"),
        ("::1", "http://[::1]:8000", "[::1]"),
        ("::", "http://[::1]:8000", "[::]"),
        ("fd00::5", "http://[fd00::5]:8000", "[fd00::5]"),
        ("hub.internal", "http://hub.internal:8000", "hub.internal"),
    ],
)
def test_the_hubs_own_url_holds_an_ipv6_host_in_brackets(
    host: str, url: str, listening: str
) -> None:
    assert Settings(host=host, port=8000, insecure=True).local_url() == url
    assert url_host(host) == listening  # what `clarion serve` says it listens on
