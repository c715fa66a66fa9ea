"""Identity and authority: NATS JWT auth (operator, accounts, users), roles, revocation."""

from shoal.auth.bootstrap import LOCAL_ADMIN, SERVICES, SYSTEM_USER, bootstrap, local_creds
from shoal.auth.jwt import KeyPair, Permissions, creds_file, decode_claims, new_key, parse_creds
from shoal.auth.permissions import (
    ADMIN_ENDPOINTS,
    ROLES,
    InstanceScope,
    Role,
    instance_permissions,
    role_permissions,
    service_permissions,
)
from shoal.auth.serverconf import operator_block
from shoal.auth.store import DEFAULT_ACCOUNT, SYSTEM_ACCOUNT, Issued, KeyStore

__all__ = [
    "ADMIN_ENDPOINTS",
    "DEFAULT_ACCOUNT",
    "LOCAL_ADMIN",
    "ROLES",
    "SERVICES",
    "SYSTEM_ACCOUNT",
    "SYSTEM_USER",
    "InstanceScope",
    "Issued",
    "KeyPair",
    "KeyStore",
    "Permissions",
    "Role",
    "bootstrap",
    "creds_file",
    "decode_claims",
    "instance_permissions",
    "local_creds",
    "new_key",
    "operator_block",
    "parse_creds",
    "role_permissions",
    "service_permissions",
]
