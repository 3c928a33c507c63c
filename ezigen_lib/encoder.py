"""The EZIGEN_ENCODER bundle: the frozen UNet that encodes subjects plus the trained adapters."""
from __future__ import annotations

import dataclasses
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
                 name: str | None = None, residual: str | None = None) -> EZIGenEncoder:
    """`shown`: how messages name the adapter file (see `load_adapter`); `name`: the file as its folder's
    dropdown lists it (by default the file name), recorded in the subjects this encoder makes; `residual`:
    overrides the file's adapter residual (None: the file's, which weights cannot show)."""
    weights = load_adapter(adapter_path, shown)
    info = weights.info if residual is None else dataclasses.replace(weights.info, residual=residual)
    family = require_adapter_fits(encoder_model, info.widths, "encoder model", info.family)
    made_for = info.family or ("SD20" if info.base_model.startswith("sd2") else None)
    if made_for is not None and family.name != made_for:  # same layers (e.g. SD1.5 and SD2.1), other features
        log.warning("EZIGen: the adapter was trained on %s (%s) features but the encoder model is %s; "
                    "use the %s checkpoint as the encoder for faithful results.",
                    info.base_model, made_for, family.name, info.base_model)
    return EZIGenEncoder(model=encoder_model, adapter=adapter_patcher(weights.state_dict, info),
                         info=info, name=name if name is not None else Path(adapter_path).name)
