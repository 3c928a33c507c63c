"""Make the README's pictures of the shipped workflows (docs/images/) in the real ComfyUI frontend.

    .venv-0.28.2/bin/python scripts/make_workflow_pictures.py [--size 256] [--steps 4] [--only ezigen_edit ...]

For each workflows/*.json, as a user sees a finished run: a headless ComfyUI (the venv's host, e.g. 0.28.2, and the
frontend its requirements name) with this pack, the test suite's RANDOM-WEIGHT stand-ins (.cache/models, made by
scripts/make_checkpoints.py on first use: every output image is noise) and the demo inputs; Debian's Chromium
(Playwright) opens the editor, loads the workflow file under its own name (one tab named after it, as a drop of the
file gives), fits the whole graph in a window sized to it, queues it from the page (Run), waits until the run has
finished and the Result, rounds, chart and Report panes show its outputs, and saves docs/images/<workflow>.png (a
palette PNG). The page that pressed Run is closed while the server computes; a fresh one presses Run again and ComfyUI
answers from its cache, sending the outputs to the page as after any run. Without options every value is the shipped
one; --size (the image; the mask nodes that cut regions out of it are scaled with it) and --steps (every sampler) make
a CPU run short, and show in the picture's widgets.

ezigen_flux_to_edit.json: ComfyUI builds FLUX's T5-XXL from a fixed 4.8 B-parameter config whatever the file holds,
so DualCLIPLoader has no stand-in. The picture shows that node as shipped; the prompt the page queues has it replaced
by a CLIPLoader with its CLIP-L file (as tests/e2e/test_edit.py runs the workflow).

Then node_docs.png (EZIGen Edit selected, its docs panel open) and missing_models.png (ezigen_generate.json opened on
a server without the models). One server at a time. The browser tests (tests/e2e/test_browser.py) keep their own
screenshots in test-artifacts/screenshots/.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

import inprocess  # noqa: I001 - first: it makes ezigen_lib importable, which comfy_host needs
from comfy_host import ComfyServer
from demo_inputs import write_second_subject_image, write_source_image, write_subject_image
from editor_page import open_editor as open_editor_at

REPO = inprocess.REPO
WORKFLOWS = REPO / "workflows"
OUT = REPO / "docs" / "images"
PACK = "ComfyUI-EZIGen"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SETTINGS = {
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,  # titles and widgets drawn even when zoomed out
    "Comfy.Minimap.Visible": False,  # it covers the graph's bottom right corner
    "Comfy.Graph.CanvasInfo": False,  # the FPS / node count corner
    "Comfy.Workflow.Persist": False,  # no tab restored from an earlier page
}
# Free margins of the window around the graph (the side bar on the left, tabs and Run button on top, the zoom
# controls at the bottom right), in screen pixels.
LEFT, TOP, RIGHT, BOTTOM = 80, 100, 24, 56
WIDTH, MIN_WIDTH, MIN_HEIGHT, MIN_SCALE = 2400, 1600, 900, 0.75  # window: as wide as WIDTH allows at scale 1
RUN_TIMEOUT_S = 7200

STEPS = {"KSampler", "EZIGenSampler", "EZIGenEdit"}


def log(*args: object) -> None:
    print("[pictures]", *args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# page scripts
# --------------------------------------------------------------------------------------------------------------------

OPEN_AS_FILE = """async ([workflow, name]) => {  // as a drop of the file does: a tab named after it, then only that tab
    await app.loadGraphData(workflow, true, true, name);
    const store = app.extensionManager.workflow;
    for (const w of [...store.openWorkflows]) if (w !== store.activeWorkflow) await store.closeWorkflow(w);
    return store.openWorkflows.map(w => w.path);
}"""

BOUNDS = """() => {
    const nodes = app.graph._nodes, title = LiteGraph.NODE_TITLE_HEIGHT;
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    return [x0, y0, x1, y1];
}"""

FIT = """([left, top, right, bottom]) => {  // the whole graph, centred in the free part of the window
    const nodes = app.graph._nodes, ds = app.canvas.ds, el = app.canvas.canvas, title = LiteGraph.NODE_TITLE_HEIGHT;
    const x0 = Math.min(...nodes.map(n => n.pos[0])) - 8, y0 = Math.min(...nodes.map(n => n.pos[1] - title)) - 8;
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + 8;
    const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + 8;
    const w = el.clientWidth - left - right, h = el.clientHeight - top - bottom;
    const s = Math.min(w / (x1 - x0), h / (y1 - y0), 1.0);
    ds.scale = s;
    ds.offset = [left / s - x0 + (w / s - (x1 - x0)) / 2, top / s - y0 + (h / s - (y1 - y0)) / 2];
    app.canvas.setDirty(true, true);
    return s;
}"""

SET_WIDGETS = """(changes) => {  // [[node type or id, widget name, value], ...]
    for (const [which, name, value] of changes)
        for (const n of app.graph._nodes.filter(n => n.type === which || String(n.id) === String(which))) {
            const w = (n.widgets || []).find(w => w.name === name);
            if (!w) throw new Error(`${n.type} ${n.id} has no widget ${name}`);
            w.value = value;
            w.callback?.(value);
        }
    app.canvas.setDirty(true, true);
}"""

QUEUE = """async (replace) => {  // queue from the page (Run); replace: {node id: API node}, for this prompt only
    const original = app.graphToPrompt;
    if (replace) app.graphToPrompt = async (...args) => {
        const p = await original.apply(app, args);
        Object.assign(p.output, replace);
        return p;
    };
    try { await app.queuePrompt(0, 1); } finally { app.graphToPrompt = original; }
}"""

OUTPUTS_SHOWN = """() => app.graph._nodes.every(n => {  // every output node shows what the run gave it
    if (n.mode !== 0) return true;
    if (n.type === 'SaveImage' || n.type === 'PreviewImage')
        return !!(n.imgs && n.imgs.length && n.imgs.every(i => i.complete && i.naturalWidth > 0));
    if (n.type === 'PreviewAny')
        return (n.widgets || []).some(w => typeof w.value === 'string' && w.value.length > 20);
    return true;
})"""

PANEL_EDGE = """() => {  // the splitter edge of the right side panel: [x, y, width, height]
    const edges = Array.from(document.querySelectorAll('.p-splitter-gutter')).map(g => g.getBoundingClientRect())
        .filter(r => r.height > 100);
    const r = edges.reduce((a, b) => (b.x > a.x ? b : a));
    return [r.x, r.y, r.width, r.height];
}"""

QUIET = """() => !document.querySelector('.p-toast-message, [data-testid=queue-notification-banner]')"""


# --------------------------------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------------------------------


def stand_ins() -> dict[str, Path]:
    """The test suite's random-weight stand-ins (made once, cached under .cache/models)."""
    inprocess.start("pictures", cpu=True)
    import make_checkpoints  # noqa: PLC0415 - after inprocess.start: it imports ComfyUI

    made = make_checkpoints.make_all(only=("sd21base", "ezigen", "clip_b32", "flux"))
    log(make_checkpoints.BANNER)
    return made


