"""The bench's UDP backend: a uvloop echo server on HOST:PORT (from ../shared/bench)."""
import asyncio, sys, uvloop
class E(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a): self.t.sendto(d, a)
async def main():
    h, p = sys.argv[1].rsplit(":", 1)
    await asyncio.get_running_loop().create_datagram_endpoint(E, local_addr=(h, int(p)))
    await asyncio.Event().wait()
uvloop.run(main())
