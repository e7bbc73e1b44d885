"""Exact float-graph rewrites that let ONNX Runtime's CPU integer kernels run an INT8 model faster.

ORT's MLAS has fast int8 convolutions for many input channels but a slow one for the
first layer of an image model (1 to 4 input channels), and it runs a transpose before
a ``Flatten`` of an NHWC tensor. Two rewrites, applied to the float model before
quantization, remove that time without changing a single integer of the result:

``phase_pool``
    ``Conv(k x k, stride 1, same padding, Cin <= 4) -> Relu -> MaxPool(2x2, stride 2)``
    becomes ``SpaceToDepth(2) -> Conv(4 Cin -> 4 Cout) -> Relu -> max over the 4 phases``.
    Output pixel ``(2Y + a, 2X + b)`` of the original convolution is channel ``(2a + b) Cout + c``
    of the new one at ``(Y, X)``: its kernel holds the original weights at the offsets
    ``(a + i - P, b + j - P) = 2 (dY, dX) + (p, q)`` and zeros elsewhere (``P = k // 2``), so
    the 2x2 pool becomes a max over the four phase groups (``ReduceMax`` in NHWC order,
    which ORT's layout transformer keeps NHWC). Per output channel the weights are the
    original ones plus zeros, so per-channel INT8 scales, the int32 accumulators and the
    requantized bytes are identical; the integer max of :func:`integer_max` equals the
    max-pool of the same bytes. The new convolution has 4 Cin input channels at a quarter
    of the pixels, which MLAS runs several times faster than the Cin = 1 one.
``nhwc_flatten``
    ``Flatten(x [N, C, H, W]) -> Gemm(transB=1)`` flattens in NHWC order instead and
    permutes the Gemm's weight columns to match (same values per output row, so the same
    per-channel scales), so the layout transformer's NHWC -> NCHW transpose cancels.

Every new tensor shares the calibration range of an original one (returned as
``aliases``), so calibration runs on the user's model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TunedGraph", "integer_max", "tune_for_int8"]

_MAX_PHASE_CIN = 4


@dataclass
class TunedGraph:
    """A rewritten float model, the calibration aliases of its new tensors and what was rewritten."""

    model: object  # onnx.ModelProto
    aliases: dict[str, str] = field(default_factory=dict)  # new tensor -> original tensor with the same range
    rewrites: list[str] = field(default_factory=list)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _phase_weights(w: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Kernel of the space-to-depth convolution for a stride-1 'same' conv with odd kernel ``k``.

    Returns ``(W', K, dmin)``: ``W'`` is ``[4 Cout, 4 Cin, K, K]`` (phase-major output
    channels ``(2a + b) Cout + c``, input channels in ONNX SpaceToDepth DCR order
    ``(2p + q) Cin + ci``), padded by ``-dmin`` before and ``K - 1 + dmin`` after.
    """
    cout, cin, k, _ = w.shape
    pad = k // 2
    dmin, dmax = (0 - pad) // 2, (k - pad) // 2
    kk = dmax - dmin + 1
    out = np.zeros((2, 2, cout, 4 * cin, kk, kk), dtype=np.float32)
    for a in range(2):
        for b in range(2):
            for i in range(k):
                dy, p = divmod(a + i - pad, 2)
                for j in range(k):
                    dx, q = divmod(b + j - pad, 2)
                    out[a, b, :, (2 * p + q) * cin:(2 * p + q + 1) * cin, dy - dmin, dx - dmin] = w[:, :, i, j]
    return out.reshape(4 * cout, 4 * cin, kk, kk), kk, dmin


def _shapes(model) -> dict[str, list]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input) + list(g.output)}


