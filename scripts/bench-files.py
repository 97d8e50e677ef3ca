"""Create FILES empty files in one directory over NFS, then list the directory, against
running kura daemons side by side; median of RUNS for each step.

Usage: python bench-files.py FILES RUNS NAME=PORT [NAME=PORT ...]
Needs nfs-rs (scripts/test.sh installs it into target/test-venv). Each run uses a new
directory /files-RUN in volume `backup`; 64 creates are kept in flight on one
connection, as a client's parallel `cp -r` or `tar -x` would.
"""
import asyncio, statistics, sys, time
import nfs_rs

FILES, RUNS = int(sys.argv[1]), int(sys.argv[2])
SERVERS = [a.split("=") for a in sys.argv[3:]]


async def run(port, i):
    url = f"nfs://127.0.0.1/backup?version=3&nfsport={port}&mountport={port}"
    c = await nfs_rs.AsyncClient.connect(url, noresvport=True, operation_timeout=600)
    d = f"/files-{i}"
    await c.mkdir(d)
    queue = iter(range(FILES))

    async def worker():
        for k in queue:
            await c.touch(f"{d}/f{k:07}")

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(64)))
    t1 = time.monotonic()
    names = await c.listdir(d)
    t2 = time.monotonic()
    assert len(names) == FILES, (len(names), FILES)
    return t1 - t0, t2 - t1


async def main():
    res = {name: ([], []) for name, _ in SERVERS}
    for i in range(RUNS):
        # Rotate the order so that neither server always goes first.
        for name, port in SERVERS[i % len(SERVERS):] + SERVERS[: i % len(SERVERS)]:
            c, l = await run(int(port), i)
            res[name][0].append(c)
            res[name][1].append(l)
    print(f"{FILES} files in one directory, {RUNS} runs: files/s (median; all runs)")
    for name, (cs, ls) in res.items():
        fc = [FILES / x for x in cs]
        fl = [FILES / x for x in ls]
        print(
            f"{name:10} create {statistics.median(fc):8.0f}  ({' '.join(f'{x:.0f}' for x in fc)})"
            f"  list {statistics.median(fl):8.0f}  ({' '.join(f'{x:.0f}' for x in fl)})"
        )


asyncio.run(main())
