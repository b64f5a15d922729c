"""The pack's web extension in a real browser: a real ComfyUI server with the pack, headless Chromium.

    python -m bench.browser [--out DIR]

Needs a ComfyUI prepared by ../shared/tools/comfyui_host/prepare.sh (``COMFYUI_HOME``, default
/tmp/comfyui-host; its ``run.py`` starts the server), Playwright (pip) and a Chromium binary
(``CHROMIUM``, default /usr/bin/chromium: Debian's package; Playwright's own download is not used).

Steps: load the page and the example workflow ``edit_face_export_mesh.json``; wait for Edit
Expression and Pose to draw its face; screenshot the preview; turn the jaw_open and yaw sliders
through their widget callbacks (what a drag ends in) and screenshot again; tick the landmark box with a
real click; queue the workflow from the page; wait for Preview 3D to fetch Export Mesh's .glb and
screenshot that node. With ``--models DIR`` (python -m scripts.tiny_models DIR) it then switches Load
3DMM to the first .mat model, and runs ``emotion_text_portrait.json`` to see Apply Emotion's preview
follow a drag of Text Emotion's intensity. The last line is JSON: ``console_errors`` (messages the page logged as
errors), ``preview_changed`` (the slider move changed the preview), ``mesh_loaded`` (Preview 3D got
the file and its view changed) and the screenshot paths.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = PACK_ROOT / "example_workflows" / "edit_face_export_mesh.json"
EMOTION_WORKFLOW = PACK_ROOT / "example_workflows" / "emotion_text_portrait.json"  # needs --models
ASSETS = PACK_ROOT / "tests" / "assets"
HOST_TOOLS = Path(os.environ.get("COMFYUI_HOST_TOOLS", PACK_ROOT.parent / "shared" / "tools" / "comfyui_host"))
EDITOR = "TalkingFaceEditExpressionAndPose"
APPLY_EMOTION = "TalkingFaceApplyEmotion"
# SwiftShader gives headless Chromium WebGL without a GPU.
DRAGGED_SLIDERS = ("jaw_open", "yaw")
REDRAWS = 20
DRAG_PIXELS = 15
OPTIONAL_HOST_FILES = ("/user.css", "/favicon.ico", "/api/userdata")
# Load 3D asks for <name>.mtl beside every OBJ; Export Mesh writes none on purpose: three.js's OBJ
# loader drops the vertex colours when a material library is found (seen: a white head).
LOAD3D_MATERIAL_PROBE = re.compile(r"/view\?.*filename=[^&]*\.mtl(&|$)")
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def host_server_class():
    """run.py's Server (start on a free loopback port with fresh folders, stop)."""
    spec = importlib.util.spec_from_file_location("comfyui_host_run", HOST_TOOLS / "run.py")
    if spec is None or not (HOST_TOOLS / "run.py").is_file():
        raise SystemExit(f"bench.browser: {HOST_TOOLS / 'run.py'} not found; set COMFYUI_HOST_TOOLS")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Server


def changed_fraction(before: Path, after: Path, threshold: int = 12) -> float:
    """Share of pixels whose largest channel difference exceeds ``threshold`` (0..255)."""
    a = np.asarray(Image.open(before).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(after).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(-1) > threshold).mean())


def wait_for_mesh(page, responses: list, suffix: str, deadline: float) -> bool:
    """Wait until the page fetched a file ending in ``suffix`` through /view, then let three.js draw."""
    while time.time() < deadline and not any(suffix in url and status == 200 for url, status in responses):
        page.wait_for_timeout(250)
    page.wait_for_timeout(3000)  # three.js parses the file and draws a few frames
    return any(suffix in url and status == 200 for url, status in responses)


def node_clip(page, node_type: str) -> dict:
    """The node's rectangle on the screen (title bar included), for a screenshot clip."""
    box = page.evaluate(
        """(type) => {
          const node = app.graph.findNodesByType(type)[0];
          const canvas = app.canvas.canvas.getBoundingClientRect();
          const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
          const scale = app.canvas.ds.scale;
          return {x: canvas.left + x, y: canvas.top + y, width: node.size[0] * scale,
                  height: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * scale};
        }""",
        node_type,
    )
    return {key: max(0.0, value) for key, value in box.items()}


