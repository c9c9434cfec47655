"""The plugin's hooks, its config and its import cost."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import valetkey_secrets_keyring as plugin
from valetkey_hookspecs import ConfigError, PluginContext, SecretStore
from valetkey_hookspecs.testing import PluginContract
from valetkey_secrets_keyring.config import KeyringConfig
from valetkey_secrets_keyring.filestore import EncryptedFileStore


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "secrets-keyring"


@dataclass
class _Kernel:
    home: Path


def _registered():
    seen = []
    plugin.valetkey_register_secret_stores(
        lambda name, factory, *, default=False: seen.append((name, factory, default))
    )
    return seen


def test_registers_the_keyring_store_as_default():
    (entry,) = _registered()
    assert entry[0] == "keyring"
    assert entry[2] is True


def test_the_factory_works_unconfigured(tmp_path, no_keyring):
    ((_, factory, _),) = _registered()
    store = factory(PluginContext(plugin="secrets-keyring", config=None, kernel=_Kernel(tmp_path)))
    assert isinstance(store, SecretStore)
    assert isinstance(store, EncryptedFileStore)
    store.set("k", "v")
    assert (tmp_path / "secrets").is_dir()


def test_the_factory_uses_the_config(tmp_path):
    ((_, factory, _),) = _registered()
    config = KeyringConfig(service="other", backend="file")
    store = factory(
        PluginContext(plugin="secrets-keyring", config=config, kernel=_Kernel(tmp_path))
    )
    assert isinstance(store, EncryptedFileStore)


def test_the_config_schema_is_a_dataclass_with_defaults():
    schema = plugin.valetkey_config_schema()
    assert schema is KeyringConfig
    assert KeyringConfig() == KeyringConfig(service="valetkey", backend="auto")


@pytest.mark.parametrize("bad", [{"backend": "plaintext"}, {"service": ""}])
def test_bad_config_values_are_rejected(bad):
    with pytest.raises(ValueError, match=r"backend must be one of|service must be"):
        KeyringConfig(**bad)


def test_the_kernel_validator_reports_a_bad_backend():
    msgspec = pytest.importorskip("msgspec")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"backend": "nope"}, type=KeyringConfig)
    assert msgspec.convert({"backend": "file"}, type=KeyringConfig).backend == "file"


def test_an_unknown_backend_reaching_the_factory_is_a_config_error(tmp_path):
    from valetkey_secrets_keyring.store import open_secret_store

    config = KeyringConfig()
    object.__setattr__(config, "backend", "nope")
    with pytest.raises(ConfigError, match="backend must be one of"):
        open_secret_store(config, tmp_path)


def test_importing_the_plugin_does_not_import_keyring_or_cryptography():
    code = (
        "import sys, valetkey_secrets_keyring\n"
        "heavy = [m for m in ('keyring', 'cryptography', 'secretstorage', 'jeepney') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
