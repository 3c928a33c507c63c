"""Inputs shared by the nodes that loop (EZIGen Sampler, EZIGen Edit)."""
from __future__ import annotations

from comfy_api.latest import io

from ..ezigen_lib.autostop import DEFAULT_MAX_LOOPS, DEFAULT_MIN_LOOPS, DEFAULT_THRESHOLD
from ..ezigen_lib.input_checks import InputValueError, require_choice, require_range


def autostop_inputs(unit: str, fewest: int) -> list:
    """loops / min_loops / max_loops / sim_threshold; `unit` names what repeats ("loops" or "rounds")."""
    return [
        io.Int.Input("loops", default=-1, min=-1, max=100,
                     tooltip=f"-1 = autostop between min_loops and max_loops; n = exactly n {unit}"
                             + (" (at least 1)." if fewest else "; 0 = first pass only.")),
        io.Int.Input("min_loops", default=DEFAULT_MIN_LOOPS, min=fewest, max=100,
                     tooltip=f"Autostop: {unit} that always run (reference: 3)."),
        io.Int.Input("max_loops", default=DEFAULT_MAX_LOOPS, min=fewest, max=100,
                     tooltip=f"Autostop: most {unit} (reference: 9). Must be >= min_loops."),
        io.Float.Input("sim_threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.001,
                       tooltip=f"Autostop: stop once consecutive {unit} are at least this similar (0.99 is tuned "
                               "for CLIP ViT-B/32)."),
    ]


def similarity_chart_output(unit: str):
    return io.Image.Output(display_name="similarity_chart",
                           tooltip=f"Similarity of each of the {unit} to the round before, against the threshold.")


def require_valid_widgets(node: type[io.ComfyNode], **values) -> None:
    """Check the widget `values`, passed by input name, against the node's own schema (options, finite,
    min/max). Every number and combo input of the schema must be passed: one added later and left out here
    would go unchecked, so that is a programming error (TypeError) the node's tests meet at once.

    ComfyUI 0.3.75 does not check combo options of V3 nodes sent through the API, and NaN passes its
    min/max test: without this, `mode: "bogus"` would run as clean mode and a NaN threshold would run
    a whole generation before failing. Linked values reach only execute, so the check lives there.
    """
    schema = node.define_schema()  # not GET_SCHEMA: execute runs on a locked clone that may not cache it
    widgets = [spec for spec in schema.inputs if isinstance(spec, (io.Combo.Input, io.Float.Input, io.Int.Input))]
    missing = sorted({spec.id for spec in widgets} - set(values))
    unknown = sorted(set(values) - {spec.id for spec in widgets})
    if missing or unknown:
        raise TypeError(f"{schema.display_name}: require_valid_widgets must be given each widget of the schema by "
                        f"name; missing {missing}, not widgets {unknown}")
    problems = []
    for spec in widgets:
        value = values[spec.id]
        if value is None:
            continue
        try:
            if isinstance(spec, io.Combo.Input):
                require_choice(spec.id, value, spec.options)
            elif isinstance(spec, (io.Float.Input, io.Int.Input)):
                require_range(spec.id, value, spec.min, spec.max)
        except InputValueError as exc:
            problems.append(str(exc))
    if problems:
        raise InputValueError(f"{schema.display_name}: " + "; ".join(problems))
