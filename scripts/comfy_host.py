"""Drive a real, headless ComfyUI from tests and developer scripts (the developer harness in scripts/).

Two halves:

- :class:`ComfyServer` starts ``main.py --cpu`` in a throw-away base directory (models, custom
  nodes, output and the user database all live there), talks to it over plain HTTP (``/prompt``,
  ``/history``; no websocket client is installed, so completion is polled) and stops it again.
- :func:`ui_to_api` / :func:`ui_workflow_errors` turn the workflow JSON the frontend saves (the
  "UI format": ``nodes[]`` + ``links[]`` + positional ``widgets_values``) into the "API format"
  that ``POST /prompt`` accepts, using ``/object_info`` as the schema. Shipping example workflows in
  UI format is what users load, so tests must be able to execute exactly those files.

The widget rules mirror what the ComfyUI frontend (comfyui-frontend-package 1.32.9, the one
ComfyUI 0.3.75 pins) saves, as observed in its files:

- widgets appear in ``input_order`` order, required then optional; sockets (MODEL, IMAGE, ...)
  and ``forceInput`` inputs have no widget;
- an INT with ``control_after_generate`` (or, when the option is absent, named ``seed`` /
  ``noise_seed``) is followed by one extra value ("fixed", "randomize", ...); a COMBO with
  ``control_after_generate`` by two (the control and its filter-list text); a COMBO whose
  ``remote`` config asks for a refresh button by one (``"refresh"``);
- a required COMBO with ``image_upload`` / ``video_upload`` / ``animated_image_upload`` gets an
  extra "upload" button widget appended after the last required widget (its saved value is
  ``"image"``);
- a widget converted to a socket keeps its slot in ``widgets_values``; a link, when present, wins.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import requests

from ezigen_lib.host import comfy_root

__all__ = [
    "ComfyServer",
    "ComfyServerError",
    "PromptFailed",
    "PromptRejected",
    "WorkflowError",
    "comfy_root",
    "host_understands",
    "ui_to_api",
    "ui_workflow_errors",
    "widget_value_problems",
    "widget_values_by_name",
    "widgets_values_from_names",
]

JSON = dict[str, Any]

#: Frontend-only node types: they never reach the server.
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
#: Input types the frontend draws as a widget (besides a literal list of choices).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
#: Names whose INT widget gets a control widget when the spec does not say otherwise.
SEED_NAMES = frozenset({"seed", "noise_seed"})
#: Combo options that make the frontend append an "upload" button widget.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")

MODE_ALWAYS, MODE_MUTED, MODE_BYPASS = 0, 2, 4


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


class ComfyServerError(RuntimeError):
    """The ComfyUI process did not start, died, or did not answer; carries the log tail."""


class PromptRejected(RuntimeError):
    """``POST /prompt`` refused the graph (HTTP 400, or node errors on a partial accept).

    ``error`` and ``node_errors`` are the server's JSON verbatim, so tests can assert on the exact
    validation failure (e.g. ``node_errors["3"]["errors"][0]["type"] == "value_not_in_list"``).
    """

    def __init__(self, status_code: int, error: Any, node_errors: Mapping[str, Any]):
        self.status_code = status_code
        self.error = error
        self.node_errors: dict[str, Any] = dict(node_errors or {})
        message = error.get("message", error) if isinstance(error, dict) else error
        details = "; ".join(
            f"node {nid} ({ne.get('class_type', '?')}): "
            + ", ".join(f"{e.get('message')}: {e.get('details')}" for e in ne.get("errors", []))
            for nid, ne in self.node_errors.items()
        )
        super().__init__(f"prompt rejected (HTTP {status_code}): {message}" + (f" [{details}]" if details else ""))


class PromptFailed(RuntimeError):
    """A queued prompt ran and ended in ``status_str == "error"`` (an exception in a node)."""

    def __init__(self, prompt_id: str, status: Mapping[str, Any]):
        self.prompt_id = prompt_id
        self.status: dict[str, Any] = dict(status or {})
        self.messages: list[Any] = list(self.status.get("messages") or [])
        self.execution_error: dict[str, Any] | None = next(
            (data for event, data in self.messages if event == "execution_error"), None
        )
        if self.execution_error:
            e = self.execution_error
            head = (
                f"node {e.get('node_id')} ({e.get('node_type')}) raised "
                f"{e.get('exception_type')}: {e.get('exception_message')}"
            )
        else:
            head = f"status {self.status.get('status_str')!r}"
        events = ", ".join(str(m[0]) for m in self.messages)
        super().__init__(f"prompt {prompt_id} failed: {head} (events: {events})")

    @property
    def exception_message(self) -> str | None:
        """The node's exception text, the part a test usually asserts on."""
        return self.execution_error.get("exception_message") if self.execution_error else None


