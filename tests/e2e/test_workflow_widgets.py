"""The shipped workflows' widget values, read by input name through the live server's /object_info.

widgets_values is a positional list: swapping two same-typed inputs in a schema (say min_loops and
max_loops) would keep every count and type check green while the workflows silently load 9 as
min_loops. The builder states each value by name, so reading the committed lists back by name
against the real schema catches that.
"""
from __future__ import annotations

import copy
import json

import pytest

import build_workflows
from comfy_host import widget_value_problems, widget_values_by_name

WORKFLOWS = build_workflows.WORKFLOWS


def committed_mismatches(object_info) -> list[str]:
    """Every named widget of the builder whose committed value, read with `object_info`, differs or misfits."""
    problems = []
    for filename, named_nodes in build_workflows.named_widgets().items():
        nodes = {n["id"]: n for n in json.loads((WORKFLOWS / filename).read_text())["nodes"]}
        for nid, named in named_nodes.items():
            info = object_info[nodes[nid]["type"]]
            read = widget_values_by_name(info, nodes[nid])
            where = f"{filename}: node {nid} {nodes[nid]['type']}"
            for name in sorted(set(named) | set(read)):
                if read.get(name) != named.get(name):
                    problems.append(f"{where}: {name!r} is {read.get(name)!r} in the file, {named.get(name)!r} by name")
                problems += [f"{where}: {p}" for p in widget_value_problems(info, name, read.get(name))]
    return problems


def test_committed_widgets_match_their_names(server):
    assert committed_mismatches(server.object_info()) == []
    assert any(n for nodes in build_workflows.named_widgets().values() for n in nodes.values())  # not vacuous


def swapped(object_info, node_type: str, a: str, b: str):
    info = copy.deepcopy(object_info)
    order = info[node_type]["input_order"]["required"]
    i, j = order.index(a), order.index(b)
    order[i], order[j] = order[j], order[i]
    return info


def test_swapped_inputs_in_the_schema_are_caught(server):
    info = swapped(server.object_info(), "EZIGenSampler", "min_loops", "max_loops")
    problems = committed_mismatches(info)
    assert any("ezigen_generate.json" in p and "'min_loops' is 9 in the file, 3 by name" in p for p in problems), problems
    assert any("'max_loops' is 3 in the file, 9 by name" in p for p in problems), problems
    built = build_workflows.build(info)["ezigen_generate.json"]
    assert built != json.loads((WORKFLOWS / "ezigen_generate.json").read_text())  # rebuilding would rewrite it


@pytest.mark.parametrize("node_type, name, value, message", [
    ("EZIGenPatchUNetAttention", "strength", 7.5, r"outside FLOAT \[0\.0, 2\.0\]"),
    ("EZIGenSampler", "mode", "bogus", r"'bogus' is not one of the options"),
    ("EZIGenSampler", "steps", 2.5, r"2\.5 is not INT"),
    ("EZIGenSampler", "no_such_input", 1, r"not a widget input"),
])
def test_a_misfit_named_value_fails_the_build(server, monkeypatch, node_type, name, value, message):
    original = build_workflows.WF.node

    def node(self, type_, pos, widgets=None, *args, **kwargs):
        if type_ == node_type:
            widgets = {**widgets, name: value}
        return original(self, type_, pos, widgets, *args, **kwargs)

    monkeypatch.setattr(build_workflows.WF, "node", node)
    with pytest.raises(ValueError, match=rf"node \d+ {node_type}: '{name}': .*{message}"):
        build_workflows.build(server.object_info())


def test_a_missing_named_value_fails_the_build(server, monkeypatch):
    original = build_workflows.WF.node

    def node(self, type_, pos, widgets=None, *args, **kwargs):
        if type_ == "EZIGenSampler":
            widgets = {k: v for k, v in widgets.items() if k != "max_loops"}
        return original(self, type_, pos, widgets, *args, **kwargs)

    monkeypatch.setattr(build_workflows.WF, "node", node)
    with pytest.raises(ValueError, match=r"ezigen_generate.json: node \d+ EZIGenSampler: 'max_loops': no value given"):
        build_workflows.build(server.object_info())


def test_static_check_reads_values_by_name(server):
    """ui_workflow_errors, used by every workflow test, reports a misfit value with its input name."""
    from comfy_host import ui_workflow_errors

    wf = json.loads((WORKFLOWS / "ezigen_generate.json").read_text())
    sampler = next(n for n in wf["nodes"] if n["type"] == "EZIGenSampler")
    sampler["widgets_values"][-1] = "bogus"  # mode
    errors = ui_workflow_errors(wf, server.object_info())
    assert len(errors) == 1 and "EZIGenSampler): widget 'mode': 'bogus' is not one of the options" in errors[0], errors