def demo_server(base: Path, made: dict[str, Path] | None) -> ComfyServer:
    """This pack; the stand-ins under the shipped workflows' file names (none: a host without the models); the
    demo subjects and edit source in input/ (the source at 4 times the tests' size); the settings above."""
    models = {}
    if made:
        models = {
            "checkpoints": [(made["sd21base"], "v2-1_512-ema-pruned.safetensors")],
            "ezigen": [(made["ezigen"] / "model.safetensors", "ezigen_sd21base.safetensors")],
            "clip_vision": [(made["clip_b32"], "clip_vit_b32.safetensors")],
            "diffusion_models": [(made["flux_unet"], "flux1-dev.safetensors")],
            # the T5 name only so that DualCLIPLoader's widget is not marked missing: the run replaces that node
            "text_encoders": [(made["flux_clip_l"], "clip_l.safetensors"),
                              (made["flux_clip_l"], "t5xxl_fp16.safetensors")],
            "vae": [(made["flux_vae"], "ae.safetensors")],
        }
    write_subject_image(base / "input")
    write_second_subject_image(base / "input")
    write_source_image(base / "input", height=320, width=448)  # the tests' 80 x 112 would show as a stamp
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS, indent=2))
    return ComfyServer(base, custom_nodes={PACK: REPO}, models=models)


