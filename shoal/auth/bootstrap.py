"""The local installation's credentials, created with the embedded server's key store.

The user who runs the embedded server owns its data dir, so their CLI acts as ``admin``
(``creds/admin.creds``); ``shoal up`` starts each service with its own user
(``creds/<service>.creds``), and the revocation warden also holds a system-account user
(``creds/sys.creds``) to push account updates. Nothing is re-issued once present.
"""

from __future__ import annotations

from pathlib import Path

from shoal.auth.permissions import role_permissions, service_permissions
from shoal.auth.store import SYSTEM_ACCOUNT, Issued, KeyStore
from shoal.bus import ShoalSettings

__all__ = ["LOCAL_ADMIN", "SERVICES", "SYSTEM_USER", "bootstrap", "local_creds"]

LOCAL_ADMIN = "admin"
SYSTEM_USER = "sys"
SERVICES = ("core", "query", "supervisor", "warden", "gateway", "console")


def bootstrap(settings: ShoalSettings) -> KeyStore:
    """Create the key store and the local users' credentials where missing."""
    store = KeyStore.for_data_dir(settings.data_dir)
    store.ensure()

    def issue(name: str) -> Issued:
        if name == LOCAL_ADMIN:
            permissions = role_permissions("admin", settings, settings.principal)
            tags = ("role:admin", f"principal:{settings.principal}")
            return store.issue(name, permissions, tags=tags)
        if name == SYSTEM_USER:
            return store.issue(name, None, account=SYSTEM_ACCOUNT)
        return store.issue(name, service_permissions(name), tags=(f"service:{name}",))

    for name in (LOCAL_ADMIN, SYSTEM_USER, *SERVICES):
        if not store.creds_path(name).is_file():
            store.write_creds(issue(name))
    return store


def local_creds(settings: ShoalSettings, name: str = LOCAL_ADMIN) -> Path | None:
    """The local installation's creds file for ``name``, if the embedded store has one."""
    path = KeyStore.for_data_dir(settings.data_dir).creds_path(name)
    return path if path.is_file() else None
