"""The EZIGEN_ENCODER bundle: the frozen UNet that encodes subjects plus the trained adapters."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.model_patcher

from .adapter import AdapterSet
from .checkpoint import AdapterInfo, load_adapter
from .family import require_adapter_fits

log = logging.getLogger("EZIGen")

# Newer cores swap in a dynamic-VRAM patcher class under this name; 0.3.75 has only ModelPatcher.
Patcher = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


@dataclass(frozen=True)
class EZIGenEncoder:
    model: object  # ModelPatcher of the frozen base UNet (never patched in place)
    adapter: object  # ModelPatcher around an AdapterSet, so model_management loads/offloads it
    info: AdapterInfo
    name: str | None = None  # the adapter file as Load EZIGen Encoder lists it: saved subjects record it

    def models(self) -> list:
        """The ModelPatchers this bundle holds, for ComfyUI's model tracking (what patches expose
        through ``models()``): load them with ``comfy.model_management.load_models_gpu``."""
        return [self.model, self.adapter]


def adapter_patcher(state_dict: dict, info: AdapterInfo):
    """Wrap the adapters in their own ModelPatcher; weights stay in file dtype on the offload device."""
    dtype = state_dict["blocks.0.to_q.weight"].dtype
    module = AdapterSet(info.widths, info.head_dim, dtype=dtype,
                        device=comfy.model_management.unet_offload_device(), residual=info.residual)
    module.load_state_dict(state_dict, strict=True)
    module.eval().requires_grad_(False)
    return Patcher(module, load_device=comfy.model_management.get_torch_device(),
                   offload_device=comfy.model_management.unet_offload_device())


def load_encoder(adapter_path: str | os.PathLike, encoder_model, shown: str | None = None,
                 name: str | None = None) -> EZIGenEncoder:
    """`shown`: how messages name the adapter file (see `load_adapter`); `name`: the file as its folder's
    dropdown lists it (by default the file name), recorded in the subjects this encoder makes."""
    weights = load_adapter(adapter_path, shown)
    family = require_adapter_fits(encoder_model, weights.info.widths, "encoder model")
    if weights.info.base_model.startswith("sd2") and family.name != "SD20":
        log.warning("EZIGen: the adapter was trained on %s features but the encoder model is %s; "
                    "use the SD2.1-base checkpoint as the encoder for faithful results.",
                    weights.info.base_model, family.name)
    return EZIGenEncoder(model=encoder_model, adapter=adapter_patcher(weights.state_dict, weights.info),
                         info=weights.info, name=name if name is not None else Path(adapter_path).name)