def drag_widget(page, node_type: str, widget_name: str, pixels: float) -> None:
    """Drag a number widget sideways with the mouse, as a user moves a slider."""
    x, y = page.evaluate(
        """([type, name]) => {
          const node = app.graph.findNodesByType(type)[0];
          const widget = node.widgets.find((w) => w.name === name);
          const canvas = app.canvas.canvas.getBoundingClientRect();
          const height = widget.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT;
          const [x, y] = app.canvas.ds.convertOffsetToCanvas(
            [node.pos[0] + node.size[0] * 0.5, node.pos[1] + (widget.y ?? widget.last_y) + height * 0.5]);
          return [canvas.left + x, canvas.top + y];
        }""",
        [node_type, widget_name],
    )
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + pixels * step / 10, y)
    page.mouse.up()


def wait_for_redraw(page, before: str, node_type: str = EDITOR) -> bool:
    """Whether the editor redrew (its state key moved away from ``before``) within 10 s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"""(before) => app.graph.findNodesByType("{node_type}")[0].talkingfacePreview.drawnKey !== before""",
            arg=before, timeout=10000,
        )
        return True
    except PlaywrightTimeout:
        return False


def wait_for_preview(page, timeout_ms: int = 60000, node_type: str = EDITOR) -> str:
    """Wait until the node's preview drew a face for its current inputs; return that state's key."""
    page.wait_for_function(
        f"""() => {{
          const node = app.graph.findNodesByType("{node_type}")[0];
          const preview = node?.talkingfacePreview;
          if (!preview) return false;
          preview.update();
          return preview.face && preview.drawnKey?.startsWith("[");  // a face, not a message
        }}""",
        timeout=timeout_ms,
    )
    return page.evaluate(f'() => app.graph.findNodesByType("{node_type}")[0].talkingfacePreview.drawnKey')


def emotion_stage(page, shots: dict, timeout: float) -> dict:
    """Apply Emotion: run the text-emotion workflow, then drag Text Emotion's intensity."""
    page.evaluate("(workflow) => app.loadGraphData(workflow)", json.loads(EMOTION_WORKFLOW.read_text()))
    page.evaluate("() => { app.canvas.ds.offset = [40, 90]; app.canvas.ds.scale = 0.6; app.canvas.setDirty(true, true); }")
    page.evaluate("() => app.queuePrompt(0, 1)")
    key = wait_for_preview(page, int(timeout * 1000), APPLY_EMOTION)
    preview = page.locator("canvas[data-talkingface-preview='face']").first
    preview.screenshot(path=shots["emotion_after_run"])
    drag_widget(page, "TalkingFaceTextEmotion", "intensity", DRAG_PIXELS)
    redrawn = wait_for_redraw(page, key, APPLY_EMOTION)
    preview.screenshot(path=shots["emotion_intensity"])
    page.screenshot(path=shots["page_emotion"])
    caption, intensity = page.evaluate(
        f"""() => [app.graph.findNodesByType("{APPLY_EMOTION}")[0].talkingfacePreview.caption.textContent,
                  app.graph.findNodesByType("TalkingFaceTextEmotion")[0].widgets.find((w) => w.name === "intensity").value]"""
    )
    return {"emotion_caption": caption.strip(), "emotion_intensity_after_drag": intensity,
            "emotion_preview_changed_fraction": round(changed_fraction(shots["emotion_after_run"], shots["emotion_intensity"]), 4)
            if redrawn else 0.0}


def measure_redraw(page) -> float:
    """Milliseconds per editor redraw (compose, pose, normals, upload, draw, GPU finished)."""
    return page.evaluate(
        f"""() => {{
          const node = app.graph.findNodesByType("{EDITOR}")[0];
          const preview = node.talkingfacePreview;
          const smile = node.widgets.find((w) => w.name === "smile");
          const kept = smile.value;
          const start = performance.now();
          for (let i = 1; i <= {REDRAWS}; i++) {{
            smile.value = kept + 0.01 * i;
            preview.update();
            preview.gl.finish();
          }}
          smile.value = kept;
          preview.update();
          return (performance.now() - start) / {REDRAWS};
        }}"""
    )


