"""Drives the kura console in headless Chromium (Debian's chromium and chromedriver)
through what an operator does, asserting on what each page shows. Run by
tests/console.rs against a real daemon; exits non-zero with the reason on failure.

argv: BASE_URL TOKEN SCREENSHOT_DIR RESTORE_DIR NFS_URL_OF_NEW_TXT
"""
import os
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

base, token, shots, restore_dir, new_txt_url = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
          "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
          "--disable-dev-shm-usage"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
drv.set_page_load_timeout(60)
step = "start"


def fail(msg):
    drv.save_screenshot(os.path.join(shots, "failure.png"))
    print(f"FAIL at {step}: {msg}\nURL {drv.current_url}\n{drv.page_source[:3000]}", file=sys.stderr)
    drv.quit()
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def console_clean():
    """No console error or warning on the page (a CSP violation shows up here too)."""
    bad = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    # A download's favicon lookup is not ours: we serve none and say so with a 404.
    bad = [e for e in bad if "favicon.ico" not in e["message"]]
    check(not bad, f"console errors: {bad}")


def load(path, title_has):
    global step
    step = f"GET {path}"
    drv.get(base + path)
    check(title_has in drv.title, f"title {drv.title!r} lacks {title_has!r}")
    console_clean()


def flash():
    els = drv.find_elements(By.ID, "flash")
    return els[0].text if els else ""


def replaced(el):
    """A wait condition: `el` no longer belongs to the document (the next page took its
    place). Chromium says so with a stale element, or, while the page is being
    swapped, with an inspector error about the node."""

    def gone(_):
        try:
            el.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e) or "No node with given id" in str(e):
                return True
            raise

    return gone


