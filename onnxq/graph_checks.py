"""Structural checks on a loaded IR graph that onnx-ir itself tolerates.

onnx-ir deserializes models that are not valid ONNX: an input no one produces becomes a fresh
"dangling" value, a cycle becomes nodes that feed each other. Passes would then run on nonsense, so we
refuse such graphs on load with a message that names the tensor or node.
"""

from __future__ import annotations

from collections import deque

import onnx_ir as ir

from onnxq.errors import InvalidModelError


def _node_label(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} (unnamed)"


def _iter_graphs(graph: ir.Graph):
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _iter_graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    yield from _iter_graphs(sub)


def _check_no_dangling_inputs(graph: ir.Graph) -> None:
    for node in graph:
        for value in node.inputs:
            if value is None or value.producer() is not None:
                continue
            if value.is_graph_input() or value.is_initializer():
                continue
            raise InvalidModelError(
                f"input '{value.name}' of node {_node_label(node)} is produced by no node and is neither a "
                "graph input nor an initializer (dangling input or missing initializer)"
            )


def _check_acyclic(graph: ir.Graph) -> None:
    nodes = list(graph)
    index = {id(node): i for i, node in enumerate(nodes)}
    indegree = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in index:
                indegree[i] += 1
                users[index[id(producer)]].append(i)
    ready = deque(i for i, d in enumerate(indegree) if d == 0)
    seen = 0
    while ready:
        i = ready.popleft()
        seen += 1
        for user in users[i]:
            indegree[user] -= 1
            if indegree[user] == 0:
                ready.append(user)
    if seen != len(nodes):
        stuck = next(nodes[i] for i, d in enumerate(indegree) if d > 0)
        raise InvalidModelError(f"graph '{graph.name}' has a cycle through node {_node_label(stuck)}")


def check_graph_structure(model: ir.Model) -> None:
    """Raise ``InvalidModelError`` for dangling inputs or cycles in the main graph or any subgraph."""
    for graph in _iter_graphs(model.graph):
        _check_acyclic(graph)
        _check_no_dangling_inputs(graph)
    if not model.graph.outputs:
        raise InvalidModelError("the model's graph has no outputs")