# --------------------------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------------------------


def save_png(png: bytes, path: Path, colors: int = 256) -> int:
    """A palette PNG (the noise images are what makes it large), optimized; returns its size in bytes."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def prompt_ids(server: ComfyServer) -> set[str]:
    """The ids of every prompt the server has: finished (GET /history), running or waiting (GET /queue)."""
    with requests.Session() as http:
        http.trust_env = False  # loopback: never through a configured proxy
        queue = http.get(f"{server.url}/queue", timeout=30).json()
        finished = http.get(f"{server.url}/history", timeout=30).json()
    return set(finished) | {item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])}


def open_editor(browser, url: str, width: int = WIDTH, height: int = MIN_HEIGHT):
    page = open_editor_at(browser, url, width, height, timeout_s=120)
    # let the start-up graph's own model checks finish first: late, they would list its models with ours
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(2000)
    return page


def widen_side_panel(page, by: int) -> float:
    """Drag the right side panel's edge `by` pixels to the left; returns the panel's left edge."""
    x, y, w, h = page.evaluate(PANEL_EDGE)
    page.mouse.move(x + w / 2, y + h / 2)
    page.mouse.down()
    page.mouse.move(x + w / 2 - by, y + h / 2, steps=10)
    page.mouse.up()
    page.wait_for_timeout(800)
    return page.evaluate(PANEL_EDGE)[0]


def rest_mouse(page) -> None:
    """The pointer on empty canvas at the bottom: no hover highlight, no tooltip in the picture."""
    page.mouse.move(LEFT + 300, page.viewport_size["height"] - 12)
    page.wait_for_timeout(800)


def fit_window(page) -> float:
    """Size the window to the graph (at least MIN_SCALE: wider for a wide graph), then fit the graph in it."""
    x0, y0, x1, y1 = page.evaluate(BOUNDS)
    w, h = x1 - x0 + 16, y1 - y0 + 16
    scale = min(1.0, max(MIN_SCALE, (WIDTH - LEFT - RIGHT) / w))
    width = max(MIN_WIDTH, round(w * scale) + LEFT + RIGHT)
    height = max(MIN_HEIGHT, round(h * scale) + TOP + BOTTOM)
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(500)
    return page.evaluate(FIT, [LEFT, TOP, RIGHT, BOTTOM])


def size_changes(workflow: dict, size: int) -> list:
    """The image size (the latent's width, or EZIGen Edit's short_side) set to `size`, the mask nodes that cut
    regions out of it scaled with it: [[node id, widget, value], ...] for SET_WIDGETS (shown in the picture)."""
    nodes = workflow["nodes"]
    latents = [n for n in nodes if n["type"] in ("EmptyLatentImage", "EmptySD3LatentImage")]
    shipped = latents[0]["widgets_values"][0] if latents else None
    factor = size / shipped if shipped else 1.0

    def scaled(value: int) -> int:  # latent pixels come in 8s
        return max(8, round(value * factor / 8) * 8) if value else 0

    widgets = {"EmptyLatentImage": ("width", "height"), "EmptySD3LatentImage": ("width", "height"),
               "SolidMask": (None, "width", "height"), "MaskComposite": ("x", "y")}
    changes = []
    for node in nodes:
        if node["type"] == "EZIGenEdit":
            changes.append([node["id"], "short_side", size])
        for name, value in zip(widgets.get(node["type"], ()), node.get("widgets_values", [])):
            if name:
                changes.append([node["id"], name, scaled(value)])
    return changes


def flux_stand_in(workflow: dict) -> dict:
    """The FLUX workflow's DualCLIPLoader as a CLIPLoader with its CLIP-L file, for the queued prompt only (the
    picture shows the node as shipped): {node id: API node}."""
    (dual,) = [n for n in workflow["nodes"] if n["type"] == "DualCLIPLoader"]
    assert dual["widgets_values"][2] == "flux", dual["widgets_values"]
    return {str(dual["id"]): {"class_type": "CLIPLoader", "_meta": {"title": dual.get("title", "")},
                              "inputs": {"clip_name": dual["widgets_values"][0], "type": "stable_diffusion"}}}


def queue_from_page(page, server: ComfyServer, replace: dict | None) -> str:
    """Press Run (the frontend's own queueing); returns the new prompt's id."""
    before = prompt_ids(server)
    page.evaluate(QUEUE, replace)
    deadline = time.monotonic() + 60
    while not (new := prompt_ids(server) - before):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the page queued nothing\n{page.page_errors}\n" + server.log_tail())
        time.sleep(0.5)
    (prompt_id,) = new
    return prompt_id


def execution_seconds(history: dict) -> float:
    """From the server's execution_start to its execution_success message of one prompt."""
    stamps = {event: data.get("timestamp") for event, data in history["status"].get("messages", [])}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def picture_of_run(browser, server: ComfyServer, name: str, steps: int | None, size: int | None,
                   attempts: int = 3) -> dict:
    """Run one shipped workflow from the editor and photograph the editor showing its outputs; returns its figures.

    The page that pressed Run is closed while the server computes (a page does not need to watch, and the browser
    spares the busy CPU and memory); then a fresh page opens the same file, sets the same values and presses Run again,
    and ComfyUI answers from its cache, sending every output node's result to the page as after any run. A page the
    system kills (out of memory) is opened again."""
    workflow = json.loads((WORKFLOWS / name).read_text())
    replace = flux_stand_in(workflow) if name == "ezigen_flux_to_edit.json" else None
    changes = size_changes(workflow, size) if size else []
    if steps:
        changes += [[n["id"], "steps", steps] for n in workflow["nodes"] if n["type"] in STEPS]

    def editor():
        page = open_editor(browser, server.url)
        tabs = page.evaluate(OPEN_AS_FILE, [workflow, name])
        assert tabs == [f"workflows/{name}"], tabs
        page.evaluate(SET_WIDGETS, changes)
        return page

    page = editor()
    prompt_id = queue_from_page(page, server, replace)
    page.context.close()
    computed = server.wait(prompt_id, timeout=RUN_TIMEOUT_S, poll_s=5.0)
    for attempt in range(1, attempts + 1):
        page = editor()
        try:
            scale = fit_window(page)
            shown = server.wait(queue_from_page(page, server, replace), timeout=RUN_TIMEOUT_S, poll_s=1.0)
            page.wait_for_function(OUTPUTS_SHOWN, timeout=120000)
            rest_mouse(page)
            page.wait_for_function(QUIET, timeout=30000)
            target = OUT / name.replace(".json", ".png")
            size = save_png(page.screenshot(), target)
            assert not page.page_errors, page.page_errors
            return {"picture": target.name, "run_s": round(execution_seconds(computed), 1),
                    "shown_after_s": round(execution_seconds(shown), 1), "scale": round(scale, 2), "bytes": size}
        except PlaywrightError as exc:
            if attempt == attempts:
                raise
            log(f"{name}: the page failed ({exc}); opening it again")
        finally:
            page.context.close()
    raise AssertionError("unreachable")


CENTRE = """([type, left, right]) => {  // the node at scale 1, centred between x = left and right; its title's point
    const node = app.graph._nodes.find(n => n.type === type), ds = app.canvas.ds, el = app.canvas.canvas;
    ds.scale = 1.0;
    ds.offset = [(left + right) / 2 - node.pos[0] - node.size[0] / 2,
                 el.clientHeight / 2 - node.pos[1] - node.size[1] / 2 + 30];
    app.canvas.setDirty(true, true);
    const [x, y] = ds.convertOffsetToCanvas([node.pos[0] + 40, node.pos[1] - 15]);
    const box = el.getBoundingClientRect();
    return [box.left + x, box.top + y];
}"""


def picture_of_node_docs(browser, server: ComfyServer) -> dict:
    """EZIGen Edit selected in ezigen_edit.json, its docs panel opened from the selection toolbox's info button."""
    name = "ezigen_edit.json"
    width, height = 2000, 1100
    page = open_editor(browser, server.url, width, height)
    try:
        page.evaluate(OPEN_AS_FILE, [json.loads((WORKFLOWS / name).read_text()), name])
        x, y = page.evaluate(CENTRE, ["EZIGenEdit", LEFT, width])
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        page.locator("[data-testid=info-button]").first.click(timeout=15000)
        page.get_by_text("Crop-and-stitch", exact=False).first.wait_for(timeout=15000)
        edge = widen_side_panel(page, 250)
        page.evaluate(CENTRE, ["EZIGenEdit", LEFT, edge])
        for image in page.locator("img[src*='/extensions/ComfyUI-EZIGen/docs/images/']").all()[:2]:
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=15000)
        return finished_picture(page, "node_docs.png")
    finally:
        page.context.close()


