"""Headless Chromium for the browser tests and scripts/screenshot_report.py (never shipped
in the package: users do not need a browser driver), with no Python dependency.

Drives the system's Chromium (Debian's `chromium` + `chromium-driver`) through
chromedriver's W3C WebDriver HTTP API with urllib: nothing is downloaded, and the browser
gets a fresh profile and flags that keep it off the network.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bpfcompat.errors import BpfcompatError

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class BrowserError(BpfcompatError):
    """Chromium or chromedriver is missing, or the browser session failed."""


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; BPFCOMPAT_CHROMIUM / BPFCOMPAT_CHROMEDRIVER override."""
    chromium = os.environ.get("BPFCOMPAT_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("BPFCOMPAT_CHROMEDRIVER") or shutil.which("chromedriver")
    if not driver and Path("/usr/lib/chromium/chromedriver").is_file():
        driver = "/usr/lib/chromium/chromedriver"
    if not chromium or not driver:
        missing = " and ".join(
            n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p
        )
        raise BrowserError(
            f"{missing} not found (Debian: apt-get install chromium chromium-driver)"
        )
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Chromium:
    """One headless browser session; use as a context manager."""

    def __init__(self, width: int = 1600, height: int = 1000) -> None:
        chromium, driver = find_browser()
        self.profile = tempfile.mkdtemp(prefix="bpfcompat-chromium-")
        self.log_path = Path(self.profile) / "chromedriver.log"
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.session: str | None = None
        try:
            with open(self.log_path, "wb") as log:
                self.driver = subprocess.Popen(
                    [driver, f"--port={port}"], stdout=log, stderr=subprocess.STDOUT
                )
        except OSError as exc:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise BrowserError(f"{driver}: cannot start: {exc}") from None
        try:
            self._wait_ready()
            args = [
                *FLAGS,
                f"--user-data-dir={self.profile}/profile",
                f"--window-size={width},{height}",
            ]
            caps = {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {"binary": chromium, "args": args},
                    }
                }
            }
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise BrowserError(
                    f"chromedriver exited: {self.log_path.read_text(errors='replace')[-500:]}"
                )
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, BrowserError):
                pass
            time.sleep(0.05)
        raise BrowserError("chromedriver did not become ready in 20 s")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            try:
                value = json.loads(exc.read())["value"]
                message = f"{value.get('error')}: {str(value.get('message')).splitlines()[0]}"
            except (ValueError, KeyError, AttributeError):
                message = str(exc)
            raise BrowserError(f"webdriver {method} {path}: {message}") from None

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, target: str | Path) -> None:
        url = target.resolve().as_uri() if isinstance(target, Path) else target
        self._call("POST", self._s("/url"), {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        """Run `source` as a function body in the page and return its value."""
        return self._call("POST", self._s("/execute/sync"), {"script": source, "args": list(args)})

    def find(self, css: str) -> str:
        found = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        return str(found[W3C_ELEMENT])

    def click(self, css: str) -> None:
        """A real click (scrolled into view, hit-tested) on the first match of `css`."""
        self._call("POST", self._s(f"/element/{self.find(css)}/click"), {})

    def text(self, css: str) -> str:
        """The rendered (visible) text of the first match of `css`."""
        return str(self._call("GET", self._s(f"/element/{self.find(css)}/text")))

    def displayed(self, css: str) -> bool:
        return bool(self._call("GET", self._s(f"/element/{self.find(css)}/displayed")))

    def screenshot(self, path: Path) -> Path:
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(OSError, BrowserError):
                self._call("DELETE", self._s(""))
            self.session = None
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
