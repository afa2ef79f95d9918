"""The ops a SavedModel's graph would run, held against the ops catdog's own exporter writes.

A SavedModel is a program: a candidate that keeps the signature contract and answers like its
`.h5` may still read or write files (`ReadFile`, `WriteFile`, `MatchingFiles`), run Python
(`PyFunc`) or call a custom op, and loading it, warming it up or answering a request runs them.
`op_problem` reads `saved_model.pb` without loading it: every node of the graph and of every
function in its library, each judged by the role it is reached from. Signatures (and so their
warm-up requests) may use only `SERVING_OPS`, the ops catdog's exports compute with; the saver
may also save and restore variables, and the initializer may also read the labels asset into its
lookup table. A function reached from two roles is held to the stricter, and a function nothing
reaches to the strictest, so a file op cannot hide in a function named like the saver's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from google.protobuf import message
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

# Every op catdog's exporter writes into a signature (float32, bfloat16 and float16 exports of
# the same graph hold the same set; tests/serving/test_graph_ops.py checks a fresh export;
# ReverseV2 mirrors the images of a --test_time_flip export).
SERVING_OPS = frozenset({
    "Abs", "AddV2", "All", "ArgMax", "Assert", "AssignVariableOp", "BiasAdd", "Cast", "Const",
    "Conv2D", "DecodeImage", "DecodeRaw", "DisableCopyOnRead", "Equal", "ExpandDims",
    "ExtractJpegShape", "FloorDiv", "FloorMod", "GreaterEqual", "HashTableV2", "Identity",
    "Less", "LessEqual", "LogicalAnd", "LogicalOr", "LookupTableFindV2", "MatMul", "MaxPool",
    "Maximum", "Mean", "Minimum", "Mul", "NoOp", "Pack", "ParseExampleV2", "PartitionedCall",
    "Placeholder",
    "Prod", "Range", "ReadVariableOp", "RealDiv", "Relu", "Reshape", "ReverseV2", "Round",
    "ScaleAndTranslate", "Select", "SelectV2", "Shape", "ShardedFilename", "Softmax",
    "Squeeze", "StatefulPartitionedCall", "StatelessIf", "StaticRegexFullMatch",
    "StridedSlice", "StringFormat", "StringJoin", "Sub", "Substr", "TensorListFromTensor",
    "TensorListGetItem", "TensorListReserve", "TensorListSetItem", "TensorListStack", "Tile",
    "VarHandleOp", "VarIsInitializedOp", "While",
})
SAVER, INITIALIZER, SIGNATURE = "the saver", "the initializer", "a signature"
# The files each role may touch besides computing: the variables, the labels asset.
FILE_OPS_OF = {SAVER: frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints"}),
               INITIALIZER: frozenset({"InitializeTableFromTextFileV2"}),
               SIGNATURE: frozenset()}
_WHY = {  # what a refused op would do, for the refusal's words
    **dict.fromkeys(("ReadFile", "WriteFile", "MatchingFiles", "SaveV2", "RestoreV2", "Save",
                     "Restore", "SaveSlices", "RestoreSlice", "MergeV2Checkpoints",
                     "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
                     "ImmutableConst", "TFRecordDataset", "FixedLengthRecordDataset",
                     "TextLineDataset", "WholeFileReaderV2", "ReaderReadV2"),
                    "it reads or writes files"),
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), "it runs Python code"),
}
INIT_OP_KEYS = ("__saved_model_init_op", "saved_model_main_op", "legacy_init_op")


def op_problem(saved_model_dir: str | Path) -> str | None:
    """The first op of the SavedModel in `saved_model_dir` that catdog's exporter never writes
    in the role it is reached from, as one line naming the op and its function; None when every
    op is one catdog writes, or when there is no graph to read (the loader then names what is
    wrong with the file). Reads `saved_model.pb` only; loads and runs nothing."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    except (OSError, message.DecodeError):
        return None
    refused = [(op, where, role) for meta_graph in saved_model.meta_graphs
               for op, where, role in _ops_by_role(meta_graph)
               if op not in SERVING_OPS | FILE_OPS_OF[role]]
    if not refused:
        return None
    # The worst first: an op known to touch files or run Python before one merely unknown.
    op, where, role = min(refused, key=lambda found: found[0] not in _WHY)
    why = _WHY.get(op, "catdog's exports never use it")
    return (f"the graph holds op {op} in {where}, reached from {role} ({why}); catdog's "
            "exporter writes no such op")


