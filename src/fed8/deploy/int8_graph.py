"""Exact float-graph rewrites that let ONNX Runtime's CPU integer kernels run an INT8 model faster.

ORT's MLAS has fast int8 convolutions for many input channels but a slow one for the
first layer of an image model (1 to 4 input channels), and it runs a transpose before
a ``Flatten`` of an NHWC tensor. Two rewrites, applied to the float model before
quantization, remove that time without changing a single integer of the result:

``phase_pool``
    ``Conv(k x k, stride 1, same padding, Cin <= 4) -> Relu -> MaxPool(2x2, stride 2)``
    becomes ``space-to-depth(2) -> Conv(4 Cin -> 4 Cout) -> Relu -> max over the 4 phases``.
    Output pixel ``(2Y + a, 2X + b)`` of the original convolution is channel ``(2a + b) Cout + c``
    of the new one at ``(Y, X)``: its kernel holds the original weights at the offsets
    ``(a + i - P, b + j - P) = 2 (dY, dX) + (p, q)`` and zeros elsewhere (``P = k // 2``).
    Per output channel the weights are the original ones plus zeros, so per-channel INT8
    scales, the int32 accumulators and the requantized bytes are identical, and the max of
    the four phase groups is the 2x2 max pool of the same bytes. The new convolution has
    4 Cin input channels at a quarter of the pixels, which MLAS runs several times faster.
    Layout, chosen by profiling ORT 1.32 (docs/BENCHMARKS.md): the space-to-depth is
    Reshape/Transpose in float straight into NHWC (ORT's uint8 transposes of this shape are
    ~30x slower than its float ones), quantized there (:func:`pin_quantize`); the phase max
    is a 1x4 ``MaxPool`` over ``[N, H/2, 4 W/2, Cout]`` (the phases of a pixel side by side),
    which ORT runs as its uint8 ``NhwcMaxPool`` with every transpose cancelled.
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

__all__ = ["TunedGraph", "pin_quantize", "tune_for_int8"]

_MAX_PHASE_CIN = 4


@dataclass
class TunedGraph:
    """A rewritten float model, the calibration aliases of its new tensors and what was rewritten."""

    model: object  # onnx.ModelProto
    aliases: dict[str, str] = field(default_factory=dict)  # new tensor -> original tensor with the same range
    rewrites: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)  # new nodes the quantizer must leave in float
    pinned_inputs: list[str] = field(default_factory=list)  # tensors whose QuantizeLinear pin_quantize() pins


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
    tuned = TunedGraph(model)
    new_nodes, done = [], set()

    def only_consumer(t: str, op: str):
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and c[0].op_type == op and t not in outputs else None

    for n in g.node:
        if id(n) in done:
            continue
        if n.op_type == "Conv" and n.name not in skip:
            rewritten = _phase_pool(n, inits, shapes, only_consumer, tuned)
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


def _phase_pool(conv, inits, shapes, only_consumer, tuned: TunedGraph):
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
    cout, cin = w.shape[:2]
    h2, w2 = hw[0] // 2, hw[1] // 2
    bias = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
            else np.zeros(cout, np.float32))
    wp, kk, dmin = _phase_weights(w.astype(np.float32))
    p = conv.name or conv.output[0]
    n = {s: f"{p}/phase_{s}" for s in ("blocks", "blocks_t", "s2d_nhwc", "s2d", "w", "b", "conv", "relu", "nhwc",
                                       "rows", "rows_nchw", "s1", "s2", "s3")}
    # space-to-depth straight into NHWC, in float: [N, C, H, W] -> [N, H/2, W/2, (2p + q) C + c]
    # (ORT's float transpose is fast for the 5-D C = 1 case; the 6-D one is the general case)
    blocks, order = (([0, h2, 2, w2, 2], [0, 1, 3, 2, 4]) if cin == 1
                     else ([0, cin, h2, 2, w2, 2], [0, 2, 4, 3, 5, 1]))
    tuned.model.graph.initializer.extend([
        numpy_helper.from_array(wp, n["w"]),
        numpy_helper.from_array(np.tile(bias.astype(np.float32), 4), n["b"]),
        numpy_helper.from_array(np.array(blocks, np.int64), n["s1"]),
        numpy_helper.from_array(np.array([0, h2, w2, 4 * cin], np.int64), n["s2"]),
        numpy_helper.from_array(np.array([0, h2, 4 * w2, cout], np.int64), n["s3"]),
    ])
    nodes = [
        helper.make_node("Reshape", [conv.input[0], n["s1"]], [n["blocks"]], name=f"{p}/s2d_blocks"),
        helper.make_node("Transpose", [n["blocks"]], [n["blocks_t"]], name=f"{p}/s2d_order", perm=order),
        helper.make_node("Reshape", [n["blocks_t"], n["s2"]], [n["s2d_nhwc"]], name=f"{p}/s2d_merge"),
        helper.make_node("Transpose", [n["s2d_nhwc"]], [n["s2d"]], name=f"{p}/s2d_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", [n["s2d"], n["w"], n["b"]], [n["conv"]], name=f"{p}/phases",
                         kernel_shape=[kk, kk], pads=[-dmin, -dmin, kk - 1 + dmin, kk - 1 + dmin]),
        helper.make_node("Relu", [n["conv"]], [n["relu"]], name=f"{p}/phases_relu"),
        # the 4 phases of a pixel side by side in a row: [N, H/2, 4 W/2, Cout]; a 1x4 max pool takes their max
        helper.make_node("Transpose", [n["relu"]], [n["nhwc"]], name=f"{p}/phases_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [n["nhwc"], n["s3"]], [n["rows"]], name=f"{p}/phases_rows"),
        helper.make_node("Transpose", [n["rows"]], [n["rows_nchw"]], name=f"{p}/phases_rows_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("MaxPool", [n["rows_nchw"]], [pool.output[0]], name=f"{p}/phase_max",
                         kernel_shape=[1, 4], strides=[1, 4]),
    ]
    tuned.float_nodes.extend(x.name for x in nodes[:4])
    tuned.pinned_inputs.append(n["s2d"])
    tuned.aliases.update({n["s2d"]: conv.input[0], n["conv"]: conv.output[0]})
    # one range for the whole chain (ORT quantizes a MaxPool with its input's parameters), so the
    # transposes, reshape and max pool run on the same bytes with no requantization
    for t in ("relu", "nhwc", "rows", "rows_nchw"):
        tuned.aliases[n[t]] = relu.output[0]
    tuned.aliases[pool.output[0]] = relu.output[0]
    tuned.rewrites.append(f"phase_pool: {conv.name} -> {relu.name} -> {pool.name}")
    return nodes, {id(relu), id(pool)}


def pin_quantize(model, tensors) -> list[str]:
    """Quantize each of ``tensors`` before the Transpose that produced it, where ORT leaves it, in place.

    ``phase_pool`` computes its space-to-depth in float and in NHWC order; ORT's quantizer
    puts the QuantizeLinear after the final NHWC -> NCHW Transpose, at the Conv input. This
    pass moves the ``Q -> DQ`` pair above that Transpose (the transpose then cancels against
    the layout transformer's own NCHW -> NHWC one, with uint8 data). It also keeps ORT's
    ``QDQPropagationTransformer`` from moving the Q further up, through the float
    space-to-depth, where ORT's uint8 5-D / 6-D transpose is about 30x slower than the float
    one (6.9 vs 0.19 ms for 256 MNIST images, measured): that transformer only moves a Q with
    a scalar scale, so the Q gets the same scale and zero point repeated along axis 1 (the
    same bytes; the DequantizeLinear keeps the scalar ones that ORT's fusions look for).
    Returns the tensors whose Q was moved.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shapes = _shapes(model)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    done = []
    for t in tensors:
        qs, tr = consumers.get(t, []), producer.get(t)
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear" or tr is None or tr.op_type != "Transpose":
            continue
        q = qs[0]
        dqs = consumers.get(q.output[0], [])
        src = tr.input[0]
        axis_len = (shapes.get(src) or [None, None])[1]
        scale, zp = (inits.get(q.input[i]) if i < len(q.input) else None for i in (1, 2))
        if (len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or len(consumers.get(src, [])) != 1
                or not axis_len or scale is None or zp is None):
            continue
        dq = dqs[0]
        sc, z = numpy_helper.to_array(scale), numpy_helper.to_array(zp)
        if sc.ndim or z.ndim:
            continue
        names = (f"{src}_pinned_scale", f"{src}_pinned_zero_point")
        g.initializer.extend([numpy_helper.from_array(np.full(axis_len, sc, sc.dtype), names[0]),
                              numpy_helper.from_array(np.full(axis_len, z, z.dtype), names[1])])
        q.input[0], q.input[1], q.input[2] = src, *names
        keep = [a for a in q.attribute if a.name != "axis"]
        del q.attribute[:]
        q.attribute.extend([*keep, helper.make_attribute("axis", 1)])
        for c in consumers.get(dq.output[0], []):
            for i, x in enumerate(c.input):
                if x == dq.output[0]:
                    c.input[i] = t
        tr.input[0] = dq.output[0]
        order = [n for n in g.node if n is not tr]
        order.insert(order.index(dq) + 1, tr)
        del g.node[:]
        g.node.extend(order)
        done.append(t)
    return done
