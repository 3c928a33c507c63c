"""The pack as the Comfy registry and the frontend's Manager see it.

- `requires-comfyui` is read with node-semver's `satisfies` (the frontend's Manager extension does so and reports
  a conflict when it is false): it must accept the releases people run, not only the ones CI tests.
- `comfy node validate` (comfy-cli, what publishing runs) must report nothing.
- `comfy node pack` makes the zip the registry serves (tracked files minus .comfyignore); the registry unpacks it
  into custom_nodes/<registry id>: it must hold what a user needs and nothing of the test machinery.

comfy-cli and node-semver live in .venv-tools (scripts/setup_env.sh), apart from ComfyUI's packages.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import requests

from comfy_host import ComfyServer, set_inputs
from ezigen_prompts import ADAPTER, SD21, api_prompt, images_of, small

from test_pack import OUR_NODES, tracked_files

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".venv-tools"
COMFY_CLI = TOOLS / "bin" / "comfy"
SEMVER = TOOLS / "node" / "node_modules" / "semver"
REGISTRY_ID = "ezigen"
# The releases CI runs the whole suite on (scripts/setup_env.sh), and the newest release people run (late 2026).
TESTED_HOSTS = ("0.3.75", "0.8.0", "0.28.2")  # oldest first
NEWEST_RELEASE = "0.38.1"
# What packs the test machinery: never in the zip a user installs.
TEST_MACHINERY = ("tests/", "scripts/", ".ci/", "Makefile")


def declared_range() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]


def node_semver(range_: str, versions: list[str]) -> dict:
    """node-semver's own answers (the npm package the frontend bundles): satisfies per version, minVersion."""
    assert SEMVER.is_dir() and shutil.which("node"), f"node and {SEMVER} are needed: run `make env` (needs npm)"
    script = ("const semver = require(process.argv[1]); const range = process.argv[2];"
              "const versions = process.argv.slice(3);"
              "const min = semver.validRange(range) ? semver.minVersion(range) : null;"
              "console.log(JSON.stringify({satisfies: Object.fromEntries(versions.map(v => [v, semver.satisfies(v, range)])),"
              " minVersion: min && min.version}));")
    out = subprocess.run(["node", "-e", script, str(SEMVER), range_, *versions], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_hosts_are_the_ones_ci_sets_up():
    hosts = re.findall(r"^\s*([0-9.]+)\)\s*venv=", (REPO / "scripts" / "setup_env.sh").read_text(), re.M)
    assert tuple(sorted(hosts, key=lambda v: tuple(map(int, v.split("."))))) == TESTED_HOSTS


def test_requires_comfyui_is_a_node_semver_range_that_takes_current_releases():
    answer = node_semver(declared_range(), [*TESTED_HOSTS, NEWEST_RELEASE, "0.3.74"])
    assert answer["satisfies"] == {"0.3.75": True, "0.8.0": True, "0.28.2": True, NEWEST_RELEASE: True,
                                   "0.3.74": False}, answer
    assert answer["minVersion"] == TESTED_HOSTS[0]  # the lower bound is the oldest release the suite runs on
    # the same check refuses the old declaration (a comma is not node-semver syntax) and an upper bound
    for old in (">=0.3.75,<=0.8.0", ">=0.3.75 <=0.8.0"):
        assert not node_semver(old, [NEWEST_RELEASE])["satisfies"][NEWEST_RELEASE]


def test_readme_states_the_tested_releases_and_the_range():
    readme = (REPO / "README.md").read_text()
    assert f'requires-comfyui = "{declared_range()}"' in readme
    supported = next(line for line in readme.splitlines() if line.startswith("**Supported ComfyUI"))
    assert all(host in supported for host in TESTED_HOSTS) and "newer" in supported, supported


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """The tracked files as a fresh git repository: what a clean clone gives `comfy node ...`."""
    work = tmp_path_factory.mktemp("registry") / "ComfyUI-EZIGen"
    for name in tracked_files():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "snapshot under test"]):
        subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=work,
                       check=True, capture_output=True)
    return work