def _ops_by_role(meta_graph: meta_graph_pb2.MetaGraphDef) -> Iterator[tuple[str, str, str]]:
    """(op, where it is, the strictest role it is reached from) for every node of the graph and
    of its function library."""
    graph = meta_graph.graph_def
    node_roles = _node_roles(meta_graph)
    functions = {f.signature.name: f for f in graph.library.function}
    function_roles: dict[str, str] = {}
    pending = []
    for node in graph.node:
        role = node_roles.get(node.name, SIGNATURE)
        yield node.op, f"the graph (node {node.name})", role
        pending += [(name, role) for name in _called(node.attr)]
    while pending:  # each function takes the strictest role of any caller
        name, role = pending.pop()
        known = function_roles.get(name)
        stricter = role if known is None else _stricter(known, role)
        if stricter == known or name not in functions:
            continue
        function_roles[name] = stricter
        pending += [(callee, stricter) for node in functions[name].node_def
                    for callee in _called(node.attr)]
    for name, function in functions.items():
        role = function_roles.get(name, SIGNATURE)  # called by nothing: held to the strictest
        for node in function.node_def:
            yield node.op, f"function {name}", role


def _node_roles(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, str]:
    """The role of each graph node the saver or the initializer reaches and no signature does
    (all other nodes are held as a signature's)."""
    graph = meta_graph.graph_def
    entries = {SAVER: [meta_graph.saver_def.save_tensor_name,
                       meta_graph.saver_def.restore_op_name],
               INITIALIZER: [tensor.name for key in INIT_OP_KEYS
                             if key in meta_graph.signature_def
                             for tensor in meta_graph.signature_def[key].outputs.values()]
               + [name for key in INIT_OP_KEYS if key in meta_graph.collection_def
                  for name in meta_graph.collection_def[key].node_list.value],
               SIGNATURE: [tensor.name for key, signature in meta_graph.signature_def.items()
                           if key not in INIT_OP_KEYS
                           for tensor in [*signature.inputs.values(),
                                          *signature.outputs.values()]]}
    roles: dict[str, str] = {}
    for role in (SAVER, INITIALIZER, SIGNATURE):
        for name in _reached(graph, entries[role]):
            roles[name] = _stricter(roles[name], role) if name in roles else role
    return roles


def _reached(graph: graph_pb2.GraphDef, entries: list[str]) -> set[str]:
    """The graph nodes `entries` (tensor or op names) depend on, themselves included."""
    inputs = {node.name: node.input for node in graph.node}
    seen: set[str] = set()
    pending = [_node_name(entry) for entry in entries if entry]
    while pending:
        name = pending.pop()
        if name in seen or name not in inputs:
            continue
        seen.add(name)
        pending += [_node_name(tensor) for tensor in inputs[name]]
    return seen


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _stricter(first: str, second: str) -> str:
    """The role allowed fewer file ops (two roles that allow different ones: a signature's)."""
    allowed = FILE_OPS_OF[first] & FILE_OPS_OF[second]
    return next(role for role in (SIGNATURE, first, second) if FILE_OPS_OF[role] == allowed)


def _called(attrs) -> Iterator[str]:
    """The functions a node's attributes name (a call's `f`, a While's body, an If's branches)."""
    for value in attrs.values():
        if value.HasField("func"):
            yield value.func.name
        elif value.HasField("list"):
            yield from (func.name for func in value.list.func)

