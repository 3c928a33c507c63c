"""The shipped workflows in the real ComfyUI frontend (Debian's Chromium driven by Playwright)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from comfy_host import PromptRejected

from ezigen_prompts import WORKFLOWS

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FLUX_FILES = {"UNETLoader", "DualCLIPLoader", "VAELoader"}  # FLUX weights are not part of the test host

GRAPH_STATE = """() => app.graph._nodes.map(n => ({
    id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
    widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
                                          options: w.options ? {values: Array.isArray(w.options.values) ? w.options.values : null,
                                                                min: w.options.min, max: w.options.max} : null}))
}))"""


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    settings = server.base_dir / "user" / "default" / "comfy.settings.json"
    # draw titles and widgets even when zoomed out, so a whole workflow fits a readable screenshot
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "LiteGraph.Canvas.MinFontSizeForLOD": 1}))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 2400, "height": 1200})
        pg = context.new_page()
        pg.page_errors = []
        pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
        pg.goto(server.url, wait_until="domcontentloaded")
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph "
                             "&& Object.keys(LiteGraph.registered_node_types).length > 300", timeout=60000)
        yield pg
        browser.close()


FIT_VIEW = """() => {
    const nodes = app.graph._nodes, ds = app.canvas.ds, el = app.canvas.canvas;
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    ds.scale = Math.min(el.clientWidth / (x1 - x0 + 120), el.clientHeight / (y1 - y0 + 160), 1.0);
    ds.offset = [-x0 + 60 / ds.scale, -y0 + 90 / ds.scale];
    app.canvas.setDirty(true, true);
}"""


def load(page, name: str | None = None, workflow: dict | None = None) -> list[dict]:
    workflow = workflow or json.loads((WORKFLOWS / name).read_text())
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.evaluate(FIT_VIEW)
    page.wait_for_timeout(500)
    return page.evaluate(GRAPH_STATE)


def widget_problems(nodes: list[dict]) -> list[str]:
    problems = []
    for node in nodes:
        if not node["registered"]:
            problems.append(f"node {node['id']}: missing node type {node['type']}")
        for w in node["widgets"]:
            opts = w["options"] or {}
            if w["value"] is None:
                problems.append(f"node {node['id']} {node['type']}.{w['name']}: no value")
            elif opts.get("values") is not None and w["type"] == "combo" and node["type"] not in FLUX_FILES \
                    and w["value"] not in opts["values"]:
                problems.append(f"node {node['id']} {node['type']}.{w['name']}: {w['value']!r} not offered")
            elif isinstance(w["value"], (int, float)) and not isinstance(w["value"], bool):
                lo, hi = opts.get("min"), opts.get("max")
                if (lo is not None and w["value"] < lo) or (hi is not None and w["value"] > hi):
                    problems.append(f"node {node['id']} {node['type']}.{w['name']}: {w['value']} outside [{lo}, {hi}]")
    return problems


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_workflow_loads_in_the_editor_and_its_prompt_validates(page, server, name):
    nodes = load(page, name)
    page.screenshot(path=str(SCREENSHOTS / name.replace(".json", ".png")))
    assert widget_problems(nodes) == [] and page.page_errors == []
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    for node in prompt.values():  # keep the server's run short: same graph, tiny sizes
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64)
        if node["class_type"] == "EZIGenEncodeSubject":
            inputs["resolution"] = 64
        if node["class_type"] in ("KSampler", "EZIGenSampler", "EZIGenEdit"):
            inputs.update(steps=2, seed=int(time.time() * 1000) % 2**31)
        if node["class_type"] in ("EZIGenSampler", "EZIGenEdit"):
            inputs["loops"] = 1
        if node["class_type"] == "EZIGenEdit":
            inputs["short_side"] = 64
    if name == "ezigen_flux_to_edit.json":
        with pytest.raises(PromptRejected) as info:
            server.queue(prompt)
        failing = {prompt[nid]["class_type"] for nid in info.value.node_errors}
        assert failing <= {"KSampler"} | FLUX_FILES, info.value.node_errors  # only the absent FLUX weights
        return
    server.run(prompt)


def test_the_checks_see_missing_nodes_and_bad_values(page):
    workflow = json.loads((WORKFLOWS / "ezigen_single_pass.json").read_text())
    broken = next(n for n in workflow["nodes"] if n["type"] == "EZIGenPatchUNetAttention")
    broken["widgets_values"][0] = 7.5  # strength above its maximum of 2
    workflow["nodes"][0]["type"] = "NoSuchNodeType"
    problems = widget_problems(load(page, workflow=workflow))
    assert any("missing node type NoSuchNodeType" in p for p in problems)
    assert any("strength: 7.5 outside" in p for p in problems)
    page.keyboard.press("Escape")  # the frontend's own "missing nodes" dialog agrees; close it


def test_single_pass_queued_from_the_page_shows_its_image(page, server):
    load(page, "ezigen_single_pass.json")
    seed = int(time.time()) % 100000
    page.evaluate("""(seed) => {
        for (const n of app.graph._nodes) {
            const set = (name, v) => { const w = (n.widgets || []).find(w => w.name === name); if (w) w.value = v; };
            if (n.type === 'EmptyLatentImage') { set('width', 64); set('height', 64); }
            if (n.type === 'EZIGenEncodeSubject') set('resolution', 64);
            if (n.type === 'KSampler') { set('steps', 3); set('seed', seed); }
        }
    }""", seed)
    before = set(server.history().keys())
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(server.history().keys()) - before
        if new:
            break
        time.sleep(0.5)
    (prompt_id,) = new
    images = server.output_images(server.wait(prompt_id))
    assert images and images[0].name.startswith("EZIGen_single_pass")
    page.wait_for_function("() => app.graph._nodes.some(n => n.type === 'SaveImage' && n.imgs && n.imgs.length)",
                           timeout=60000)
    page.screenshot(path=str(SCREENSHOTS / "single_pass_result.png"))
    assert page.page_errors == []