def comfy_cli(snapshot: Path, *args: str) -> subprocess.CompletedProcess:
    """comfy-cli in the snapshot, without prompts or telemetry, its config in a scratch home."""
    assert COMFY_CLI.is_file(), f"{COMFY_CLI} is missing: run `make env` (scripts/setup_env.sh installs comfy-cli)"
    home = snapshot.parent / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NO_COLOR": "1",
           "COLUMNS": "200"}
    return subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", *args], cwd=snapshot, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_comfy_node_validate_reports_nothing(snapshot):
    done = comfy_cli(snapshot, "node", "validate")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "All validation checks passed" in output and "warning" not in output.lower(), output


@pytest.fixture(scope="module")
def node_zip(snapshot) -> Path:
    done = comfy_cli(snapshot, "node", "pack")
    assert done.returncode == 0, done.stdout + done.stderr
    return snapshot / "node.zip"


def test_the_registry_zip_holds_what_a_user_needs_and_no_test_machinery(node_zip):
    with zipfile.ZipFile(node_zip) as z:
        names = set(z.namelist())
    shipped = {n for n in tracked_files() if not n.startswith(TEST_MACHINERY)}
    assert names == shipped, (sorted(names - shipped), sorted(shipped - names))
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "docs/method.md"):
        assert needed in names
    for folder in ("nodes/", "ezigen_lib/", "web/docs/", "workflows/"):
        assert any(n.startswith(folder) for n in names), folder
    shipped_code = [n for n in names if n.endswith(".py")]
    for name in shipped_code:  # nothing shipped reaches for the machinery that is not shipped
        text = (REPO / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+(tests|comfy_host|make_checkpoints|ezigen_prompts|demo_inputs)\b",
                             text, re.M), name


def test_the_registry_zip_installs_and_runs_on_a_real_server(tmp_path, node_zip, stand_in_models):
    """Unpacked into custom_nodes/ezigen as the registry installs it: the nodes load with a clean import line, the
    workflows are templates, their docs are served and the single-pass workflow runs."""
    from demo_inputs import write_subject_image

    base = tmp_path / "base"
    pack = base / "custom_nodes" / REGISTRY_ID
    with zipfile.ZipFile(node_zip) as z:
        z.extractall(pack)
    write_subject_image(base / "input")
    models = {"checkpoints": [stand_in_models["sd21base"]], "ezigen": [stand_in_models["ezigen"]]}
    with ComfyServer(base, models=models) as server:
        info = server.object_info()
        assert OUR_NODES <= set(info), sorted(OUR_NODES - set(info))
        lines = [line for line in server.log_text().splitlines() if f"custom_nodes/{REGISTRY_ID}" in line]
        assert lines and not [line for line in lines if "IMPORT FAILED" in line], lines
        templates = requests.get(f"{server.url}/api/workflow_templates", timeout=30).json()
        assert sorted(templates.get(REGISTRY_ID, [])) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        docs = requests.get(f"{server.url}/extensions/{REGISTRY_ID}/docs/EZIGenSampler.md", timeout=30)
        assert docs.status_code == 200 and "EZIGen Sampler" in docs.text
        prompt = small(api_prompt(server, "ezigen_single_pass.json"), seed=7)
        set_inputs(prompt, "KSampler", steps=2)
        set_inputs(prompt, "SaveImage", filename_prefix="registry_zip")
        assert SD21 in str(prompt) and ADAPTER in str(prompt)
        (image,) = images_of(server, server.run(prompt))
        assert image.shape == (64, 64, 3)
        failed = [line for line in server.log_text().splitlines() if "IMPORT FAILED" in line]
        assert all(re.search(r"IMPORT FAILED: nodes_\w*audio\w*\.py", line) for line in failed), failed
