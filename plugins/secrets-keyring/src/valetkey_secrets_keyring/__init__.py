"""secrets-keyring: valetkey's default secret store (where its own KEK and machine tokens live).

Values go to the OS keyring (Secret Service on Linux, Keychain on macOS, Credential Locker on
Windows) through the ``keyring`` library, under the service name ``valetkey``. When no OS keyring
is usable — a headless server, a container, CI — they go to AES-256-GCM encrypted files under
``$VALETKEY_HOME/secrets/`` instead, and a warning says so.

This module holds only the hook implementations; ``keyring`` and ``cryptography`` are imported
when the store is first built, so ``valetkey --help`` never pays for them.
"""

from __future__ import annotations

from valetkey_hookspecs import PluginContext, SecretStore, hookimpl
from valetkey_hookspecs.interfaces import RegisterFactory

from .config import KeyringConfig


@hookimpl
def valetkey_config_schema() -> type[KeyringConfig]:
    """``[plugin.secrets-keyring]``: see :class:`KeyringConfig`."""
    return KeyringConfig


@hookimpl
def valetkey_register_secret_stores(register: RegisterFactory[SecretStore]) -> None:
    """Register the ``keyring`` secret store as the default one."""
    register("keyring", _factory, default=True)


def _factory(ctx: PluginContext) -> SecretStore:
    from .store import open_secret_store

    config: KeyringConfig = ctx.config if ctx.config is not None else KeyringConfig()
    return open_secret_store(config, ctx.home)


__all__ = ["KeyringConfig", "valetkey_config_schema", "valetkey_register_secret_stores"]
