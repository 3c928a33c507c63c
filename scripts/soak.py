"""Soak benchmark: the shipped workflows, N prompts each at small sizes, back to back on the real server,
printing the server's resident memory (RSS) after every prompt and its slope after warm-up.

    python scripts/soak.py [--rounds 10] [--warmup 1] [--size 64]

Without a models folder it uses the random-weight stand-ins of the test suite (.cache/models, made on
first use by scripts/make_checkpoints.py). ezigen_flux_to_edit.json needs FLUX weights; its EZIGen
part is ezigen_edit.json, soaked here.
A short version runs in the test suite (tests/e2e/test_soak.py) and bounds the growth.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from inprocess import REPO  # noqa: E402 - and ezigen_lib importable

from comfy_host import ComfyServer, set_inputs  # noqa: E402

WORKFLOWS = ("ezigen_single_pass.json", "ezigen_generate.json", "ezigen_edit.json")
MIB = 1024 * 1024


@dataclass
class Sample:
    index: int
    workflow: str
    seconds: float
    rss_mib: float


@dataclass
class SoakResult:
    samples: list[Sample] = field(default_factory=list)
    warmup_prompts: int = 0

    @property
    def measured(self) -> list[Sample]:
        return self.samples[self.warmup_prompts:]

    def slope_mib_per_prompt(self) -> float:
        """Least-squares slope of RSS against the prompt index after warm-up, per workflow (each workflow
        holds its own working set, so mixing them would read their sawtooth as a trend); the largest."""
        slopes = []
        for workflow in dict.fromkeys(s.workflow for s in self.measured):
            points = [(s.index, s.rss_mib) for s in self.measured if s.workflow == workflow]
            if len(points) < 2:
                continue
            mean_x = sum(x for x, _ in points) / len(points)
            mean_y = sum(y for _, y in points) / len(points)
            var = sum((x - mean_x) ** 2 for x, _ in points)
            slopes.append(sum((x - mean_x) * (y - mean_y) for x, y in points) / var)
        return max(slopes, default=0.0)

    def growth_mib(self) -> float:
        """Largest RSS after warm-up minus the RSS at the end of warm-up."""
        if not self.measured:
            return 0.0
        base = self.samples[self.warmup_prompts - 1].rss_mib if self.warmup_prompts else self.measured[0].rss_mib
        return max(s.rss_mib for s in self.measured) - base

    def table(self) -> str:
        rows = [f"{'#':>3}  {'workflow':28s} {'s':>7} {'RSS MiB':>9}"]
        for s in self.samples:
            mark = " (warm-up)" if s.index < self.warmup_prompts else ""
            rows.append(f"{s.index:>3}  {s.workflow:28s} {s.seconds:7.1f} {s.rss_mib:9.1f}{mark}")
        rows.append(f"slope after warm-up (largest of the workflows'): {self.slope_mib_per_prompt():+.2f} MiB/prompt "
                    f"over {len(self.measured)} prompts; growth {self.growth_mib():+.1f} MiB")
        return "\n".join(rows)


def small_prompt(server: ComfyServer, workflow: str, seed: int, size: int) -> dict:
    """The shipped workflow as an API prompt on the stand-ins: `size` px, few steps, one loop."""
    from ezigen_prompts import api_prompt, small

    prompt = small(api_prompt(server, workflow), seed, size)
    kinds = {node["class_type"] for node in prompt.values()}
    if "KSampler" in kinds:
        set_inputs(prompt, "KSampler", seed=seed, steps=2)
    if "EZIGenSampler" in kinds:
        set_inputs(prompt, "EZIGenSampler", seed=seed, steps=2, loops=1)
    if "EZIGenEdit" in kinds:
        set_inputs(prompt, "EZIGenEdit", seed=seed, steps=2, loops=1, short_side=size)
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"soak_{seed}_{nid}"
    return prompt


def server_rss_mib(server: ComfyServer) -> float:
    """RSS of the ComfyUI process and any children it started."""
    proc = psutil.Process(server._proc.pid)  # noqa: SLF001 - the harness keeps the Popen private
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / MIB


def soak(server: ComfyServer, rounds: int, warmup_rounds: int = 1, size: int = 64,
         workflows: tuple[str, ...] = WORKFLOWS, log=print) -> SoakResult:
    """`rounds` x every workflow, back to back (a fresh seed each, so nothing comes from the cache)."""
    result = SoakResult(warmup_prompts=warmup_rounds * len(workflows))
    rng = random.Random(0)
    for r in range(rounds):
        for workflow in workflows:
            seed = rng.randrange(1, 2**31)
            started = time.perf_counter()
            server.run(small_prompt(server, workflow, seed, size))
            sample = Sample(len(result.samples), workflow, time.perf_counter() - started, server_rss_mib(server))
            result.samples.append(sample)
            log(f"{sample.index:>3}  {workflow:28s} {sample.seconds:7.1f} s  RSS {sample.rss_mib:9.1f} MiB", flush=True)
    return result


def demo_server(base: Path) -> ComfyServer:
    """The test suite's server layout: this pack, the stand-in checkpoints, the demo inputs."""
    import make_checkpoints
    from ezigen_lib.host import bootstrap_inprocess
    from demo_inputs import write_source_image, write_subject_image

    bootstrap_inprocess(base / "inprocess")
    models = make_checkpoints.make_all(REPO / ".cache" / "models")
    server = ComfyServer(base / "comfy", custom_nodes={"ComfyUI-EZIGen": REPO}, models={
        "checkpoints": [models["sd21base"]], "ezigen": [models["ezigen"]], "clip_vision": [models["clip_b32"]]})
    for write in (write_subject_image, write_source_image):
        write(server.base_dir / "input")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="prompts of each workflow (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds not counted in the slope (default 1)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ezigen-soak-") as tmp:
        base = Path(tmp)
        (base / "comfy" / "input").mkdir(parents=True)
        with demo_server(base) as server:
            print(f"idle RSS {server_rss_mib(server):.1f} MiB; {args.rounds} rounds of {', '.join(WORKFLOWS)}")
            result = soak(server, args.rounds, args.warmup, args.size)
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