def finished_picture(page, filename: str) -> dict:
    """The page as it stands, mouse out of the way, saved as OUT/filename once the page logged no error."""
    rest_mouse(page)
    target = OUT / filename
    assert not page.page_errors, page.page_errors
    return {"picture": target.name, "bytes": save_png(page.screenshot(), target)}


def picture_of_missing_models(browser, server: ComfyServer) -> dict:
    """ezigen_generate.json opened on a host without its models: the frontend offers SD2.1-base and CLIP ViT-B/32
    for download (the EZIGen adapter, with no single-file download, is listed without one)."""
    name = "ezigen_generate.json"
    width, height = 2200, 950
    page = open_editor(browser, server.url, width, height)
    try:
        page.evaluate(OPEN_AS_FILE, [json.loads((WORKFLOWS / name).read_text()), name])
        # the errors overlay's button: "Show missing models" (frontend 1.45), "View details" (1.58)
        page.get_by_text("Show missing models").or_(page.get_by_text("View details")).first.click(timeout=20000)
        page.get_by_text("v2-1_512-ema-pruned.safetensors", exact=False).first.wait_for(timeout=20000)
        edge = widen_side_panel(page, 250)
        page.evaluate(FIT, [LEFT, TOP, width - edge + RIGHT, BOTTOM])
        return finished_picture(page, "missing_models.png")
    finally:
        page.context.close()


