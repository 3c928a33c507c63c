"""ComfyUI-EZIGen: subject-driven generation with EZIGen (arXiv 2409.08091) for ComfyUI."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_LIST, register_model_folder

register_model_folder()

# The frontend's node docs panel reads web/docs/<NodeId>.md (served under /extensions/<this folder>/).
WEB_DIRECTORY = "./web"


class EZIGenExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> EZIGenExtension:
    return EZIGenExtension()
