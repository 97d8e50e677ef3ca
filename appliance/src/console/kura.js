// kura console: refreshes the parts of a page marked data-refresh (running jobs) every
// two seconds while the page is visible. Everything else works without script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const url = el.getAttribute("data-refresh");
    const tick = async () => {
      if (document.visibilityState !== "visible") return;
      try {
        const r = await fetch(url, { credentials: "same-origin" });
        if (r.ok) el.innerHTML = await r.text();
      } catch (e) {
        // The daemon restarting: keep what is shown and try again.
      }
    };
    setInterval(tick, 2000);
  }
});
