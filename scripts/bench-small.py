"""Small-file creation over NFS, side by side: each client creates files one after
another (open, write 4 KiB, close; nfs-rs makes the file durable before close returns),
with one client and with four clients at once; median of RUNS per server.

Usage: python bench-small.py FILES RUNS NAME=URL [NAME=URL ...]
  URL: nfs://127.0.0.1/EXPORT?version=3&nfsport=P&mountport=M (the export root).
Needs nfs-rs (scripts/test.sh installs it into target/test-venv). Each run writes into
a new directory small-<run>-<client> under the export root.
"""
import asyncio, os, statistics, sys, time
import nfs_rs

FILES, RUNS = int(sys.argv[1]), int(sys.argv[2])
SERVERS = [a.split("=", 1) for a in sys.argv[3:]]
BODY = os.urandom(4096)


async def client(url, d, n):
    c = await nfs_rs.AsyncClient.connect(url, noresvport=True, operation_timeout=600)
    await c.mkdir(d)
    for k in range(n):
        f = await c.open(f"{d}/f{k:06}", "wb")
        await f.write(BODY)
        await f.close()
    return c


async def run(url, i, clients):
    n = FILES // clients
    t0 = time.monotonic()
    await asyncio.gather(*(client(url, f"/small-{i}-{clients}-{k}", n) for k in range(clients)))
    return n * clients / (time.monotonic() - t0)


async def main():
    res = {(name, c): [] for name, _ in SERVERS for c in (1, 4)}
    for i in range(RUNS):
        order = SERVERS[i % len(SERVERS):] + SERVERS[: i % len(SERVERS)]
        for clients in (1, 4):
            for name, url in order:
                os.sync()
                time.sleep(1)
                res[(name, clients)].append(await run(url, i, clients))
    print(f"small files: {FILES} x 4 KiB per run (open, write, close), {RUNS} runs: files/s (median; all runs)")
    for clients in (1, 4):
        for name, _ in SERVERS:
            v = res[(name, clients)]
            print(f"{name:10} {clients} client{'s' if clients > 1 else ' '} {statistics.median(v):7.0f}  ({' '.join(f'{x:.0f}' for x in v)})")


asyncio.run(main())
