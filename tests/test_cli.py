"""The CLI's surface: version, help (and its cache), plugin commands, one-line errors."""

from __future__ import annotations

COMMAND_PLUGIN = '''
"""A plugin that adds a command."""
from valetkey_hookspecs import hookimpl, InvalidInput

def hello(name: str) -> int:
    """Say hello."""
    if name == "bad":
        raise InvalidInput("bad is not a name")
    if name == "bug":
        raise KeyError("oops")
    print(f"hello {name}")
    return 0

@hookimpl
def valetkey_register_commands(app):
    app.command(hello, name="hello", help="Say hello (test plugin).")
'''


def test_version(run_cli):
    proc = run_cli("--version", check_rc=0)
    assert proc.stdout == "valetkey 0.1.0\n"


def test_help_lists_core_commands_and_is_served_from_cache_the_second_time(run_cli, tmp_path):
    first = run_cli("--help", check_rc=0)
    for command in ("plugins", "config", "vault", "serve"):
        assert command in first.stdout
    cached = list((tmp_path / "cache" / "valetkey").glob("help-*.json"))
    assert len(cached) == 1
    second = run_cli("--help", check_rc=0)
    assert second.stdout == first.stdout
    assert run_cli(check_rc=0).stdout == first.stdout  # bare 'valetkey' prints the same help


def test_installing_a_plugin_invalidates_the_help_cache(run_cli, install_plugin):
    before = run_cli("--help", check_rc=0).stdout
    assert "hello" not in before
    install_plugin("greeter", COMMAND_PLUGIN)
    after = run_cli("--help", check_rc=0).stdout
    assert "Say hello (test plugin)." in after


def test_plugin_commands_run_and_their_errors_are_one_line(run_cli, install_plugin):
    install_plugin("greeter", COMMAND_PLUGIN)
    assert run_cli("hello", "ann", check_rc=0).stdout == "hello ann\n"
    proc = run_cli("hello", "bad")
    assert (proc.returncode, proc.stderr) == (2, "valetkey: error: bad is not a name\n")


def test_parse_errors_exit_2_with_one_line(run_cli):
    proc = run_cli("plugins", "list", "--jsn")
    assert proc.returncode == 2
    assert proc.stderr.startswith("valetkey: error: ")
    assert "--jsn" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_a_broken_config_file_is_one_line_and_help_still_works(run_cli, tmp_path):
    config = tmp_path / "p.toml"
    config.write_text("autoload = maybe\n")
    env = {"VALETKEY_CONFIG": str(config)}
    proc = run_cli("plugins", "list", env=env)
    assert proc.returncode == 78
    assert proc.stderr.startswith(f"valetkey: error: {config}: invalid TOML")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert run_cli("--help", env=env).returncode == 0
    doctor = run_cli("plugins", "doctor", env=env)
    assert doctor.returncode == 1
    assert "invalid TOML" in doctor.stderr


def test_a_bug_is_one_line_unless_debugging(run_cli, install_plugin):
    install_plugin("greeter", COMMAND_PLUGIN)
    proc = run_cli("hello", "bug")
    assert proc.returncode == 70
    assert proc.stderr == (
        "valetkey: internal error: KeyError: 'oops' "
        "(set VALETKEY_DEBUG=1 for the traceback, and please report it)\n"
    )
    debug = run_cli("hello", "bug", env={"VALETKEY_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m valetkey connectors list | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.stdout.startswith("SLUG")
    assert proc.stderr == ""