class WorkflowError(ValueError):
    """A UI-format workflow cannot be converted (unknown node type, broken link, ...)."""


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    """Ask the kernel for an unused loopback port (tiny race window; start-up failure is reported)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_understands(root: Path, flag: str) -> bool:
    """Whether the ComfyUI at `root` declares the command-line `flag` and does not mark it deprecated.

    Read from its ``comfy/cli_args.py`` as text (nothing imported): hosts differ, e.g. newer cores
    deprecate ``--disable-api-nodes``, and an unknown flag makes main.py exit at start-up.
    """
    try:
        text = (Path(root) / "comfy" / "cli_args.py").read_text()
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        if "add_argument(" in line and (f'"{flag}"' in line or f"'{flag}'" in line):
            lowered = line.lower()
            return "deprecated" not in lowered and "argparse.suppress" not in lowered
    return False


def _link_into(target_dir: Path, source: Path, name: str | None = None) -> Path:
    """Symlink ``source`` into ``target_dir`` (replacing a stale link), so nothing is copied."""
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"cannot link missing path {source}")
    target_dir.mkdir(parents=True, exist_ok=True)
    link = target_dir / (name or source.name)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(source, target_is_directory=source.is_dir())
    return link


class ComfyServer:
    """A headless ``python main.py --cpu`` bound to 127.0.0.1 on a free port, as a context manager.

    Everything the server writes goes under ``base_dir`` (via ``--base-directory`` and a SQLite
    URL there), so the ComfyUI tree itself, which lives in site-packages, is never modified.
    """

    STARTUP_TIMEOUT_S = 120.0
    STOP_GRACE_S = 10.0

    def __init__(
        self,
        base_dir: Path,
        custom_nodes: Mapping[str, Path] | None = None,
        models: Mapping[str, Iterable[Path | tuple[Path, str]]] | None = None,
        extra_args: Iterable[str] = (),
        python: str = sys.executable,
        *,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        cpu: bool = True,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.custom_nodes = {k: Path(v) for k, v in (custom_nodes or {}).items()}
        # a model is a path, or (path, name) to show it under another file name (e.g. a workflow's default)
        self.models = {k: [(Path(p[0]), p[1]) if isinstance(p, tuple) else (Path(p), Path(p).name) for p in v]
                       for k, v in (models or {}).items()}
        self.extra_args = list(extra_args)
        self.python = python
        self.port = port
        self.startup_timeout = startup_timeout
        self.env = dict(env) if env is not None else None
        self.cpu = cpu  # False: ComfyUI picks the GPU (scripts/gpu_check.sh)
        self.root = comfy_root()
        self.log_path = self.base_dir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._object_info: JSON | None = None
        self._http = requests.Session()
        self._http.trust_env = False  # loopback only: never route through a configured proxy

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:40123``."""
        if self.port is None:
            raise ComfyServerError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def _prepare_base_dir(self) -> None:
        """Create the folders main.py expects (it crashes on a missing custom_nodes/) and links."""
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, folder in self.custom_nodes.items():
            _link_into(self.base_dir / "custom_nodes", folder, name)
        for folder_name, paths in self.models.items():
            names = [name for _, name in paths]
            if len(set(names)) != len(names):
                raise ValueError(f"models[{folder_name!r}]: two paths share a file name: {names}")
            for path, name in paths:
                _link_into(self.base_dir / "models" / folder_name, path, name)
        # A fresh user dir otherwise opens the templates dialog over the editor in a real browser.
        settings = self.base_dir / "user" / "default" / "comfy.settings.json"
        current: JSON = {}
        if settings.is_file():
            try:
                current = json.loads(settings.read_text())
            except json.JSONDecodeError:
                current = {}
        current["Comfy.TutorialCompleted"] = True
        settings.write_text(json.dumps(current, indent=2))

    def add_models(self, folder_name: str, paths: Iterable[Path | tuple[Path, str]]) -> None:
        """Link more model files into models/<folder_name> of the running server (ComfyUI rescans its model
        folders when asked for a list, so they appear without a restart); (path, name) shows one under a name."""
        for entry in paths:
            path, name = (Path(entry[0]), entry[1]) if isinstance(entry, tuple) else (Path(entry), Path(entry).name)
            _link_into(self.base_dir / "models" / folder_name, path, name)
        self._object_info = None

    def command(self) -> list[str]:
        """The exact command line used to start the server (handy in failure messages)."""
        base = str(self.base_dir)
        # API nodes reach paid web services: keep them off where the host still has the switch.
        api_nodes = ["--disable-api-nodes"] if host_understands(self.root, "--disable-api-nodes") else []
        return [
            self.python, "main.py", *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", *api_nodes,
            "--base-directory", base,
            "--database-url", f"sqlite:///{base}/user/comfyui.db",
            "--preview-method", "none",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> "ComfyServer":
        """Start the process and block until ``GET /object_info`` answers 200."""
        if self._proc is not None:
            return self
        self._prepare_base_dir()
        if self.port is None:
            self.port = _free_port()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # so the log is current when we quote it
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.root,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() can take children down too
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._raise_if_dead("exited during start-up")
            try:
                r = self._http.get(f"{self.url}/object_info", timeout=10)
                if r.status_code == 200:
                    self._object_info = r.json()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ComfyServerError(
            f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        """Terminate the server (SIGTERM to its group, SIGKILL after 10 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(self.STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(self.STOP_GRACE_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._http.close()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _raise_if_dead(self, what: str) -> None:
        if self._proc is None:
            raise ComfyServerError("server not started")
        rc = self._proc.poll()
        if rc is not None:
            raise ComfyServerError(f"ComfyUI {what} (exit code {rc})\n" + self.log_tail())

    # -- logs --------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the server printed so far (stdout and stderr interleaved)."""
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        tail = deque(self.log_text().splitlines(), maxlen=lines)
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    # -- API ---------------------------------------------------------------------------------

    def object_info(self, refresh: bool = False) -> JSON:
        """``GET /object_info``: the schema of every registered node (cached; it is ~1 MB)."""
        if self._object_info is None or refresh:
            r = self._http.get(f"{self.url}/object_info", timeout=60)
            r.raise_for_status()
            self._object_info = r.json()
        return self._object_info

    def queue(self, prompt: Mapping[str, Any], *, allow_partial: bool = False) -> str:
        """``POST /prompt``; return the prompt id.

        Raises :class:`PromptRejected` on HTTP 400. The server also accepts a graph in which only
        *some* outputs are valid and silently drops the others; unless ``allow_partial`` that is
        treated as a rejection too (after taking the prompt back off the queue, best effort),
        because a test would otherwise pass on a half-run graph.
        """
        self._raise_if_dead("is not running")
        payload = {"prompt": prompt, "client_id": self.client_id}
        r = self._http.post(f"{self.url}/prompt", json=payload, timeout=60)
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text, "node_errors": {}}
        if r.status_code == 400:
            raise PromptRejected(400, body.get("error"), body.get("node_errors") or {})
        r.raise_for_status()
        prompt_id = str(body["prompt_id"])
        if body.get("node_errors") and not allow_partial:
            try:
                self._http.post(f"{self.url}/queue", json={"delete": [prompt_id]}, timeout=30)
            except requests.RequestException:
                pass  # it may already be running; the caller gets the rejection either way
            raise PromptRejected(r.status_code, "some outputs failed validation", body["node_errors"])
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = 600.0, poll_s: float = 0.2) -> JSON:
        """Poll ``/history/<id>`` until the prompt finished; return its history entry.

        Raises :class:`PromptFailed` (with the node's exception message) if it ended in error,
        :class:`ComfyServerError` if the server died, ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_dead(f"died while running prompt {prompt_id}")
            r = self._http.get(f"{self.url}/history/{prompt_id}", timeout=30)
            r.raise_for_status()
            entry = r.json().get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise PromptFailed(prompt_id, status)
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} still not finished after {timeout:.0f} s\n" + self.log_tail())
            time.sleep(poll_s)

    def history(self) -> JSON:
        """All finished prompts (GET /history), keyed by prompt id."""
        return self._http.get(f"{self.url}/history", timeout=30).json()

    def is_running(self, prompt_id: str) -> bool:
        """Whether `prompt_id` is the prompt being executed now (GET /queue)."""
        queue = self._http.get(f"{self.url}/queue", timeout=30).json()
        return any(item[1] == prompt_id for item in queue.get("queue_running", []))

    def free_memory(self) -> None:
        """Ask the server to unload its models and drop its node cache before the next prompt (POST /free), so a
        big model one test needed does not stay resident for the rest of the session."""
        self._http.post(f"{self.url}/free", json={"unload_models": True, "free_memory": True},
                        timeout=30).raise_for_status()

    def interrupt(self) -> None:
        """Ask the server to stop the prompt that is running (the editor's Cancel button)."""
        self._http.post(f"{self.url}/interrupt", timeout=30).raise_for_status()

    def run(self, prompt: Mapping[str, Any], timeout: float = 600.0) -> JSON:
        """Queue an API-format prompt and wait for its history entry."""
        return self.wait(self.queue(prompt), timeout)

    def run_workflow(self, workflow: Mapping[str, Any], timeout: float = 600.0) -> JSON:
        """Convert a UI-format workflow with this server's schema, then :meth:`run` it."""
        return self.run(ui_to_api(workflow, self.object_info()), timeout)

    def output_images(self, history_entry: Mapping[str, Any]) -> list[Path]:
        """Absolute paths of the images SaveImage / PreviewImage wrote for one history entry."""
        paths: list[Path] = []
        for node_output in (history_entry.get("outputs") or {}).values():
            for image in node_output.get("images") or []:
                kind = image.get("type", "output")
                if kind not in ("output", "temp"):
                    continue
                paths.append(self.base_dir / kind / image.get("subfolder", "") / image["filename"])
        return paths


# --------------------------------------------------------------------------------------------
# UI format -> API format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    """One ``links[]`` entry, whichever of the two serialisations the frontend used."""

    id: int
    from_id: str
    from_slot: int
    to_id: str
    to_slot: int
    type: Any


def _parse_links(workflow: Mapping[str, Any]) -> dict[int, _Link]:
    """Index links by id; accepts ``[id, from, slot, to, slot, type]`` and the object form."""
    out: dict[int, _Link] = {}
    for raw in workflow.get("links") or []:
        if raw is None:
            continue
        if isinstance(raw, Mapping):
            link = _Link(int(raw["id"]), str(raw["origin_id"]), int(raw["origin_slot"]),
                         str(raw["target_id"]), int(raw["target_slot"]), raw.get("type"))  # fmt: skip
        else:
            lid, from_id, from_slot, to_id, to_slot, ltype = (list(raw) + [None] * 6)[:6]
            link = _Link(int(lid), str(from_id), int(from_slot), str(to_id), int(to_slot), ltype)
        out[link.id] = link
    return out


def _parse_nodes(workflow: Mapping[str, Any]) -> dict[str, JSON]:
    nodes: dict[str, JSON] = {}
    for node in workflow.get("nodes") or []:
        nodes[str(node["id"])] = node
    return nodes


def _spec_type(spec: Any) -> Any:
    """The type part of an ``/object_info`` input spec: a string, or a list of combo choices."""
    return spec[0] if isinstance(spec, (list, tuple)) and spec else spec


def _spec_options(spec: Any) -> JSON:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping):
        return dict(spec[1])
    return {}


