"""plugins.toml parsing, env overrides, $env/$file references, schema validation and redaction.
Every bad input names the file or table and the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from valetkey.config import redact, resolve_refs, validate
from valetkey.policy import load_policy, parse_policy
from valetkey_hookspecs import ConfigError


def test_defaults_load_everything():
    policy = parse_policy({})
    assert policy.autoload and policy.wants("anything")
    assert policy.allow_list is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"autolaod": True}, "plugins.toml: unknown key 'autolaod'"),
        ({"strict": "yes"}, "plugins.toml: strict must be true or false"),
        ({"disable": "x"}, "plugins.toml: disable must be a list of plugin names"),
        ({"select": {"stroe": "sqlite"}}, "[select] 'stroe' is not a selectable kind"),
        ({"select": {"store": 3}}, "[select] store must be a driver name"),
        ({"plugin": {"x": 1}}, "[plugin.<name>] entries must be tables"),
    ],
)
def test_bad_policy_documents_are_named(doc, message):
    with pytest.raises(ConfigError) as info:
        parse_policy(doc)
    assert message in str(info.value)


def test_env_allow_list_and_disable(monkeypatch):
    monkeypatch.setenv("VALETKEY_PLUGINS", "a, b")
    monkeypatch.setenv("VALETKEY_DISABLE_PLUGINS", "b")
    policy = parse_policy({"enable": ["c"]})
    assert [n for n in ("a", "b", "c") if policy.wants(n)] == ["a"]
    monkeypatch.setenv("VALETKEY_PLUGINS", "")
    assert not parse_policy({}).wants("a")


def test_autoload_false_loads_only_enabled_and_required():
    policy = parse_policy({"autoload": False, "enable": ["a"], "required": ["r"]})
    assert [n for n in ("a", "b", "r") if policy.wants(n)] == ["a", "r"]


def test_invalid_toml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("autoload = \n")
    with pytest.raises(ConfigError, match=rf"{bad}: invalid TOML"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")


def test_env_and_file_references(tmp_path, monkeypatch):
    monkeypatch.setenv("VK_TEST_SECRET", "s3cr3t-value")
    (tmp_path / "dsn.txt").write_text("postgres://x\n")
    got = resolve_refs(
        {"a": {"$env": "VK_TEST_SECRET"}, "b": [{"$file": "dsn.txt"}], "c": 1},
        where="[plugin.x]",
        base=tmp_path,
    )
    assert got == {"a": "s3cr3t-value", "b": ["postgres://x"], "c": 1}


def test_missing_env_reference_names_the_key():
    with pytest.raises(ConfigError) as info:
        resolve_refs(
            {"client": {"secret": {"$env": "VK_NOT_SET_ANYWHERE"}}}, where="[plugin.x]", base=None
        )
    assert str(info.value) == (
        "[plugin.x].client.secret: environment variable VK_NOT_SET_ANYWHERE is not set"
    )


def test_unreadable_file_reference_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[plugin.x\].k: cannot read \$file .*nope"):
        resolve_refs({"k": {"$file": "nope"}}, where="[plugin.x]", base=tmp_path)


@dataclass
class Schema:
    port: int = 1
    names: list[str] = field(default_factory=list)
    token: str = field(default="", repr=False)


def test_validation_gives_a_typed_object():
    config = validate("demo", Schema, {"port": 8, "names": ["a"]}, base=None)
    assert config == Schema(port=8, names=["a"])


def test_validation_errors_point_at_the_key():
    with pytest.raises(ConfigError) as info:
        validate("demo", Schema, {"port": "eight"}, base=None)
    assert str(info.value) == "[plugin.demo]: Expected `int`, got `str` - at `[plugin.demo].port`"


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError) as info:
        validate("demo", Schema, {"prot": 1}, base=None)
    assert (
        str(info.value)
        == "[plugin.demo]: unknown key 'prot' (plugin 'demo' knows: port, names, token)"
    )


def test_a_table_for_a_plugin_without_schema_is_an_error():
    with pytest.raises(ConfigError, match="plugin 'demo' takes no configuration"):
        validate("demo", None, {"a": 1}, base=None)
    assert validate("demo", None, None, base=None) is None


def test_redaction_hides_references_and_sensitive_keys():
    shown = redact(
        {
            "client_secret": "abc",
            "api_key": {"$env": "K"},
            "port": 5,
            "nested": {"password": "pw", "host": "h"},
        }
    )
    assert shown == {
        "client_secret": "[REDACTED]",
        "api_key": "[REDACTED] ($env K)",
        "port": 5,
        "nested": {"password": "[REDACTED]", "host": "h"},
    }


def test_config_show_redacts(run_cli, tmp_path):
    config = tmp_path / "p.toml"
    config.write_text(
        '[plugin.notify-log]\nlevel = "ERROR"\n[plugin.other]\ntoken = "t0psecret"\n'
        'dsn = { "$env" = "PGDSN" }\n'
    )
    proc = run_cli("config", "show", env={"VALETKEY_CONFIG": str(config)}, check_rc=0)
    assert "t0psecret" not in proc.stdout
    assert 'token = "[REDACTED]"' in proc.stdout
    assert 'dsn = "[REDACTED] ($env PGDSN)"' in proc.stdout
    assert 'level = "ERROR"' in proc.stdout


def test_a_found_config_writable_by_others_is_refused(run_cli, tmp_path):
    work = tmp_path / "work"
    config = work / "plugins.toml"
    config.write_text('disable = ["notify-log"]\n')
    config.chmod(0o666)
    proc = run_cli("plugins", "list")
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        f"valetkey: error: {config} is owned by another user or writable by others: refusing "
        f"to use it (chmod go-w {config}, or name a config with VALETKEY_CONFIG)"
    )
    config.chmod(0o644)
    assert run_cli("plugins", "list").returncode == 0


def test_a_bad_notify_log_level_is_found_by_doctor(run_cli, tmp_path):
    config = tmp_path / "p.toml"
    config.write_text('[plugin.notify-log]\nlevel = "LOUD"\n')
    proc = run_cli("plugins", "doctor", env={"VALETKEY_CONFIG": str(config)})
    assert proc.returncode == 1
    assert "[plugin.notify-log] level: unknown logging level 'LOUD'" in proc.stderr