# Shipped workflows without a picture: the reason is what README says in the picture's place.
UNPICTURED = {"ezigen_sdxl_generate": "a full-size SDXL run (6.9 GB of stand-ins, minutes a step on a CPU); its test "
                                      "is tests/e2e/test_sdxl.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json") if p.stem not in UNPICTURED)
    parser.add_argument("--only", nargs="+", choices=[*names, "node_docs", "missing_models"],
                        help="just these pictures (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps for the CPU (default: the shipped values); shown in the picture")
    parser.add_argument("--size", type=int, default=None,
                        help="image size for the CPU (default: the shipped 512, FLUX 1024; masks scaled with it); "
                             "shown in the picture")
    args = parser.parse_args(argv)
    only = set(args.only or [*names, "node_docs", "missing_models"])

    figures = []
    with tempfile.TemporaryDirectory(prefix="ezigen-pictures-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        if only - {"missing_models"}:
            made = stand_ins()
            with demo_server(Path(tmp) / "comfy", made) as server:
                for name in names:
                    if name in only:
                        log(f"{name}: running")
                        figures.append(picture_of_run(browser, server, f"{name}.json", args.steps, args.size))
                        log(figures[-1])
                if "node_docs" in only:
                    figures.append(picture_of_node_docs(browser, server))
        if "missing_models" in only:
            with demo_server(Path(tmp) / "bare", None) as bare:
                figures.append(picture_of_missing_models(browser, bare))
        browser.close()
    for figure in figures:
        print(json.dumps(figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
