"""sealer-local: valetkey's default sealer — envelope encryption with a local key ring.

Every record is encrypted with AES-256-GCM under a fresh 32-byte data key, with the record's id
as associated data; the data key is wrapped with AES-256-GCM under the current key-encryption key
(KEK). The KEK ring lives in the selected secret store (entry ``kek-ring``; the OS keyring by
default), or comes from ``VALETKEY_KEK``, or is generated at the first seal; the kernel's home
holds the ids of the vault's keys (``kek-ids.json``) and the lock every change of the ring takes
(``kek-ring.lock``). See
:class:`valetkey_sealer_local.sealer.LocalSealer`; ``[plugin.sealer-local]`` is
:class:`LocalSealerConfig`.

This module holds only the hook implementations; ``cryptography`` is imported when the sealer is
first built, so ``valetkey --help`` never pays for it.
"""

from __future__ import annotations

from valetkey_hookspecs import PluginContext, Sealer, hookimpl
from valetkey_hookspecs.interfaces import RegisterFactory

from .config import LocalSealerConfig


@hookimpl
def valetkey_config_schema() -> type[LocalSealerConfig]:
    """``[plugin.sealer-local]``: see :class:`LocalSealerConfig`."""
    return LocalSealerConfig


@hookimpl
def valetkey_register_sealers(register: RegisterFactory[Sealer]) -> None:
    """Register the ``local`` sealer as the default one."""
    register("local", _factory, default=True)


def _factory(ctx: PluginContext) -> Sealer:
    from .sealer import LocalSealer

    config: LocalSealerConfig = ctx.config if ctx.config is not None else LocalSealerConfig()
    kernel = ctx.kernel
    # the secret store and the home are reached on first use of a key, not when the sealer is
    # built; the home holds kek-ids.json and kek-ring.lock
    return LocalSealer(
        lambda: kernel.secret_store, home=lambda: kernel.home, ring_ttl=config.ring_ttl
    )


__all__ = ["LocalSealerConfig", "valetkey_config_schema", "valetkey_register_sealers"]
