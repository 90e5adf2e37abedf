#!/usr/bin/env python3
# TCP relay adding a fixed one-way delay per direction (pipelined, order-preserving).
import asyncio, sys, time
LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def pump(r, w):
    q = asyncio.Queue()
    async def writer():
        while True:
            t, data = await q.get()
            if data is None:
                w.close(); return
            d = t - time.monotonic()
            if d > 0: await asyncio.sleep(d)
            w.write(data); await w.drain()
    wt = asyncio.create_task(writer())
    while True:
        data = await r.read(262144)
        q.put_nowait((time.monotonic() + DELAY, data or None))
        if not data: break
    await wt
async def handle(cr, cw):
    ur, uw = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(pump(cr, uw), pump(ur, cw), return_exceptions=True)
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with s: await s.serve_forever()
asyncio.run(main())