def _is_combo(spec_type: Any) -> bool:
    """V1 nodes list their choices directly; V3 nodes send ``"COMBO"`` with ``options``."""
    return isinstance(spec_type, list) or spec_type == "COMBO"


def _input_order(info: Mapping[str, Any], section: str) -> list[str]:
    specs = (info.get("input") or {}).get(section) or {}
    order = (info.get("input_order") or {}).get(section)
    return [n for n in order if n in specs] if order else list(specs)


def _input_spec(info: Mapping[str, Any], name: str) -> Any:
    for section in ("required", "optional"):
        specs = (info.get("input") or {}).get(section) or {}
        if name in specs:
            return specs[name]
    return None


def _ui_input_name(entry: Mapping[str, Any]) -> str:
    """The schema name of a node's input slot (``widget.name`` wins: labels may be renamed)."""
    widget = entry.get("widget")
    if isinstance(widget, Mapping) and widget.get("name"):
        return str(widget["name"])
    return str(entry.get("name"))


def _widget_layout(
    info: Mapping[str, Any], ui_node: Mapping[str, Any], n_values: int | None
) -> list[tuple[str | None, Any]]:
    """Each position of ``widgets_values`` as (input name, None), or (None, the value the frontend
    saves there) for a UI-only slot (a control value, a filter text, a button).

    ``n_values`` lets us recognise old files that still stored values for ``forceInput`` inputs
    (the frontend drops those on load when the counts say so); pass None to get the modern layout.
    """
    ui_widget_names = {
        _ui_input_name(e) for e in ui_node.get("inputs") or [] if isinstance(e, Mapping) and e.get("widget")
    }

    def layout(include_forced: bool) -> list[tuple[str | None, Any]]:
        slots: list[tuple[str | None, Any]] = []
        for section in ("required", "optional"):
            wants_upload = False
            for name in _input_order(info, section):
                spec = info["input"][section][name]
                stype, opts = _spec_type(spec), _spec_options(spec)
                is_widget = (isinstance(stype, str) and stype in WIDGET_TYPES) or _is_combo(stype)
                if opts.get("forceInput"):
                    if include_forced and is_widget:
                        slots.append((None, None))
                    continue
                if not is_widget and name not in ui_widget_names:
                    continue  # a plain socket (MODEL, IMAGE, ...): no widget, no value
                slots.append((name, None))
                control = opts.get("control_after_generate")
                if stype == "INT" and (control if control is not None else name in SEED_NAMES):
                    slots.append((None, "fixed"))  # or "increment" / "decrement" / "randomize"
                elif _is_combo(stype) and control:
                    slots.extend([(None, "fixed"), (None, "")])  # control value + its filter-list text
                if _is_combo(stype) and (opts.get("remote") or {}).get("refresh_button"):
                    slots.append((None, "refresh"))  # the button next to a remote (server-listed) combo
                if section == "required" and _is_combo(stype) and any(opts.get(k) for k in UPLOAD_OPTIONS):
                    wants_upload = True
            if wants_upload:
                slots.append((None, "image"))  # the "choose file to upload" button, saved as "image"
        return slots

    modern = layout(include_forced=False)
    if n_values is not None and n_values != len(modern):
        legacy = layout(include_forced=True)
        if n_values == len(legacy):
            return legacy
    return modern


