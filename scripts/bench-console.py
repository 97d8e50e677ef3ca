"""Benchmark of the admin console: server time and page weight of each page with
VOLUMES volumes of SNAPSHOTS snapshots each (20 x 1,000 by default), against a real
daemon (started by scripts/bench-console.sh). Snapshots are made through the API,
so each has its job record too, as on an appliance that has run for years.

argv: API_URL VOLUMES SNAPSHOTS ROUNDS TOKEN (pages are measured logged in, with
their action forms)
"""
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

api, volumes, snapshots, rounds, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cookie = ""


def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json", "cookie": cookie})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status, r.headers, r.read()


have = {v["name"]: v["snapshots"] for v in json.loads(call("GET", "/volumes")[2])}
t0 = time.time()


def fill(v):
    for i in range(have.get(v, 0), snapshots):
        call("POST", f"/volumes/{v}/snapshots", {"name": f"s{i:05d}", "label": "nightly" if i % 7 else "weekly"})


with ThreadPoolExecutor(2) as ex:
    list(ex.map(fill, [f"vol{n:02d}" for n in range(volumes)]))
made = sum(max(0, snapshots - have.get(f"vol{n:02d}", 0)) for n in range(volumes))
if made:
    print(f"made {made} snapshots in {time.time() - t0:.0f} s")
# A measurement of what each volume takes (the dashboard shows it).
call("POST", "/gc", {"dry_run": True})


def measure(path):
    server, total, size = [], [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        st, h, body = call("GET", path)
        total.append((time.perf_counter() - t) * 1000)
        timing = h["server-timing"]
        server.append(float(timing.split("dur=")[1]) if timing else float("nan"))
        size = len(body)
    return statistics.median(server), statistics.median(total), size


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a):
        return None


login = urllib.request.Request(api + "/ui/login", method="POST", data=f"token={token}".encode(),
                               headers={"content-type": "application/x-www-form-urlencoded"})
try:
    urllib.request.build_opener(NoRedirect).open(login)
except urllib.error.HTTPError as e:
    cookie = e.headers["set-cookie"].split(";")[0]
assert cookie.startswith("kura_session="), "login failed"
css = len(call("GET", "/ui/static/kura.css")[2])
js = len(call("GET", "/ui/static/kura.js")[2])
print(f"{volumes} volumes x {snapshots} snapshots; css {css} B, js {js} B; {rounds} rounds, medians")
print(f"{'page':<44} {'server ms':>10} {'total ms':>10} {'html kB':>8} {'weight kB':>10}")
for path in ["/status", "/ui/", "/ui/volumes/vol00", "/ui/volumes/vol00?page=9",
             f"/ui/volumes/vol00/snapshots/s{snapshots - 1:05d}",
             f"/ui/volumes/vol00/snapshots/s{snapshots - 1:05d}?diff=s{snapshots - 2:05d}",
             "/ui/jobs"]:
    s, t, size = measure(path)
    weight = size if path == "/status" else size + css + js
    print(f"{path:<44} {s:>10.1f} {t:>10.1f} {size / 1000:>8.1f} {weight / 1000:>10.1f}")
