"""Installing the pack the way a user does: the real ComfyUI-Manager (pip package `comfyui_manager`, ComfyUI >= 0.8.0).

The repository (a snapshot of its tracked files) is served as a git repository over HTTP on the loopback
interface, like a git host would; the Manager's own "Install via Git URL" route clones it into
custom_nodes/. ComfyUI is then restarted, the nodes and workflows are checked, and the pack is disabled and
uninstalled through the Manager's queue.

Security: ComfyUI-Manager 4.3 (the newest, which this host installs) refuses install-by-URL unless
`allow_git_url_install = true` is in user/__manager/config.ini (and ComfyUI listens on loopback), whatever the
`security_level` (4.0 wanted `security_level = normal-` instead); a user sets the flag, which is what this test
does after checking the refusal at the default settings. `network_mode = offline` keeps the Manager from
fetching its online node lists (this machine has no network; with network it is not needed).
"""
from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from comfy_host import ComfyServer
from ezigen_lib.host import comfy_root

from test_pack import OUR_NODES, tracked_files

REPO = Path(__file__).resolve().parents[2]
PACK = "ComfyUI-EZIGen"
HAS_MANAGER = (comfy_root() / "manager_requirements.txt").is_file()

pytestmark = pytest.mark.skipif(
    not HAS_MANAGER, reason="this host has no pip-installed ComfyUI-Manager (ComfyUI 0.28.2 has: make test HOST=0.28.2)")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def git_url(tmp_path):
    """The pack's tracked files as a git repository served over plain HTTP (git's dumb protocol) on 127.0.0.1."""
    work = tmp_path / "snapshot"
    for name in tracked_files():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "snapshot under test", cwd=work)
    served = tmp_path / "git"
    served.mkdir()
    # at .../ComfyUI-EZIGen like a GitHub URL (the Manager names an unknown pack by the URL's last part)
    git("clone", "-q", "--bare", str(work), str(served / PACK), cwd=tmp_path)
    git("update-server-info", cwd=served / PACK)
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{PACK}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def manager_config(base: Path, allow_git_url_install: bool) -> None:
    """The Manager's default security level, with or without the flag a user sets for install-by-URL."""
    config = base / "user" / "__manager" / "config.ini"
    config.parent.mkdir(parents=True, exist_ok=True)
    flag = f"allow_git_url_install = {str(allow_git_url_install).lower()}\n"
    config.write_text(f"[default]\nsecurity_level = normal\n{flag}network_mode = offline\n")


def manager_server(base: Path) -> ComfyServer:
    return ComfyServer(base, extra_args=["--enable-manager", "--enable-manager-legacy-ui"])


def wait_for_queue(server: ComfyServer, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/v2/manager/queue/status", timeout=30).json()
        if not status.get("is_processing") and status.get("done_count", 0) >= status.get("total_count", 0):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Manager queue still busy: {status}\n{server.log_tail()}")


def queue_batch(server: ComfyServer, action: str, item: dict) -> None:
    """One action through the Manager's task queue as its UI sends it (4.3 has one batch route that also starts
    the queue; 4.0's per-action routes are gone), then wait until the queue has run it."""
    answer = requests.post(f"{server.url}/v2/manager/queue/batch", json={action: [item], "batch_id": uuid.uuid4().hex},
                           timeout=30)
    assert answer.status_code == 200 and answer.json() == {"failed": []}, (answer.status_code, answer.text)
    wait_for_queue(server)


def pack_log_lines(server: ComfyServer) -> list[str]:
    return [line for line in server.log_text().splitlines() if f"custom_nodes/{PACK}" in line]


def test_the_manager_is_the_newest_release():
    """Users install the newest Manager (4.3 in late 2026), not the 4.0.4 that ComfyUI 0.8.0 names or the 4.2.2 of 0.28.2."""
    from importlib.metadata import version

    from packaging.version import Version

    assert Version(version("comfyui-manager")) >= Version("4.3")


def test_install_by_git_url_restart_disable_uninstall(tmp_path, git_url):
    base = tmp_path / "base"
    pack_dir = base / "custom_nodes" / PACK

    manager_config(base, allow_git_url_install=False)  # the Manager's defaults
    with manager_server(base) as server:
        assert not OUR_NODES & set(server.object_info())
        refused = requests.post(f"{server.url}/v2/customnode/install/git_url", data=git_url, timeout=60)
        assert refused.status_code == 403 and not pack_dir.exists()
        assert refused.json() == {"reason": "allow_git_url_install"}  # the flag a user must set

    manager_config(base, allow_git_url_install=True)  # what a user sets to install from a URL
    with manager_server(base) as server:
        installed = requests.post(f"{server.url}/v2/customnode/install/git_url", data=git_url, timeout=300)
        assert installed.status_code == 200, server.log_tail()
        assert (pack_dir / "__init__.py").is_file() and (pack_dir / ".git").is_dir()
        assert not OUR_NODES & set(server.object_info())  # new nodes arrive with the restart

    with manager_server(base) as server:  # restart
        assert OUR_NODES <= set(server.object_info(refresh=True))
        lines = pack_log_lines(server)
        assert lines and not [line for line in lines if "IMPORT FAILED" in line], lines
        templates = requests.get(f"{server.url}/api/workflow_templates", timeout=30).json()
        shipped = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        assert sorted(templates.get(PACK, [])) == shipped, templates
        one = requests.get(f"{server.url}/api/workflow_templates/{PACK}/ezigen_edit.json", timeout=30)
        assert one.status_code == 200 and any(n["type"] == "EZIGenEdit" for n in one.json()["nodes"])
        queue_batch(server, "disable", {"id": PACK, "version": "unknown", "files": [git_url], "ui_id": "disable-ezigen"})
    assert not pack_dir.exists()
    disabled = base / "custom_nodes" / ".disabled" / PACK
    assert disabled.is_dir(), sorted(p.name for p in (base / "custom_nodes").rglob("*") if p.is_dir())[:20]

    with manager_server(base) as server:  # restart: disabled
        info = server.object_info(refresh=True)
        assert not OUR_NODES & set(info) and "KSampler" in info  # gone, ComfyUI healthy
        assert PACK not in requests.get(f"{server.url}/api/workflow_templates", timeout=30).json()
        queue_batch(server, "uninstall",
                    {"id": PACK, "version": "unknown", "files": [git_url], "ui_id": "uninstall-ezigen"})
    assert not disabled.exists() and not pack_dir.exists()

    with manager_server(base) as server:  # restart: uninstalled
        info = server.object_info(refresh=True)
        assert not OUR_NODES & set(info) and "KSampler" in info
        assert not [line for line in server.log_text().splitlines() if "IMPORT FAILED" in line and PACK in line]