def _widget_slots(info: Mapping[str, Any], ui_node: Mapping[str, Any], n_values: int | None) -> list[str | None]:
    """Name each position of ``widgets_values`` (None for values that are not node inputs)."""
    return [name for name, _ in _widget_layout(info, ui_node, n_values)]


#: File names in a combo (models, input images) depend on the install, not on the workflow.
FILE_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft",
                           ".png", ".jpg", ".jpeg", ".webp", ".gif"})


def widget_value_problems(info: Mapping[str, Any], name: str, value: Any) -> list[str]:
    """What is wrong with `value` for the widget input `name` of a node (``/object_info`` entry).

    Checks the type (INT, FLOAT, BOOLEAN, STRING), min/max, and that a combo value is one of its
    options; a file name missing from a combo is allowed (the user's install decides which models
    and images exist, and the frontend offers a workflow's downloads). Returns readable problems
    that start with the input name, [] when the value fits.
    """
    spec = _input_spec(info, name)
    if spec is None:
        return [f"{name!r}: no such input"]
    stype, opts = _spec_type(spec), _spec_options(spec)
    if _is_combo(stype):
        options = stype if isinstance(stype, list) else list(opts.get("options") or [])
        if value in options or (isinstance(value, str) and Path(value).suffix.lower() in FILE_SUFFIXES):
            return []
        return [f"{name!r}: {value!r} is not one of the options {options}"]
    kinds = {"INT": (int,), "FLOAT": (int, float), "BOOLEAN": (bool,), "STRING": (str,)}.get(stype)
    if kinds is None:
        return []  # a socket type converted to a widget by some extension: nothing to check
    if not isinstance(value, kinds) or (isinstance(value, bool) and stype != "BOOLEAN"):
        return [f"{name!r}: {value!r} is not {stype}"]
    if stype in ("INT", "FLOAT"):
        low, high = opts.get("min"), opts.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{name!r}: {value!r} is outside {stype} [{low}, {high}]"]
    return []


