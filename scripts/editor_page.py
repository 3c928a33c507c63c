"""The ComfyUI editor in a browser page, opened once it is ready for a graph (tests and the pictures script)."""
from __future__ import annotations

# window.app appears as soon as the nodes are registered, but the editor then restores or loads its start-up
# workflow under a spinner (seen on 0.28.2's frontend: still on when window.app was there). A graph loaded before the
# spinner goes off overlaps that load, and an overlapping load abandons the missing-models check of the one before.
EDITOR_READY = ("() => window.app && window.app.graph && window.LiteGraph "
                "&& Object.keys(LiteGraph.registered_node_types).length > 300 "
                "&& app.extensionManager && app.extensionManager.spinner === false")


def open_editor(browser, url: str, width: int, height: int, timeout_s: float = 60):
    """A page of its own (a new browser context) on the editor at url; page.page_errors collects the page's
    uncaught errors and page.console_lines its console, for asserts and failure reports."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.page_errors = []
    page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
    page.console_lines = []
    page.on("console", lambda msg: page.console_lines.append(f"{msg.type}: {msg.text}"))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function(EDITOR_READY, timeout=timeout_s * 1000)
    return page
