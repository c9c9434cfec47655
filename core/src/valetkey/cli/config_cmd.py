"""``valetkey config show``: the policy and plugin config in force, with secrets redacted."""

from __future__ import annotations

from cyclopts import App

from .output import print_json

app = App(name="config", help="Show the configuration in force (secrets redacted).")


@app.command
def show(*, json: bool = False) -> int:
    """Show where config and state live, the policy, and every plugin table (redacted).

    Parameters
    ----------
    json
        Print JSON instead of TOML-like text.
    """
    from ..config import redact
    from ..paths import default_home, find_config
    from ..policy import load_policy

    path = find_config()
    policy = load_policy(path)
    data = {
        "config_file": str(path) if path else None,
        "home": str(default_home()),
        "autoload": policy.autoload,
        "strict": policy.strict,
        "enable": sorted(policy.enable),
        "disable": sorted(policy.disable),
        "required": sorted(policy.required),
        "allow_list": sorted(policy.allow_list) if policy.allow_list is not None else None,
        "select": dict(policy.select),
        "plugin": redact({k: dict(v) for k, v in policy.plugin_config.items()}),
    }
    if json:
        print_json(data)
        return 0
    import json as _json

    print(f"# config file: {data['config_file'] or '(none: built-in defaults)'}")
    print(f"# state folder: {data['home']}")
    for key in ("autoload", "strict", "enable", "disable", "required"):
        print(f"{key} = {_json.dumps(data[key])}")
    if policy.allow_list is not None:
        print(f"# VALETKEY_PLUGINS allow-list: {_json.dumps(data['allow_list'])}")
    print("\n[select]")
    for kind, name in data["select"].items():
        print(f"{kind} = {_json.dumps(name)}")
    for name, table in data["plugin"].items():
        print(f"\n[plugin.{name}]")
        for key, value in table.items():
            print(f"{key} = {_json.dumps(value)}")
    return 0