def widget_values_by_name(info: Mapping[str, Any], ui_node: Mapping[str, Any]) -> JSON:
    """A node's positional ``widgets_values`` read as {input name: value} (UI-only slots left out)."""
    values = ui_node.get("widgets_values") or []
    return {name: v for name, v in zip(_widget_slots(info, ui_node, len(values)), values) if name is not None}


def widgets_values_from_names(
    info: Mapping[str, Any], ui_node: Mapping[str, Any], named: Mapping[str, Any]
) -> tuple[list[Any], list[str]]:
    """The positional ``widgets_values`` the frontend would save for values given by input name.

    UI-only slots get the frontend's value ("fixed", "image", ...). Also returns the problems: a
    widget without a value, a name that is no widget, and every :func:`widget_value_problems`.
    Giving values by name is what makes a schema change (two inputs swapped) show up.
    """
    layout = _widget_layout(info, ui_node, None)
    widget_names = [n for n, _ in layout if n is not None]
    problems = [f"{n!r}: no value given" for n in widget_names if n not in named]
    problems += [f"{n!r}: not a widget input" for n in named if n not in widget_names]
    for n in widget_names:
        if n in named:
            problems += widget_value_problems(info, n, named[n])
    return [named.get(n) if n is not None else ui_value for n, ui_value in layout], problems


