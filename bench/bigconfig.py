"""A large valid lbd config on loopback: N pools and M services (for reload and check timing).

Every pool is a /29 in 127.16.0.0/12 (a loopback pool: nothing is bound or announced); every
other service names its pool, the rest are assigned automatically. Endpoints point at one
backend port on 127.0.0.1. Used by bench/reload_latency.py and the tests that time `lbd check`.
"""

from __future__ import annotations

import ipaddress

BASE = ipaddress.IPv4Address("127.16.0.0")
POOL_SIZE = 8


def big_config(pools: int, services: int, backend_port: int, *, first_port: int = 30000,
               extra: str = "") -> str:
    """Native YAML text: `pools` pools, `services` services (one TCP port each), plus `extra`
    service entries (already indented as items of `services:`)."""
    lines = ["pools:"]
    for i in range(pools):
        first = BASE + i * POOL_SIZE
        lines.append(f"  - {{name: p{i}, addresses: [{first}/29]}}")
    lines.append("services:")
    for i in range(services):
        annotation = f", annotations: {{metallb.io/address-pool: p{i % pools}}}" if i % 2 else ""
        lines.append(
            f"  - {{name: s{i}{annotation}, ports: [{{name: tcp, port: {first_port + i % 20000}}}], "
            f"endpoints: ['127.0.0.1:{backend_port}', '127.0.0.2:{backend_port}']}}"
        )
    return "\n".join(lines) + "\n" + extra
