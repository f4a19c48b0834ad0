"""Cluster mode (`lbd run --etcd-endpoints`): VIP ownership and fencing across nodes.

    fencing.py   which VIPs this node may answer for, and until when (pure)
    etcd.py      the store: etcd v3 over its JSON gateway (aiohttp on the event loop)
    member.py    one node's lease, watch and claims on the loop, driving fencing.py
"""