def _widget_inputs(info: Mapping[str, Any], ui_node: Mapping[str, Any]) -> JSON:
    """Map a node's ``widgets_values`` onto input names."""
    values = ui_node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, Mapping):  # some custom-node frontends save widgets by name
        return {k: v for k, v in values.items() if _input_spec(info, k) is not None}
    out: JSON = {}
    for name, value in zip(_widget_slots(info, ui_node, len(values)), values):
        if name is not None and value is not None:
            # The frontend wraps list values so the server does not mistake them for links.
            out[name] = {"__value__": value} if isinstance(value, list) else value
    return out


class _Resolver:
    """Follows a link back to what actually feeds it, through reroutes and bypassed nodes."""

    def __init__(self, nodes: Mapping[str, JSON], links: Mapping[int, _Link]):
        self.nodes = nodes
        self.links = links

    def source(self, link_id: int | None, seen: frozenset[str] = frozenset()) -> tuple[str, Any] | None:
        """Return ``("link", [node_id, slot])``, ``("value", literal)`` or None (unconnected)."""
        if link_id is None:
            return None
        link = self.links.get(int(link_id))
        if link is None:
            raise WorkflowError(f"link {link_id} is referenced by node {self._user_of(link_id)} but not in links[]")
        node = self.nodes.get(link.from_id)
        if node is None:
            raise WorkflowError(f"link {link.id} starts at node {link.from_id}, which does not exist")
        if link.from_id in seen:
            raise WorkflowError(f"link {link.id}: cycle through reroute/bypassed node {link.from_id}")
        seen = seen | {link.from_id}
        ntype, mode = node.get("type"), node.get("mode", MODE_ALWAYS)
        if ntype == "Reroute":
            inputs = node.get("inputs") or []
            return self.source(inputs[0].get("link") if inputs else None, seen)
        if ntype == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            return self._through_bypass(node, link, seen)
        return ("link", [link.from_id, link.from_slot])

    def _through_bypass(self, node: Mapping[str, Any], link: _Link, seen: frozenset[str]) -> tuple[str, Any] | None:
        """A bypassed node passes on its input of the same type: same slot index first, then any."""
        outputs = node.get("outputs") or []
        out_type = outputs[link.from_slot].get("type") if link.from_slot < len(outputs) else None
        out_type = out_type if out_type is not None else link.type
        inputs = node.get("inputs") or []
        for index in [link.from_slot, *range(len(inputs))]:
            if index < len(inputs) and inputs[index].get("type") == out_type:
                return self.source(inputs[index].get("link"), seen)
        return None

    def _user_of(self, link_id: int) -> str:
        for nid, node in self.nodes.items():
            if any(e.get("link") == link_id for e in node.get("inputs") or []):
                return nid
        return "?"


