"""EZIGen method library: everything that is not ComfyUI node glue.

Modules that do not need the ComfyUI runtime (`slots`, `checkpoint`, `convert`) import only
torch and safetensors, so the converter runs outside ComfyUI.
"""
