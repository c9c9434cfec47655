"""Plugin discovery through real entry points: broken plugins are isolated, misspelled hooks are
named, and the policy (plugins.toml, VALETKEY_PLUGINS, VALETKEY_DISABLE_PLUGINS) is obeyed."""

from __future__ import annotations

import json

BROKEN = "raise RuntimeError('boom at import')\n"
MISSPELLED = """
from valetkey_hookspecs import hookimpl

@hookimpl
def valetkey_register_conectors(register):
    pass
"""
GOOD = '''
"""A test connector plugin."""
from valetkey_hookspecs import hookimpl, Connector, AuthSpec, AuthType

@hookimpl
def valetkey_register_connectors(register):
    register(Connector(slug="good", name="Good", auth=AuthSpec(type=AuthType.API_KEY)))
'''


def _plugins(run_cli, **env):
    proc = run_cli("plugins", "list", "--json", env=env, check_rc=0)
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_workspace_plugins_are_listed_with_their_distribution(run_cli):
    rows = _plugins(run_cli)
    for name in ("store-sqlite", "secrets-keyring", "sealer-local", "notify-log"):
        assert rows[name]["loaded"], rows[name]
        assert rows[name]["distribution"] == f"valetkey-{name}"
        assert rows[name]["version"] == "0.1.0"
    assert rows["notify-log"]["kinds"] == ["notifier"]
    assert rows["notify-log"]["provides"] == {"notifier": ["log"]}


def test_a_plugin_that_raises_at_import_is_reported_and_the_rest_still_work(
    run_cli, install_plugin
):
    install_plugin("broken", BROKEN)
    install_plugin("good", GOOD)
    rows = _plugins(run_cli)
    assert rows["broken"]["loaded"] is False
    assert rows["broken"]["error"] == "import failed: RuntimeError: boom at import"
    assert rows["good"]["loaded"] and rows["good"]["kinds"] == ["connectors"]
    assert rows["notify-log"]["loaded"]
    doctor = run_cli("plugins", "doctor")
    assert doctor.returncode == 1
    assert "plugin 'broken': import failed: RuntimeError: boom at import" in doctor.stderr
    assert "Traceback" not in doctor.stderr


def test_a_misspelled_hookimpl_is_reported_by_plugin_and_hook_name(run_cli, install_plugin):
    install_plugin("typo", MISSPELLED)
    rows = _plugins(run_cli)
    assert rows["typo"]["loaded"] is False
    assert rows["typo"]["error"] == (
        "unknown hook 'valetkey_register_conectors' (did you mean 'valetkey_register_connectors'?)"
    )
    doctor = run_cli("plugins", "doctor", "--json")
    assert doctor.returncode == 1
    report = json.loads(doctor.stdout)
    assert report["ok"] is False
    assert any(
        "plugin 'typo': unknown hook 'valetkey_register_conectors'" in p for p in report["problems"]
    )


def test_disable_env_removes_a_plugin(run_cli, install_plugin):
    install_plugin("good", GOOD)
    rows = _plugins(run_cli, VALETKEY_DISABLE_PLUGINS="good,notify-log")
    assert rows["good"]["enabled"] is False and rows["good"]["loaded"] is False
    assert rows["notify-log"]["loaded"] is False
    assert rows["store-sqlite"]["loaded"]


def test_allow_list_env_loads_only_the_named_plugins(run_cli, install_plugin):
    install_plugin("good", GOOD)
    rows = _plugins(run_cli, VALETKEY_PLUGINS="good")
    assert [n for n, r in rows.items() if r["loaded"]] == ["good", "valetkey"]


def test_policy_file_disables_and_strict_aborts(run_cli, install_plugin, tmp_path):
    install_plugin("broken", BROKEN)
    config = tmp_path / "policy.toml"
    config.write_text('disable = ["notify-log"]\n')
    rows = _plugins(run_cli, VALETKEY_CONFIG=str(config))
    assert rows["notify-log"]["loaded"] is False
    config.write_text("strict = true\n")
    proc = run_cli("plugins", "list", env={"VALETKEY_CONFIG": str(config)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "valetkey: error: strict plugin loading: plugin 'broken': import failed: "
        "RuntimeError: boom at import"
    )


def test_a_missing_required_plugin_stops_commands_and_doctor_names_it(run_cli, tmp_path):
    config = tmp_path / "policy.toml"
    config.write_text('required = ["nope"]\n')
    proc = run_cli("plugins", "list", env={"VALETKEY_CONFIG": str(config)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "valetkey: error: required plugin 'nope' is not installed (see 'valetkey plugins doctor')"
    )
    doctor = run_cli("plugins", "doctor", env={"VALETKEY_CONFIG": str(config)})
    assert doctor.returncode == 1
    assert "required plugin 'nope' is not installed" in doctor.stderr
    # --help still works so the user can find their way
    assert run_cli("--help", env={"VALETKEY_CONFIG": str(config)}).returncode == 0


def test_doctor_is_clean_on_the_default_install(run_cli):
    proc = run_cli("plugins", "doctor")
    assert (proc.returncode, proc.stdout.strip()) == (0, "all plugins loaded and configured"), (
        proc.stderr
    )