def _check_supported(workflow: Mapping[str, Any], nodes: Mapping[str, JSON], object_info: Mapping[str, Any]) -> None:
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    subgraph_ids = {str(sg.get("id")) for sg in subgraphs if isinstance(sg, Mapping)}
    for nid, node in nodes.items():
        ntype = node.get("type")
        if ntype in VIRTUAL_NODE_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_MUTED, MODE_BYPASS):
            continue
        if ntype in subgraph_ids:
            raise WorkflowError(f"node {nid}: subgraph {ntype!r} is not supported; unpack it in the editor first")
        if ntype not in object_info:
            raise WorkflowError(
                f"node {nid}: unknown node type {ntype!r} (not in /object_info: missing custom node or IMPORT FAILED?)"
            )


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> JSON:
    """Convert a UI-format workflow into an API prompt ``{id: {class_type, inputs, _meta}}``.

    Muted nodes (mode 2) are dropped; bypassed nodes (mode 4) are dropped and their consumers
    rewired to the bypassed node's input of the same type; Note / MarkdownNote are ignored;
    Reroute and PrimitiveNode are resolved into their consumers.
    """
    nodes = _parse_nodes(workflow)
    links = _parse_links(workflow)
    _check_supported(workflow, nodes, object_info)
    resolver = _Resolver(nodes, links)

    prompt: JSON = {}
    for nid, node in nodes.items():
        ntype = node.get("type")
        if ntype in VIRTUAL_NODE_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_MUTED, MODE_BYPASS):
            continue
        info = object_info[ntype]
        inputs = _widget_inputs(info, node)
        for entry in node.get("inputs") or []:
            src = resolver.source(entry.get("link"))
            if src is not None:
                inputs[_ui_input_name(entry)] = src[1]
        title = node.get("title") or info.get("display_name") or ntype
        prompt[nid] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": title}}
    return prompt


# --------------------------------------------------------------------------------------------
# static validation
# --------------------------------------------------------------------------------------------


def _type_set(t: Any) -> set[str] | None:
    """Normalise a socket type for comparison; None means "anything" (``*`` or unknown)."""
    if t is None or t == "*" or t == "":
        return None
    if _is_combo(t):
        return {"COMBO"}
    return {part.strip() for part in str(t).split(",") if part.strip()}


def _types_match(a: Any, b: Any) -> bool:
    """Socket compatibility as the editor allows it: equal, wildcard, or overlapping unions."""
    sa, sb = _type_set(a), _type_set(b)
    return sa is None or sb is None or bool(sa & sb)


def _fmt(t: Any) -> str:
    return "COMBO" if isinstance(t, list) else repr(t)


