"""Build the site, open every page in headless Chromium, screenshot it and report what a reader would trip over.

    python docs/screenshots.py                       # all pages at 1280 px, PNGs under build/screenshots/
    python docs/screenshots.py --width 390 api       # a phone's width, pages whose path starts with "api"
    python docs/screenshots.py --site site           # an already built site instead of a fresh build

Each page is cut into PNGs of at most ``--slice`` pixels (``<page>-<n>.png``), small enough to read at
full size. Problems make the exit code 1: an image that did not load, math KaTeX failed on or never
rendered, a page wider than the window, a Sphinx role (``:func:``) left as text, a link to a missing page
or to an anchor that is not on its page, anything fetched from outside the site. Blocks that scroll
sideways (code, tables, display math) are listed, not failed: the reader can scroll, but should not have
to for a line that matters.

Chromium is Debian's ``chromium`` (``apt-get install chromium``), driven through the DevTools protocol
over a pipe, so nothing beyond the standard library is needed. The site is served from localhost and
Chromium's background traffic is switched off: the pages must work offline.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from base64 import b64decode
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-pipe",
]  # fmt: skip

# Runs in the page once it has loaded: waits for KaTeX's fonts, then measures. Returns
# {height, problems: [...], scrolls: [...]}.
CHECK_PAGE = r"""
(async () => {
  await document.fonts.ready;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const article = document.querySelector("article") || document.body;
  const problems = [], scrolls = [];
  const short = s => s.replace(/\s+/g, " ").trim().slice(0, 90);
  for (const img of document.images)
    if (!img.complete || img.naturalWidth === 0) problems.push(`image did not load: ${img.getAttribute("src")}`);
  for (const el of article.querySelectorAll(".katex-error")) problems.push(`KaTeX error: ${short(el.title || el.textContent)}`);
  for (const el of article.querySelectorAll(".arithmatex"))
    if (!el.querySelector(".katex")) problems.push(`math not rendered: ${short(el.textContent)}`);
  if (document.documentElement.scrollWidth > innerWidth + 1)
    problems.push(`page is ${document.documentElement.scrollWidth} px wide in a ${innerWidth} px window`);
  for (const entry of performance.getEntriesByType("resource"))
    if (new URL(entry.name).origin !== location.origin) problems.push(`fetched from outside the site: ${entry.name}`);
  for (const role of new Set(article.innerText.match(/:(func|meth|class|mod|attr|data|obj|exc|ref):`?[\w.~]+/g) || []))
    problems.push(`Sphinx role left as text: ${role}`);
  for (const a of article.querySelectorAll("a[href]")) {
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) continue;
    const page = url.href.split("#")[0], hash = decodeURIComponent(url.hash.slice(1));
    const html = page === location.href.split("#")[0] ? document : await fetch(page).then(
      r => r.ok ? r.text().then(t => new DOMParser().parseFromString(t, "text/html")) : null);
    if (!html) problems.push(`link to a missing page: ${a.getAttribute("href")}`);
    else if (hash && !html.getElementById(hash)) problems.push(`link to a missing anchor: ${a.getAttribute("href")}`);
  }
  // Material wraps each table in a scrolling div (.md-typeset__scrollwrap); extra.css lets the table scroll too.
  for (const el of article.querySelectorAll("pre > code, .katex-display, .md-typeset__scrollwrap, table"))
    if (el.scrollWidth > el.clientWidth + 1) {
      const kind = el.matches(".md-typeset__scrollwrap") ? "table" : el.tagName.toLowerCase();
      scrolls.push(`${kind} ${el.scrollWidth - el.clientWidth} px too wide: ${short(el.innerText)}`);
    }
  return {height: document.documentElement.scrollHeight, problems: [...new Set(problems)], scrolls};
})()
"""


def above_4(fd: int) -> int:
    """``fd`` moved to a number >= 10."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """A headless Chromium driven over --remote-debugging-pipe: JSON messages ended by NUL on fds 3 and 4."""

    def __init__(self, executable: str, profile: str):
        # Chromium reads commands from fd 3 and writes replies to fd 4. bash puts the pipe ends there;
        # they are first moved to fds >= 10 so that neither redirection overwrites the other's source.
        to_child, self._to_chromium = os.pipe()
        self._from_chromium, from_child = os.pipe()
        to_child, from_child = (above_4(fd) for fd in (to_child, from_child))
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-', "bash",
             executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._next_id, self._buffer, self._events = 0, b"", []

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chromium, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def wait_for(self, event: str, session: str) -> None:
        while True:
            for i, message in enumerate(self._events):
                if message.get("method") == event and message.get("sessionId") == session:
                    del self._events[: i + 1]
                    return
            self._events.append(self._read())

    def close(self) -> None:
        """Ask Chromium to quit (it then stops its helper processes and finishes writing the profile)."""
        try:
            self.send("Browser.close")
            self.process.wait(timeout=30)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._to_chromium)
        os.close(self._from_chromium)


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    """Serve ``directory`` on a free localhost port from a background thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pages_of(site: Path, prefixes: list[str]) -> list[str]:
    """The site's pages as URL paths ("", "concepts/", ...), home first."""
    paths = sorted(p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))
    pages = ["" if p == "." else p + "/" for p in paths]
    return [p for p in pages if not prefixes or any((p or "index").startswith(prefix) for prefix in prefixes)]


def shoot(browser: Chromium, session: str, url: str, stem: Path, width: int, slice_px: int) -> dict:
    """Load ``url``, check it, and write its screenshots ``stem-1.png``, ``stem-2.png``, ..."""
    browser.send("Page.navigate", {"url": url}, session)
    browser.wait_for("Page.loadEventFired", session)
    result = browser.send(
        "Runtime.evaluate", {"expression": CHECK_PAGE, "awaitPromise": True, "returnByValue": True}, session
    )
    if "exceptionDetails" in result:
        raise RuntimeError(f"{url}: {result['exceptionDetails']}")
    report = result["result"]["value"]
    stem.parent.mkdir(parents=True, exist_ok=True)
    for n, top in enumerate(range(0, report["height"], slice_px), start=1):
        clip = {"x": 0, "y": top, "width": width, "height": min(slice_px, report["height"] - top), "scale": 1}
        shot = browser.send(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, session
        )
        stem.with_name(f"{stem.name}-{n}.png").write_bytes(b64decode(shot["data"]))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("pages", nargs="*", help="only pages whose URL path starts with one of these (home: index)")
    parser.add_argument("--site", type=Path, help="a built site to use instead of running mkdocs build --strict")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    parser.add_argument("--height", type=int, default=900, help="window height (what fits without scrolling)")
    parser.add_argument("--slice", type=int, default=2000, help="the most pixels of page height in one PNG")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)]
            subprocess.run(build, cwd=ROOT, check=True)
        browser = Chromium(args.chromium, str(Path(tmp) / "profile"))
        server = serve(site)
        try:
            session = browser.send("Target.attachToTarget", {
                "targetId": browser.send("Target.createTarget", {"url": "about:blank"})["targetId"], "flatten": True,
            })["sessionId"]  # fmt: skip
            browser.send("Page.enable", session=session)
            metrics = {"width": args.width, "height": args.height, "deviceScaleFactor": 1, "mobile": args.width < 600}
            browser.send("Emulation.setDeviceMetricsOverride", metrics, session)
            failed = 0
            for page in pages_of(site, args.pages):
                stem = args.out / (page.rstrip("/").replace("/", "--") or "index")
                report = shoot(
                    browser, session, f"http://127.0.0.1:{server.server_port}/{page}", stem, args.width, args.slice
                )
                failed += bool(report["problems"])
                print(f"/{page}: {report['height']} px, {-(-report['height'] // args.slice)} PNG")
                for line in report["problems"]:
                    print(f"  PROBLEM {line}")
                for line in report["scrolls"]:
                    print(f"  scrolls {line}")
        finally:
            server.shutdown()
            browser.close()
    print(f"screenshots in {args.out}; {failed} page(s) with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
