"""``valetkey connectors list|show`` through the real CLI, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from valetkey_connectors.loader import builtin
from valetkey_connectors.render import connector_to_dict


def test_list_json_is_the_whole_catalog_sorted_by_slug(run_cli) -> None:
    result = run_cli("connectors", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = json.loads(result.stdout)
    slugs = [row["slug"] for row in rows]
    assert slugs == sorted(slugs)
    assert len(rows) >= 25
    assert {"github", "google", "openai", "anthropic", "datadog"} <= set(slugs)
    by_slug = {row["slug"]: row for row in rows}
    assert by_slug["github"]["source"] == "built-in"
    assert by_slug["github"]["auth"]["device_authorization_url"] == (
        "https://github.com/login/device/code"
    )


def test_list_prints_a_table(run_cli) -> None:
    result = run_cli("connectors", "list")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["SLUG", "NAME", "AUTH", "HOSTS", "RATE"]
    github = next(line for line in lines if line.startswith("github "))
    assert github.split()[:3] == ["github", "GitHub", "oauth2"]
    assert "api.github.com" in github and github.endswith("5000/h")
    datadog = next(line for line in lines if line.startswith("datadog "))
    assert "+5 more" in datadog  # long host lists are shortened in the table


def test_list_filters_by_auth_type(run_cli) -> None:
    result = run_cli("connectors", "list", "--json", "--type", "api_key")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and {row["auth"]["type"] for row in rows} == {"api_key"}
    slugs = {row["slug"] for row in rows}
    assert "openai" in slugs and "github" not in slugs
    oauth = json.loads(run_cli("connectors", "list", "--json", "--type", "oauth2").stdout)
    assert {row["auth"]["type"] for row in oauth} == {"oauth2"}
    assert len(oauth) + len(rows) >= 25


def test_list_rejects_an_unknown_auth_type(run_cli) -> None:
    result = run_cli("connectors", "list", "--type", "password")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("valetkey: error: ")


def test_show_json_has_every_field(run_cli) -> None:
    result = run_cli("connectors", "show", "github", "--json")
    assert result.returncode == 0, result.stderr
    github = next(c for c in builtin()[0] if c.slug == "github")
    assert json.loads(result.stdout) == json.loads(
        json.dumps(connector_to_dict(github, "built-in"))
    )


def test_show_prints_every_field(run_cli) -> None:
    result = run_cli("connectors", "show", "anthropic")
    assert result.returncode == 0, result.stderr
    fields = dict((line[:16].strip(), line[16:].strip()) for line in result.stdout.splitlines())
    assert fields["slug"] == "anthropic"
    assert fields["auth"] == "api_key"
    assert fields["injection"] == "api.anthropic.com"
    assert fields["header"] == "x-api-key: {token}"
    assert fields["add header"] == "anthropic-version: 2023-06-01"
    assert fields["env var"] == "ANTHROPIC_API_KEY"
    assert fields["rate"] == "50 requests per 60 s (50/min)"
    assert fields["source"] == "built-in"


def test_show_an_unknown_slug_is_one_line_and_exit_1(run_cli) -> None:
    known = len(json.loads(run_cli("connectors", "list", "--json").stdout))
    result = run_cli("connectors", "show", "nope")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"valetkey: error: unknown connector 'nope' ({known} known; "
        "see 'valetkey connectors list')\n"
    )


def test_user_connectors_and_the_plugin_config_reach_the_cli(
    run_cli, user_dir: Path, acme_toml: str, isolated: Path
) -> None:
    path = user_dir / "acme.toml"
    path.write_text(acme_toml)
    rows = json.loads(run_cli("connectors", "list", "--json").stdout)
    acme = next(row for row in rows if row["slug"] == "acme")
    assert acme["source"] == str(path)
    assert acme["injection"]["env_var"] == "ACME_API_KEY"

    (isolated / "plugins.toml").write_text("[plugin.connectors]\nbuiltin = false\n")
    result = run_cli("connectors", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert [row["slug"] for row in json.loads(result.stdout)] == ["acme"]


def test_a_bad_file_is_a_warning_for_list_and_a_problem_for_doctor(
    run_cli, user_dir: Path, acme_toml: str
) -> None:
    (user_dir / "acme.toml").write_text(acme_toml)
    bad = user_dir / "broken.toml"
    bad.write_text(
        'name = "Broken"\n[auth]\ntype = "oauth2"\nauthorize_url = "https://x.example/a"\n'
    )
    line = f'{bad}: auth.token_url: required for type "oauth2"'

    listed = run_cli("connectors", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "acme" in {row["slug"] for row in json.loads(listed.stdout)}
    assert f"WARNING valetkey.connectors: {line}" in listed.stderr

    doctor = run_cli("plugins", "doctor", "--json")
    assert doctor.returncode == 1
    assert f"plugin 'connectors': {line}" in json.loads(doctor.stdout)["problems"]
