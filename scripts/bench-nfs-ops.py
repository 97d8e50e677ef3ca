"""GETATTR rate and server memory under a deep write queue, against a running kura.

Usage: python bench-nfs-ops.py PORT KURA_PID [SECONDS]
Needs nfs-rs (scripts/test.sh installs it into target/test-venv).
1. GETATTR: one connection, 256 stat() calls kept in flight for SECONDS; prints ops/s.
2. Deep queue: 512 concurrent 1 MiB write_at() calls on one connection; prints the
   server's peak RSS (VmHWM) before and after.
"""
import asyncio, sys, time
import nfs_rs

PORT, PID = int(sys.argv[1]), int(sys.argv[2])
SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
URL = f"nfs://127.0.0.1/backup?version=3&nfsport={PORT}&mountport={PORT}"


def hwm():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield line.split(":")[0], int(line.split()[1]) // 1024


async def main():
    c = await nfs_rs.AsyncClient.connect(URL, noresvport=True, operation_timeout=120)
    f = await c.open("/ops-target", "wb")
    await f.write(b"x")
    await f.close()
    n = 0
    deadline = time.monotonic() + SECS

    async def worker():
        nonlocal n
        while time.monotonic() < deadline:
            await c.stat("/ops-target")
            n += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(256)))
    dt = time.monotonic() - t0
    print(f"stat: {n} calls in {dt:.1f} s = {n / dt:.0f}/s (256 in flight, one connection)")

    before = dict(hwm())
    f = await c.open("/deep-queue.bin", "wb")
    block = bytes(range(256)) * 4096
    t0 = time.monotonic()
    await asyncio.gather(*(f.write_at(block, i << 20) for i in range(512)))
    dt = time.monotonic() - t0
    await f.close()
    after = dict(hwm())
    print(f"512 x 1 MiB concurrent writes: {512 / dt:.0f} MiB/s; server RSS before {before}, after {after}")


asyncio.run(main())