def tune_for_int8(model, *, skip: frozenset[str] | set[str] = frozenset()) -> TunedGraph:
    """Apply ``phase_pool`` and ``nhwc_flatten`` (module docstring) to a copy of the float ``model``.

    Nodes named in ``skip`` (layers kept in float by the accuracy gate) are not rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shapes = _shapes(model)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    tuned = TunedGraph(model)
    new_nodes, done = [], set()

    def only_consumer(t: str, op: str):
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and c[0].op_type == op and t not in outputs else None

    for n in g.node:
        if id(n) in done:
            continue
        if n.op_type == "Conv" and n.name not in skip:
            rewritten = _phase_pool(n, inits, shapes, only_consumer, tuned, opset)
            if rewritten is not None:
                nodes, used = rewritten
                new_nodes.extend(nodes)
                done.update(used)
                continue
        if n.op_type == "Flatten" and _attr(n, "axis", 1) == 1 and len(shapes.get(n.input[0], ())) == 4:
            gemm = only_consumer(n.output[0], "Gemm")
            dims = shapes[n.input[0]][1:]
            if (gemm is not None and gemm.input[1] in inits and _attr(gemm, "transB", 0) == 1
                    and _attr(gemm, "transA", 0) == 0 and all(dims)):
                c, h, w = dims
                b = numpy_helper.to_array(inits[gemm.input[1]])
                if b.shape[1] == c * h * w:
                    permuted = b.reshape(b.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(b.shape[0], -1)
                    inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted),
                                                                          gemm.input[1]))
                    t = f"{n.input[0]}_nhwc"
                    new_nodes.append(helper.make_node("Transpose", [n.input[0]], [t], name=f"{n.name}/to_nhwc",
                                                      perm=[0, 2, 3, 1]))
                    tuned.aliases[t] = n.input[0]
                    n.input[0] = t
                    tuned.rewrites.append(f"nhwc_flatten: {n.name} -> {gemm.name}")
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return tuned


def _phase_pool(conv, inits, shapes, only_consumer, tuned: TunedGraph, opset: int):
    """The ``phase_pool`` rewrite of ``conv`` if its pattern matches, else None."""
    from onnx import helper, numpy_helper

    if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
        return None
    w = numpy_helper.to_array(inits[conv.input[1]])
    if w.ndim != 4 or w.shape[1] > _MAX_PHASE_CIN or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
        return None
    k = w.shape[2]
    if (_attr(conv, "group", 1) != 1 or list(_attr(conv, "strides", [1, 1])) != [1, 1]
            or list(_attr(conv, "dilations", [1, 1])) != [1, 1] or _attr(conv, "auto_pad", b"NOTSET") != b"NOTSET"
            or list(_attr(conv, "pads", [0] * 4)) != [k // 2] * 4):
        return None
    hw = shapes.get(conv.input[0], [None] * 4)[2:]
    if len(hw) != 2 or not all(hw) or hw[0] % 2 or hw[1] % 2:
        return None
    relu = only_consumer(conv.output[0], "Relu")
    pool = relu and only_consumer(relu.output[0], "MaxPool")
    if (pool is None or len(pool.output) != 1 or list(_attr(pool, "kernel_shape", [])) != [2, 2]
            or list(_attr(pool, "strides", [1, 1])) != [2, 2] or any(_attr(pool, "pads", [0] * 4))
            or list(_attr(pool, "dilations", [1, 1])) != [1, 1] or _attr(pool, "ceil_mode", 0)
            or _attr(pool, "auto_pad", b"NOTSET") != b"NOTSET"):
        return None
    cout = w.shape[0]
    bias = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
            else np.zeros(cout, np.float32))
    wp, kk, dmin = _phase_weights(w.astype(np.float32))
    p = conv.name or conv.output[0]
    names = {s: f"{p}/phase_{s}" for s in ("s2d", "w", "b", "conv", "relu", "nhwc", "shape", "split", "max")}
    g_inits = [numpy_helper.from_array(wp, names["w"]),
               numpy_helper.from_array(np.tile(bias.astype(np.float32), 4), names["b"]),
               numpy_helper.from_array(np.array([0, 0, 0, 4, cout], np.int64), names["shape"])]
    if opset >= 18:
        g_inits.append(numpy_helper.from_array(np.array([3], np.int64), f"{p}/phase_axes"))
        reduce = helper.make_node("ReduceMax", [names["split"], f"{p}/phase_axes"], [names["max"]],
                                  name=f"{p}/phase_max", keepdims=0)
    else:
        reduce = helper.make_node("ReduceMax", [names["split"]], [names["max"]], name=f"{p}/phase_max",
                                  axes=[3], keepdims=0)
    nodes = [
        helper.make_node("SpaceToDepth", [conv.input[0]], [names["s2d"]], name=f"{p}/space_to_depth", blocksize=2),
        helper.make_node("Conv", [names["s2d"], names["w"], names["b"]], [names["conv"]], name=f"{p}/phases",
                         kernel_shape=[kk, kk], pads=[-dmin, -dmin, kk - 1 + dmin, kk - 1 + dmin]),
        helper.make_node("Relu", [names["conv"]], [names["relu"]], name=f"{p}/phases_relu"),
        helper.make_node("Transpose", [names["relu"]], [names["nhwc"]], name=f"{p}/phases_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [names["nhwc"], names["shape"]], [names["split"]], name=f"{p}/phases_split"),
        reduce,
        helper.make_node("Transpose", [names["max"]], [pool.output[0]], name=f"{p}/pooled_nchw", perm=[0, 3, 1, 2]),
    ]
    tuned.model.graph.initializer.extend(g_inits)
    tuned.aliases.update({names["s2d"]: conv.input[0], names["conv"]: conv.output[0]})
    # one range for the whole chain (ORT also quantizes a MaxPool with its input's parameters),
    # so the integer max of integer_max() needs no requantization
    for t in ("relu", "nhwc", "split", "max"):
        tuned.aliases[names[t]] = relu.output[0]
    tuned.aliases[pool.output[0]] = relu.output[0]
    tuned.rewrites.append(f"phase_pool: {conv.name} -> {relu.name} -> {pool.name}")
    return nodes, {id(relu), id(pool)}


def integer_max(model) -> list[str]:
    """Run each ``DQ -> ReduceMax -> [Transpose|Reshape]* -> Q`` chain on the integers, in place.

    ONNX Runtime's quantizer leaves ``ReduceMax`` in float between a DequantizeLinear and a
    QuantizeLinear. When both use the same scale and zero point (the aliases of
    :func:`tune_for_int8` make sure of it) the max of the integers is exactly the
    quantized max, so the pair is removed and the chain runs on uint8 / int8.
    Returns the names of the rewritten ReduceMax nodes.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def params(node):
        return [numpy_helper.to_array(inits[node.input[i]]) if i < len(node.input) and node.input[i] in inits
                else None for i in (1, 2)]

    graph_outputs = {o.name for o in g.output}
    drop, retyped, done = set(), set(), []
    for node in g.node:
        if node.op_type != "ReduceMax":
            continue
        dq = producer.get(node.input[0])
        t, chain = node.output[0], []
        while len(consumers.get(t, [])) == 1 and consumers[t][0].op_type in ("Transpose", "Reshape"):
            chain.append(consumers[t][0])
            t = chain[-1].output[0]
        q = consumers.get(t, [])
        if (dq is None or dq.op_type != "DequantizeLinear" or len(consumers[dq.output[0]]) != 1
                or len(q) != 1 or q[0].op_type != "QuantizeLinear" or q[0].output[0] in graph_outputs):
            continue
        (s1, z1), (s2, z2) = params(dq), params(q[0])
        if s1 is None or s2 is None or z1 is None or z2 is None or not (np.array_equal(s1, s2)
                                                                         and np.array_equal(z1, z2)):
            continue
        node.input[0] = dq.input[0]
        for c in consumers.get(q[0].output[0], []):
            for i, x in enumerate(c.input):
                if x == q[0].output[0]:
                    c.input[i] = t
        drop.update({id(dq), id(q[0])})
        retyped.update([node.output[0], *(c.output[0] for c in chain)])
        done.append(node.name)
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    vi = [v for v in g.value_info if v.name not in retyped]  # their element type is no longer float
    del g.value_info[:]
    g.value_info.extend(vi)
    return done
