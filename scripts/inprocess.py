"""The in-process ComfyUI set-up every developer script shares (benchmarks, the output recorder).

A script run as ``python scripts/NAME.py`` has scripts/ on its path already (this module, the harness
beside it); this makes ``ezigen_lib`` importable too and starts ComfyUI's modules in a throw-away base
folder, removed at exit. Scripts import nothing of ComfyUI before `start`.
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # ezigen_lib; appended: the repo's nodes/ must not shadow ComfyUI's nodes.py


def start(prefix: str, *, cpu: bool | None = None) -> Path:
    """Bootstrap ComfyUI in this process with models/, output/ and user/ in a fresh temporary folder, and
    return that folder (scripts put their own scratch files in it). `cpu`: None uses the GPU when torch
    sees one (benchmarks), True forces the CPU (the recorder, whose numbers must not depend on the machine)."""
    from ezigen_lib.host import bootstrap_inprocess

    base = Path(tempfile.mkdtemp(prefix=f"ezigen-{prefix}-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    bootstrap_inprocess(base / "comfy", cpu=cpu)
    return base


def stand_ins(kinds: tuple[str, ...], measured: str) -> dict[str, Path]:
    """Random-weight stand-in files of `kinds` (made once, cached in .cache/models), said loudly on stderr: a
    benchmark without real files measures `measured`, never pictures."""
    import make_checkpoints  # noqa: PLC0415 - after `start`: it imports ComfyUI

    print(f"[benchmark] RANDOM-WEIGHT STAND-INS ({measured} is what is measured, not pictures)", file=sys.stderr)
    return make_checkpoints.make_all(only=kinds)


def add_model_arguments(parser: argparse.ArgumentParser, base: str = "SD2.1-base") -> None:
    """--checkpoint and --adapter, the real files a benchmark runs on (a stand-in for either not given)."""
    parser.add_argument("--checkpoint", type=Path, help=f"{base} checkpoint (default: random stand-in)")
    parser.add_argument("--adapter", type=Path, help="EZIGen adapter file or folder (default: random stand-in)")


@dataclass
class Bench:
    """One loaded SD2.1-base checkpoint and EZIGen encoder, as a workflow's loaders give them."""
    model: object
    clip: object
    vae: object
    encoder: object
    checkpoint: Path

    def text(self, prompt: str):
        """CLIPTextEncode."""
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))

    def subject(self, resolution: int):
        """A random subject image encoded at `resolution` with the prompt 'a dog' (Encode Subject, with the
        prompt's pooled text as Encode Subject passes it: SDXL's subject pass needs it, SD1/SD2 ignore it)."""
        import torch  # noqa: PLC0415

        from ezigen_lib.capture import encode_subject, subject_pooled  # noqa: PLC0415

        with torch.inference_mode():
            prompt = self.text("a dog")
            return encode_subject(self.model, self.vae, prompt[0][0], torch.rand(1, resolution, resolution, 3),
                                  None, 0, resolution, self.encoder.info.widths, pooled=subject_pooled(prompt))


def load_bench(args: argparse.Namespace, measured: str = "speed", kinds: tuple[str, str] = ("sd21base", "ezigen"),
               model_options: dict | None = None) -> Bench:
    """`args.checkpoint` and `args.adapter` loaded (after `start`), stand-ins of `kinds` (checkpoint, adapter)
    for those not given; `model_options` go to ComfyUI's checkpoint loader (e.g. {"dtype": torch.bfloat16})."""
    import comfy.sd  # noqa: PLC0415

    from ezigen_lib.encoder import load_encoder  # noqa: PLC0415

    checkpoint, adapter = args.checkpoint, args.adapter
    if checkpoint is None or adapter is None:
        made = stand_ins(kinds, measured)
        checkpoint, adapter = checkpoint or made[kinds[0]], adapter or made[kinds[1]]
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), model_options=model_options or {})
    return Bench(model, clip, vae, load_encoder(adapter, model), Path(checkpoint))
