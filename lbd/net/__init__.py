"""Layer 2: VIP addresses on interfaces, gratuitous ARP/NA, and watching who asks for a VIP.

`arp` and `ndp` are pure frame codecs (no sockets, no clock); `addresses` is the thin pyroute2
shell that adds, lists and removes lbd's marked addresses; `announcer` is the asyncio part.
The package itself imports nothing heavy, so importing a codec stays cheap.
"""