def show_other_face_model(page) -> str | None:
    """Pick the first .mat file in Load 3DMM (BFM layout) and wait for the editor to draw it."""
    choice = page.evaluate(
        """() => {
          const widget = app.graph.findNodesByType("TalkingFaceLoad3DMM")[0].widgets.find((w) => w.name === "model_name");
          const choice = (widget.options.values ?? []).find((value) => value.endsWith(".mat"));
          if (choice) { widget.value = choice; widget.callback?.(choice); app.canvas.setDirty(true, true); }
          return choice ?? null;
        }"""
    )
    if choice:
        page.wait_for_function(
            f"""(choice) => {{
              const preview = app.graph.findNodesByType("{EDITOR}")[0].talkingfacePreview;
              return preview.face?.header.model === choice && preview.drawnKey;
            }}""",
            arg=choice, timeout=30000,
        )
    return choice


def run(out: Path, chromium: str, timeout: float, models: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    home = Path(os.environ.get("COMFYUI_HOME", "/tmp/comfyui-host"))
    if not (home / "main.py").is_file():
        raise SystemExit(f"bench.browser: no ComfyUI at {home}; run ../shared/tools/comfyui_host/prepare.sh .")
    link = home / "custom_nodes" / PACK_ROOT.name
    if not link.exists():
        link.symlink_to(PACK_ROOT)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="talkingface-browser-"))
    settings = work / "user" / "default"
    settings.mkdir(parents=True)
    # A fresh user would first see the template browser over the canvas.
    (settings / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    server = host_server_class()(home, work, timeout, models)
    console_errors: list[str] = []
    host_errors: list[str] = []

    def record_console_error(message) -> None:
        url = message.location.get("url", "")
        # A fresh, offline ComfyUI logs 404s for optional user files and fails to reach api.comfy.org;
    # Load 3D probes for an OBJ's .mtl.
        unrelated = message.text.startswith("Failed to load resource") and (
            not url.startswith(server.url) or any(part in url for part in OPTIONAL_HOST_FILES)
            or LOAD3D_MATERIAL_PROBE.search(url) is not None)
        (host_errors if unrelated else console_errors).append(f"{message.text} {url}".strip())
    mesh_responses: list[tuple[str, int]] = []
    shots = {name: out / f"{name}.png" for name in
             ("page", "page_after_run", "preview_other_model", "emotion_after_run", "emotion_intensity", "page_emotion", "preview_before", "preview_after", "preview_landmarks", "preview3d_before", "preview3d_after", "preview3d_obj")}
    try:
        server.start()
        for asset in ASSETS.iterdir():
            shutil.copy(asset, work / "input" / asset.name)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1700, "height": 1000})
            page.on("console", lambda m: m.type == "error" and record_console_error(m))
            page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
            page.on("response", lambda r: r.url.split("?")[0].endswith("/view") and (".glb" in r.url or ".obj" in r.url)
                    and mesh_responses.append((r.url, r.status)))
            started = time.perf_counter()
            page.goto(server.url)
            page.wait_for_function("() => window.app?.graph && window.app.canvas", timeout=timeout * 1000)
            extensions = page.evaluate("() => app.extensions.map((e) => e.name)")
            page.evaluate("(workflow) => app.loadGraphData(workflow)", json.loads(WORKFLOW.read_text()))
            page.evaluate("() => { app.canvas.ds.offset = [40, 90]; app.canvas.ds.scale = 0.75; app.canvas.setDirty(true, true); }")
            first_key = wait_for_preview(page)
            seconds_to_first_preview = time.perf_counter() - started
            # The preview is not a value: saved workflows keep the node's widget values as they were.
            saved_values = page.evaluate(
                f"""() => app.graph.serialize().nodes.find((n) => n.type === "{EDITOR}").widgets_values"""
            )
            expected_values = next(n for n in json.loads(WORKFLOW.read_text())["nodes"] if n["type"] == EDITOR)[
                "widgets_values"]
            preview = page.locator("canvas[data-talkingface-preview='face']").first
            preview.screenshot(path=shots["preview_before"])
            for name in DRAGGED_SLIDERS:
                drag_widget(page, EDITOR, name, DRAG_PIXELS)
            slider_values = page.evaluate(
                f"""(names) => Object.fromEntries(names.map((name) => [name,
                  app.graph.findNodesByType("{EDITOR}")[0].widgets.find((w) => w.name === name).value]))""",
                list(DRAGGED_SLIDERS),
            )
            wait_for_redraw(page, first_key)
            slider_key = wait_for_preview(page)
            preview.screenshot(path=shots["preview_after"])
            ms_per_redraw = measure_redraw(page)
            page.locator(".talkingface-face-preview input[type=checkbox]").first.click()
            wait_for_redraw(page, slider_key)
            preview.screenshot(path=shots["preview_landmarks"])  # the landmark canvas lies over the face
            page.screenshot(path=shots["page"])
            page.screenshot(path=shots["preview3d_before"], clip=node_clip(page, "Preview3D"))
            page.evaluate("() => app.queuePrompt(0, 1)")
            deadline = time.time() + timeout
            wait_for_mesh(page, mesh_responses, ".glb", deadline)
            page.screenshot(path=shots["preview3d_after"], clip=node_clip(page, "Preview3D"))
            mesh_file = page.evaluate(
                """() => app.graph.findNodesByType("Preview3D")[0].widgets.find((w) => w.name === "model_file")?.value"""
            )
            # The same edit as obj files: Preview 3D shows the first frame.
            page.evaluate(
                """() => { const node = app.graph.findNodesByType("TalkingFaceExportMesh")[0];
                           node.widgets.find((w) => w.name === "file_format").value = "obj"; }"""
            )
            page.evaluate("() => app.queuePrompt(0, 1)")
            obj_loaded = wait_for_mesh(page, mesh_responses, ".obj", time.time() + timeout)
            page.screenshot(path=shots["preview3d_obj"], clip=node_clip(page, "Preview3D"))
            page.screenshot(path=shots["page_after_run"])
            # Only after the run: the example's coefficients belong to the demo face.
            other_model = show_other_face_model(page)
            if other_model:
                preview.screenshot(path=shots["preview_other_model"])
                other_ms_per_redraw = measure_redraw(page)
                other_vertices = page.evaluate(
                    f"""() => app.graph.findNodesByType("{EDITOR}")[0].talkingfacePreview.face.header.vertices""")
            emotion = emotion_stage(page, shots, timeout) if models else {}
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    preview_change = changed_fraction(shots["preview_before"], shots["preview_after"])
    preview3d_change = changed_fraction(shots["preview3d_before"], shots["preview3d_after"])
    return {
        "extension_loaded": "TalkingFace.FaceEditor" in extensions,
        "seconds_to_first_preview": round(seconds_to_first_preview, 2),
        "saved_widget_values_unchanged": saved_values == expected_values,
        "dragged_slider_values": slider_values,
        "preview_changed_fraction": round(preview_change, 4),
        "ms_per_redraw": round(ms_per_redraw, 2),
        "landmarks_changed_fraction": round(changed_fraction(shots["preview_after"], shots["preview_landmarks"]), 4),
        "preview3d_changed_fraction": round(preview3d_change, 4),
        "mesh_file": mesh_file,
        "mesh_responses": [status for _, status in mesh_responses],
        "obj_loaded": obj_loaded,
        "console_error_messages": console_errors[:20],
        "host_errors": len(host_errors),
        "console_errors": len(console_errors),
        "preview_changed": preview_change > 0.01,
        "mesh_loaded": any(".glb" in url and status == 200 for url, status in mesh_responses) and preview3d_change > 0.01,
        "other_face_model": other_model,
        "other_model_vertices": other_vertices if other_model else None,
        "other_model_ms_per_redraw": round(other_ms_per_redraw, 2) if other_model else None,
        **emotion,
        "screenshots": {name: str(path) for name, path in shots.items() if path.exists()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "talkingface-browser",
                        help="folder for the screenshots")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--models", type=Path, help="a models/ folder (python -m scripts.tiny_models DIR): "
                        "the editor then also draws the first .mat 3DMM in it")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for start-up and for the run")
    args = parser.parse_args()
    result = run(args.out, args.chromium, args.timeout, args.models.resolve() if args.models else None)
    print(json.dumps(result))
    return 0 if result["preview_changed"] and result["mesh_loaded"] and not result["console_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
