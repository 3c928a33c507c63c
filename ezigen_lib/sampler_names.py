"""Which of the host's sampler names the EZIGen Sampler and EZIGen Edit take.

Both nodes offer the host's own list (``comfy.samplers.KSampler.SAMPLERS``, Edit ``KSAMPLER_NAMES``), and
cores add names (0.8.0 added ``exp_heun_2_x0``; 0.38.1 ``cfgpp_ud10_ab``). EZIGen runs a sampler in ways
a stock KSampler never does: the Sampler restarts it mid-schedule for every loop from a latent it places
itself, and Edit steps it one interval at a time with the background put back after each step. So a name
is taken only when it was checked that way: every name of the tested hosts (0.3.75, 0.8.0, 0.28.2) is, and
tests/unit/test_samplers.py runs each through both nodes on each host. A name this release does not know
is refused before sampling, with why and what to pick, instead of risking a silently wrong picture.
"""
from __future__ import annotations

import comfy.samplers

from .input_checks import InputValueError
from .core_details import TESTED_RELEASES, comfyui_version

# Every name of comfy.samplers.KSampler.SAMPLERS on ComfyUI 0.3.75, 0.8.0 and 0.28.2 (the same 44), the test hosts.
CHECKED_SAMPLERS = frozenset({
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
})
# Samplers that are not ComfyUI's k-diffusion functions (KSAMPLER_NAMES) cannot be stepped one interval at a time.
NOT_STEPPABLE = frozenset({"ddim", "uni_pc", "uni_pc_bh2"})
SUGGESTION = "ddpm (the reference's sampler), euler or dpmpp_2m"

SAMPLER = "EZIGen Sampler"
EDIT = "EZIGen Edit"
_HOW = {SAMPLER: "restarts it mid-schedule for every refinement loop",
        EDIT: "steps it one interval at a time and puts the background back after every step"}


def host_samplers(node: str) -> list[str]:
    """The names the host offers `node`: Edit only ComfyUI's k-diffusion samplers (KSAMPLER_NAMES)."""
    return list(comfy.samplers.KSAMPLER_NAMES if node == EDIT else comfy.samplers.KSampler.SAMPLERS)


def sampler_problem(name: str, node: str) -> str | None:
    """Why `node` (SAMPLER or EDIT) refuses the sampler `name`, or None when it takes it."""
    if node == EDIT and name in NOT_STEPPABLE:
        return (f"{node} cannot use the sampler {name!r}: Edit {_HOW[EDIT]}, and {name} is not one of ComfyUI's "
                f"k-diffusion samplers that can be stepped so. Pick {SUGGESTION}.")
    if name not in host_samplers(node):
        return (f"{node}: ComfyUI {comfyui_version()} has no sampler {name!r}; pick {SUGGESTION} (or another of: "
                f"{', '.join(host_samplers(node))}).")
    if name not in CHECKED_SAMPLERS:
        return (f"{node} does not take the sampler {name!r}: it is newer than this release of ComfyUI-EZIGen, which "
                f"checked every sampler of ComfyUI {TESTED_RELEASES} but not this one ({node} {_HOW[node]}, which a "
                f"new sampler may not survive without a visible error). Pick {SUGGESTION}, or update ComfyUI-EZIGen.")
    return None


def require_sampler(name: str, node: str) -> None:
    """Refuse, before any sampling, a sampler `node` does not take (see `sampler_problem`)."""
    problem = sampler_problem(name, node)
    if problem is not None:
        raise InputValueError(problem)
