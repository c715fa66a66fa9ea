"""The nats-server configuration block that turns on decentralized JWT auth.

``resolver: full`` keeps every account JWT in a directory of the server's own: updates
pushed at runtime on ``$SYS.REQ.CLAIMS.UPDATE`` (signed by the operator) are stored there and
applied at once (a revoked user is disconnected), and survive restarts. The accounts this
store knows are preloaded, so a fresh server trusts them before any push.
"""

from __future__ import annotations

import json
from pathlib import Path

from shoal.auth.store import SYSTEM_ACCOUNT, KeyStore

__all__ = ["operator_block"]


def operator_block(store: KeyStore, resolver_dir: Path) -> str:
    """Config lines: the operator, its system account, the full resolver and preloads.

    ``resolver_dir`` is a path as the server sees it (the caller creates it if local).
    """
    preload = "\n".join(
        f"  {store.account_public(name)}: {json.dumps(store.account_jwt(name))}"
        for name in store.account_names()
    )
    return (
        # An instance's CONNECT carries its user JWT, whose permissions list can outgrow the
        # default 4 KiB control line.
        "max_control_line: 32768\n"
        f"operator: {json.dumps(store.operator_jwt)}\n"
        f"system_account: {store.account_public(SYSTEM_ACCOUNT)}\n"
        "resolver: {\n"
        "  type: full\n"
        f"  dir: {json.dumps(str(resolver_dir))}\n"
        "  allow_delete: false\n"
        '  interval: "2m"\n'
        '  timeout: "1.9s"\n'
        "}\n"
        f"resolver_preload: {{\n{preload}\n}}\n"
    )