def ui_workflow_errors(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any], *, strict_widget_count: bool = True
) -> list[str]:
    """Statically check a UI-format workflow against ``/object_info``; return readable problems.

    Catches what the server would reject only after conversion, with the UI's node ids: unknown
    node types, links whose type disagrees with either end, links to missing nodes or slots,
    unconnected required sockets, ``widgets_values`` of the wrong length, and every widget value
    read by its input name against that input's type, range or options (:func:`widget_value_problems`).

    Too few widget values always count (every later value would land on the wrong input). Too
    many count only with ``strict_widget_count``: right for this pack's own workflows (a value
    left over from a removed widget), but some frontend extensions append display-only values
    (3D viewers, GetImageSize's read-out), so pass False for third-party files.
    """
    errors: list[str] = []
    nodes = _parse_nodes(workflow)
    links = _parse_links(workflow)
    active = {nid for nid, n in nodes.items() if n.get("mode", MODE_ALWAYS) not in (MODE_MUTED, MODE_BYPASS)}

    for nid, node in nodes.items():
        ntype = node.get("type")
        if ntype in VIRTUAL_NODE_TYPES:
            continue
        info = object_info.get(ntype)
        if info is None:
            errors.append(f"node {nid}: unknown node type {ntype!r}")
            continue
        values = node.get("widgets_values")
        if isinstance(values, list):
            slots = _widget_slots(info, node, len(values))
            if len(values) < len(slots) or (strict_widget_count and len(values) > len(slots)):
                names = [s or "(extra)" for s in slots]
                errors.append(
                    f"node {nid} ({ntype}): {len(values)} widget values, expected {len(slots)} {names}"
                )
            else:  # with the count wrong, positions name nothing: values are read by name only when it is right
                for name, value in zip(slots, values):
                    if name is not None and value is not None:
                        errors += [f"node {nid} ({ntype}): widget {p}"
                                   for p in widget_value_problems(info, name, value)]
        if nid in active:
            linked = {_ui_input_name(e) for e in node.get("inputs") or [] if e.get("link") is not None}
            widget_slots = set(_widget_slots(info, node, None))
            for name in _input_order(info, "required"):
                if name not in linked and name not in widget_slots:
                    errors.append(f"node {nid} ({ntype}): required input {name!r} is not connected")

    for link in links.values():
        src, dst = nodes.get(link.from_id), nodes.get(link.to_id)
        where = f"link {link.id} ({link.from_id}:{link.from_slot} -> {link.to_id}:{link.to_slot})"
        if src is None or dst is None:
            errors.append(f"{where}: node {link.from_id if src is None else link.to_id} does not exist")
            continue
        src_info, dst_info = object_info.get(src.get("type")), object_info.get(dst.get("type"))
        if src_info is not None:
            outs = src_info.get("output") or []
            if link.from_slot >= len(outs):
                errors.append(f"{where}: {src.get('type')} has no output slot {link.from_slot}")
            elif not _types_match(link.type, outs[link.from_slot]):
                errors.append(
                    f"{where}: link type {_fmt(link.type)} but {src.get('type')} output "
                    f"{link.from_slot} is {_fmt(outs[link.from_slot])}"
                )
        dst_inputs = dst.get("inputs") or []
        if link.to_slot >= len(dst_inputs):
            errors.append(f"{where}: {dst.get('type')} has no input slot {link.to_slot}")
            continue
        entry = dst_inputs[link.to_slot]
        if entry.get("link") != link.id:
            errors.append(f"{where}: input slot {link.to_slot} of node {link.to_id} points at link {entry.get('link')}")
        if dst_info is not None:
            name = _ui_input_name(entry)
            spec = _input_spec(dst_info, name)
            if spec is None:
                errors.append(f"{where}: {dst.get('type')} has no input named {name!r}")
            elif not _types_match(link.type, _spec_type(spec)):
                errors.append(
                    f"{where}: link type {_fmt(link.type)} but {dst.get('type')} input {name!r} "
                    f"is {_fmt(_spec_type(spec))}"
                )
    return errors


# -- API prompt editing ---------------------------------------------------------------------------


def node_id(prompt: Mapping[str, Any], class_type: str) -> str:
    """The id of the one node of `class_type` in an API prompt."""
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    if len(ids) != 1:
        raise WorkflowError(f"expected exactly one {class_type} node, found {len(ids)}: {ids}")
    return ids[0]


def set_inputs(prompt: dict[str, Any], class_type: str, **inputs: Any) -> None:
    """Override inputs of the one node of `class_type` (e.g. steps, sizes, file names)."""
    prompt[node_id(prompt, class_type)]["inputs"].update(inputs)
