"""ComfyUI node schemas: thin translations between ComfyUI types and ezigen_lib."""
from .edit import EZIGenEdit
from .folders import register_model_folder
from .loaders import EZIGenLoadCLIPVision, EZIGenLoadEncoder
from .patch import EZIGenPatchUNetAttention
from .sampler import EZIGenSampler
from .subject import EZIGenEncodeSubject, EZIGenSubjectPrompt
from .subject_files import EZIGenLoadSubject, EZIGenSaveSubject

NODE_LIST = [EZIGenLoadEncoder, EZIGenEncodeSubject, EZIGenPatchUNetAttention, EZIGenSampler,
             EZIGenLoadCLIPVision, EZIGenEdit, EZIGenSaveSubject, EZIGenLoadSubject,
             EZIGenSubjectPrompt]

__all__ = ["NODE_LIST", "register_model_folder"]