def settled(act):
    """Does `act` (a click or an Enter that submits) and waits for the next page."""
    old = drv.find_element(By.TAG_NAME, "html")
    act()
    WebDriverWait(drv, 120).until(replaced(old))
    WebDriverWait(drv, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def click(css):
    settled(lambda: drv.find_element(By.CSS_SELECTOR, css).click())


def type_enter(id_, text):
    settled(lambda: drv.find_element(By.ID, id_).send_keys(text + Keys.ENTER))


def shot(name):
    """The whole page, not only the window."""
    size = drv.get_window_size()
    h = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(size["width"], min(h + 140, 4000))
    drv.save_screenshot(os.path.join(shots, name + ".png"))
    drv.set_window_size(size["width"], size["height"])


def no_overflow(what):
    """Nothing wider than the window (tables scroll inside their own box)."""
    w = drv.execute_script("return document.documentElement.scrollWidth")
    cw = drv.execute_script("return document.documentElement.clientWidth")
    check(w <= cw + 1, f"{what}: page {w}px wide in a {cw}px window")


# Read-only without a login (loopback): the pages, but no action.
load("/ui/", "Dashboard")
check("Log in to act" in drv.page_source, "no login link")
check(not drv.find_elements(By.CSS_SELECTOR, "form[action$='/snapshot']"), "actions shown without login")
check(drv.find_element(By.CSS_SELECTOR, "#volumes a[href='/ui/volumes/backup']"), "volume listed")

# Keyboard: the first Tab lands on the skip link, Enter follows it.
step = "keyboard"
drv.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
active = drv.switch_to.active_element
check(active.text == "Skip to content", f"first Tab on {active.text!r}")

# Log in: a wrong token is refused, the right one makes a session.
load("/ui/login", "Log in")
shot("login")
type_enter("token", "not-the-token")
step = "wrong token"
check("not the API token" in drv.find_element(By.ID, "error").text, "wrong token accepted")
# A refused login is a 401 in the console: expected, not a page error.
drv.get_log("browser")
type_enter("token", token)
step = "login"
check(flash() == "Logged in.", f"flash {flash()!r}")
console_clean()

# Snapshot now, from the dashboard.
step = "snapshot now"
click("form[action='/ui/volumes/backup/snapshot'] button")
check(flash().startswith("Snapshot backup@"), f"flash {flash()!r}")
first = flash().split("@")[1].split(" ")[0]
console_clean()
load("/ui/", "Dashboard")
shot("dashboard")
no_overflow("dashboard")

# The volume page: the snapshot is listed, the schedule is in words.
load("/ui/volumes/backup", "Volume backup")
check(first in drv.find_element(By.ID, "snapshots").text, "snapshot not listed")
plan = drv.find_element(By.ID, "plan").text
check("every day at 01:00 Asia/Tokyo, after 10 min quiet (at most 2h)" in plan, f"schedule words: {plan!r}")
check("keep the last 5, 8 daily, 4 weekly" in plan, f"retention words: {plan!r}")
check(drv.find_elements(By.CSS_SELECTOR, "figure.chart svg"), "no chart")
shot("volume")

# The snapshot page: the tree, a file to download.
load(f"/ui/volumes/backup/snapshots/{first}", f"backup@{first}")
files = drv.find_element(By.ID, "files").text
check("hello.txt" in files and "docs/" in files, f"files: {files!r}")
link = drv.find_element(By.LINK_TEXT, "hello.txt").get_attribute("href")
check("/file?path=hello.txt" in link, link)
click("#files a[href*='path=docs']")
step = "browse docs"
check("readme.md" in drv.find_element(By.ID, "files").text, "docs/ not browsable")
console_clean()

# Hold; delete is then refused with the API's reason; release; delete works later.
load(f"/ui/volumes/backup/snapshots/{first}", f"backup@{first}")
click(f"form[action$='/{first}/hold'] button")
step = "hold"
check("is held" in flash(), f"flash {flash()!r}")
check("held" in drv.find_element(By.ID, "marks").text, "not marked held")
click("a.button.danger")
step = "confirm delete"
check("Delete backup@" in drv.title, drv.title)
lost = drv.find_element(By.ID, "lost").text
check(first[:10] in lost or "point in time" in lost, f"what is lost: {lost!r}")
check("held" in lost, "the confirmation does not say it is held")
shot("delete")
console_clean()
click("form[action$='/delete'] button")
step = "delete while held"
check(flash().startswith("Refused (409") and "held" in flash(), f"flash {flash()!r}")
click(f"form[action$='/{first}/release'] button")
step = "release"
check("released" in flash(), f"flash {flash()!r}")

# Clone to a new volume; restore the snapshot into a directory of the appliance.
step = "clone"
type_enter("new_volume", "fromui")
check("Cloned" in flash() and "fromui" in flash(), f"flash {flash()!r}")
step = "restore"
type_enter("restore_to", restore_dir)
check(flash().startswith("Restored") and "3 files" in flash(), f"flash {flash()!r}")

# A client writes a new file; a second snapshot with a label, compared with the first.
step = "nfs write"
local = os.path.join(shots, "new.txt")
with open(local, "w") as f:
    f.write("written between the snapshots\n")
w = subprocess.run(["nfs-cp", local, new_txt_url], capture_output=True, text=True)
check(w.returncode == 0, f"nfs-cp: {w.stdout} {w.stderr}")
load("/ui/volumes/backup", "Volume backup")
type_enter("label", "after-ui")
step = "labelled snapshot"
check(flash().startswith("Snapshot backup@"), f"flash {flash()!r}")
second = flash().split("@")[1].split(" ")[0]
check("after-ui" in drv.find_element(By.ID, "snapshots").text, "label not shown")
load(f"/ui/volumes/backup/snapshots/{second}?diff={first}", f"backup@{second}")
diff = drv.find_element(By.ID, "diff-h").find_element(By.XPATH, "..").get_attribute("textContent")
check("added" in diff and "new.txt" in diff, f"diff: {diff!r}")
shot("snapshot")

# Delete the first snapshot, now released.
load(f"/ui/volumes/backup/snapshots/{first}/delete", "Delete")
click("form[action$='/delete'] button")
step = "delete"
check(flash().startswith(f"Deleted backup@{first}"), f"flash {flash()!r}")
check(first not in drv.find_element(By.ID, "snapshots").text, "deleted snapshot still listed")

# Prune shows its plan first; nothing is deleted until confirmed.
click("form[action='/ui/volumes/backup/prune'] button")
step = "prune plan"
check("Prune plan" in drv.title, drv.title)
check("Nothing has been deleted yet" in drv.find_element(By.ID, "plan-summary").text, "plan summary")
console_clean()

# Jobs: running jobs (refreshed by script), verify, GC with its plan.
load("/ui/jobs", "Jobs")
check(drv.find_element(By.ID, "running"), "no running section")
click("form[action='/ui/verify'] button")
step = "verify"
check(flash().startswith("Verify clean"), f"flash {flash()!r}")
click("form[action='/ui/gc'] button")
step = "gc plan"
check("GC plan" in drv.title and drv.find_element(By.ID, "gc-plan"), drv.title)
click("form[action='/ui/gc'] button")
step = "gc"
check(flash().startswith("GC done"), f"flash {flash()!r}")
time.sleep(2.5)  # one refresh of the running jobs by the page's script
console_clean()
shot("jobs")

# A phone, and a laptop at 200% zoom (half the CSS pixels): nothing runs off the side.
for w, h, what in [(390, 844, "phone"), (640, 500, "200% zoom")]:
    drv.set_window_size(w, h)
    for path in ["/ui/", "/ui/volumes/backup", f"/ui/volumes/backup/snapshots/{second}", "/ui/jobs"]:
        load(path, "kura")
        no_overflow(f"{what} {path}")
    if what == "phone":
        load("/ui/", "kura")
        shot("dashboard-phone")

# Log out: actions are gone again.
drv.set_window_size(1280, 1000)
load("/ui/", "Dashboard")
click("form[action='/ui/logout'] button")
step = "logout"
check("Log in to act" in drv.page_source, "still logged in")
drv.quit()
print(f"console ok: first={first} second={second}")
