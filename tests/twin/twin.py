#!/usr/bin/python3
"""twin.py: the PyTorch twin of memlab's model, and the fixtures it writes.

An independent float64 implementation of the model described in model.h and
docs/models.md (softmax and linear attention mixers, the pre-norm block with
optional short causal conv and MLP, tied or untied LM head, learned or no
positions). For each case it builds the model from a fixed spec, fills the
weights with seeded random values, runs one forward and backward on a seeded
batch, and writes one fixture file (format below) that tests/test_twin.c diffs
against the C model. Parameters are kept under their C names and in the C
layout ([out, in] for linear maps, [C, K] for conv taps), so nothing is renamed
or transposed on the way out.

It deliberately does not use the C code's structure: attention is a masked
softmax over the full score matrix, the linear mixer runs whichever of its three
forms the spec names, and gradients come from torch.autograd. It does not parse
YAML (the specs are written here from the same dicts that build the model) and
it does not generate MQAR data (inputs and targets are random tokens).

Usage:
    /usr/bin/python3 tests/twin/twin.py OUTDIR     write OUTDIR/twin_<mixer>_<letter>.fx
    /usr/bin/python3 tests/twin/twin.py --check    self-checks (slow-ish, not for CI):
        conv taps and the attention window against plain loops, the three
        linear-attention forms agree on every linear case, and
        torch.autograd.gradcheck passes on one softmax and one linear case.

Fixture format (little-endian): b"MLFX", u32 version (1), u32 entry count; per
entry: u32 name length, name bytes, u32 kind (0 float64, 1 int32, 2 UTF-8 text),
u32 ndim, u32 dims[ndim], then the data (text: ndim 1, dims[0] = byte length).
Entries: spec, input [B,T], target [B,T] (-1 = unsupervised), loss [1],
logits [B,T,V], every parameter by name, and grad.<name> for each.

Only torch and the standard library are used.
"""

import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

FX_MAGIC = b"MLFX"
FX_VERSION = 1
KIND_F64, KIND_I32, KIND_TEXT = 0, 1, 2

B, T = 2, 11  # T odd and shorter than seq_len, so wpe has an unused row

TASK = {"name": "mqar", "vocab_size": 16, "seq_len": 12, "num_kv_pairs": 2}


def model_keys(**over):
    """The model section of a case: defaults of the first case, overridden."""
    m = {
        "mixer": "softmax",
        "d_model": 8,
        "n_layers": 2,
        "mlp": True,
        "mlp_ratio": 2,
        "norm": "layer",
        "norm_eps": 1e-5,
        "conv": 3,
        "tie_embeddings": True,
        "position": "none",
    }
    m.update(over)
    return m


def softmax_keys(**over):
    k = {"heads": 2, "window": 0, "qkv_bias": True}
    k.update(over)
    return k


def linear_keys(**over):
    k = {
        "heads": 2,
        "feature_map": "elu1",
        "normalize": True,
        "eps": 1e-6,
        "chunk": 4,
        "form": "chunkwise",
        "qkv_bias": True,
    }
    k.update(over)
    return k


# (file stem, seed, model section, mixer keys). The mixer keys live in the
# model section of the spec; they are kept apart here only for readability.
CASES = [
    ("softmax_a", 101, model_keys(), softmax_keys()),
    ("softmax_b", 102,
     model_keys(conv=0, mlp=False, norm="rms", tie_embeddings=False, position="learned"),
     softmax_keys(heads=1, window=3, qkv_bias=False)),
    ("softmax_c", 103, model_keys(conv=2, norm="rms"), softmax_keys(heads=4, window=5)),
    ("softmax_d", 104,
     model_keys(n_layers=3, conv=4, mlp_ratio=3, tie_embeddings=False, position="learned"),
     softmax_keys(heads=2, window=2)),
    ("linear_a", 201, model_keys(mixer="linear", conv=4),
     linear_keys(feature_map="elu1", normalize=True, form="chunkwise", heads=2)),
    ("linear_b", 202, model_keys(mixer="linear", norm="rms", tie_embeddings=False),
     linear_keys(feature_map="identity", normalize=False, form="parallel", qkv_bias=False)),
    ("linear_c", 203, model_keys(mixer="linear", position="learned", conv=0),
     linear_keys(feature_map="relu", normalize=True, eps=1e-4, form="recurrent",
                 qkv_bias=True)),
    ("linear_d", 204, model_keys(mixer="linear", mlp=False),
     linear_keys(feature_map="elu1", normalize=True, eps=1e-3, heads=1, form="chunkwise")),
    ("linear_e", 205,
     model_keys(mixer="linear", n_layers=3, conv=2, norm="rms", tie_embeddings=False),
     linear_keys(feature_map="elu1", normalize=False, form="parallel", heads=4)),
]


def yaml_scalar(v):
    """A spec value as YAML text: booleans lower case, floats round-trip exact."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def spec_text(stem, model, mixer):
    """The full memlab YAML spec of a case (name, task, model sections)."""
    lines = ["name: twin-" + stem.replace("_", "-"), "task:"]
    lines += ["  %s: %s" % (k, yaml_scalar(v)) for k, v in TASK.items()]
    lines.append("model:")
    lines += ["  %s: %s" % (k, yaml_scalar(v)) for k, v in model.items()]
    lines += ["  %s: %s" % (k, yaml_scalar(v)) for k, v in mixer.items()]
    return "\n".join(lines) + "\n"


def make_params(model, mixer, V, L):
    """Random float64 parameters under their C names and in C layout.

    Values are deliberately far from memlab's own init (norm weights 1 + noise,
    non-zero biases) so that every code path, including bias gradients and the
    scale of each norm weight, moves the loss."""
    C = model["d_model"]
    R = model["mlp_ratio"] * C
    K = model["conv"]
    layer_norm = model["norm"] == "layer"
    p = {}

    def mat(name, rows, cols):
        p[name] = 0.3 * torch.randn(rows, cols, dtype=torch.float64)

    def bias(name, n):
        p[name] = 0.1 * torch.randn(n, dtype=torch.float64)

    def normw(name, n):
        p[name] = 1.0 + 0.1 * torch.randn(n, dtype=torch.float64)

    mat("wte", V, C)
    if model["position"] == "learned":
        mat("wpe", L, C)
    for l in range(model["n_layers"]):
        pre = "layers.%d." % l
        normw(pre + "norm1.w", C)
        if layer_norm:
            bias(pre + "norm1.b", C)
        if K > 0:
            mat(pre + "conv.w", C, K)
            bias(pre + "conv.b", C)
        mat(pre + "mixer.wqkv", 3 * C, C)
        if mixer["qkv_bias"]:
            bias(pre + "mixer.bqkv", 3 * C)
        mat(pre + "mixer.wo", C, C)
        bias(pre + "mixer.bo", C)
        if model["mlp"]:
            normw(pre + "norm2.w", C)
            if layer_norm:
                bias(pre + "norm2.b", C)
            mat(pre + "mlp.w1", R, C)
            bias(pre + "mlp.b1", R)
            mat(pre + "mlp.w2", C, R)
            bias(pre + "mlp.b2", C)
    normw("norm_f.w", C)
    if layer_norm:
        bias("norm_f.b", C)
    if not model["tie_embeddings"]:
        mat("lm_head", V, C)
    return p


def norm(x, p, name, model):
    """LayerNorm (weight and bias) or RMSNorm (weight only), eps inside the sqrt."""
    eps = model["norm_eps"]
    w = p[name + ".w"]
    if model["norm"] == "layer":
        return F.layer_norm(x, (x.shape[-1],), w, p[name + ".b"], eps)
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def causal_conv(h, w, b):
    """Depthwise causal conv: torch Conv1d with K-1 zeros of left padding.

    Conv1d pads both sides; keeping the first T outputs keeps exactly the ones
    that see no future token, and w[c, K-1] weighs the current token."""
    Tn, Cn, K = h.shape[1], h.shape[2], w.shape[1]
    y = F.conv1d(h.transpose(1, 2), w.unsqueeze(1), b, padding=K - 1, groups=Cn)
    return y[:, :, :Tn].transpose(1, 2)


def split_heads(x, H):
    """[B,T,H*D] -> [B,H,T,D] (head i = columns i*D .. (i+1)*D-1)."""
    Bn, Tn, Cn = x.shape
    return x.view(Bn, Tn, H, Cn // H).transpose(1, 2)


def merge_heads(x):
    """[B,H,T,D] -> [B,T,H*D]."""
    Bn, H, Tn, D = x.shape
    return x.transpose(1, 2).reshape(Bn, Tn, H * D)


def softmax_attention(q, k, v, window):
    """Causal softmax attention per head, scale 1/sqrt(D); window w > 0 lets
    query i see keys j with i-w < j <= i (w keys, itself included)."""
    Tn, D = q.shape[-2], q.shape[-1]
    i = torch.arange(Tn).view(Tn, 1)
    j = torch.arange(Tn).view(1, Tn)
    allowed = j <= i
    if window > 0:
        allowed = allowed & (j > i - window)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def feature_map(x, kind):
    """phi applied elementwise: identity, elu(x) + 1, or relu."""
    if kind == "identity":
        return x
    if kind == "elu1":
        return F.elu(x) + 1.0
    if kind == "relu":
        return F.relu(x)
    raise ValueError("unknown feature map " + kind)


def linattn_recurrent(q, k, v, normalize, eps):
    """Token by token: S += k v^T, z += k, o = S^T q (/ (q.z + eps))."""
    Bn, H, Tn, Dk = q.shape
    Dv = v.shape[-1]
    S = torch.zeros(Bn, H, Dk, Dv, dtype=q.dtype)
    z = torch.zeros(Bn, H, Dk, dtype=q.dtype)
    outs = []
    for t in range(Tn):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + k[:, :, t]
        o = torch.einsum("bhk,bhkv->bhv", q[:, :, t], S)
        if normalize:
            o = o / ((q[:, :, t] * z).sum(-1, keepdim=True) + eps)
        outs.append(o)
    return torch.stack(outs, dim=2)


def linattn_parallel(q, k, v, normalize, eps):
    """Masked T x T form: A = (q k^T) * tril; o = A v (/ (rowsum(A) + eps))."""
    Tn = q.shape[-2]
    A = (q @ k.transpose(-1, -2)) * torch.tril(torch.ones(Tn, Tn, dtype=q.dtype))
    o = A @ v
    if normalize:
        o = o / (A.sum(-1, keepdim=True) + eps)
    return o


def linattn_chunkwise(q, k, v, normalize, eps, chunk):
    """Chunks of `chunk` tokens: the state of earlier chunks plus a masked
    intra-chunk product; the last chunk may be short."""
    Bn, H, Tn, Dk = q.shape
    Dv = v.shape[-1]
    S = torch.zeros(Bn, H, Dk, Dv, dtype=q.dtype)
    z = torch.zeros(Bn, H, Dk, dtype=q.dtype)
    outs = []
    for s in range(0, Tn, chunk):
        e = min(s + chunk, Tn)
        qc, kc, vc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e]
        n = e - s
        A = (qc @ kc.transpose(-1, -2)) * torch.tril(torch.ones(n, n, dtype=q.dtype))
        num = qc @ S + A @ vc
        if normalize:
            den = (qc * z[:, :, None, :]).sum(-1, keepdim=True) + A.sum(-1, keepdim=True)
            num = num / (den + eps)
        outs.append(num)
        S = S + kc.transpose(-1, -2) @ vc
        z = z + kc.sum(2)
    return torch.cat(outs, dim=2)


def linear_attention(q, k, v, mixer, form=None):
    """Linear attention on [B,H,T,D] heads in the spec's form (or `form`)."""
    form = form or mixer["form"]
    phq = feature_map(q, mixer["feature_map"])
    phk = feature_map(k, mixer["feature_map"])
    if form == "recurrent":
        return linattn_recurrent(phq, phk, v, mixer["normalize"], mixer["eps"])
    if form == "parallel":
        return linattn_parallel(phq, phk, v, mixer["normalize"], mixer["eps"])
    if form == "chunkwise":
        return linattn_chunkwise(phq, phk, v, mixer["normalize"], mixer["eps"], mixer["chunk"])
    raise ValueError("unknown form " + form)


def mixer_forward(h, p, pre, model, mixer, form=None):
    """qkv projection, per-head mixing, output projection (C = H*D)."""
    C = model["d_model"]
    H = mixer["heads"]
    qkv = F.linear(h, p[pre + "wqkv"], p.get(pre + "bqkv") if mixer["qkv_bias"] else None)
    q = split_heads(qkv[..., :C], H)
    k = split_heads(qkv[..., C:2 * C], H)
    v = split_heads(qkv[..., 2 * C:], H)
    if model["mixer"] == "softmax":
        o = softmax_attention(q, k, v, mixer["window"])
    else:
        o = linear_attention(q, k, v, mixer, form)
    return F.linear(merge_heads(o), p[pre + "wo"], p[pre + "bo"])


def forward(p, tok, tgt, model, mixer, form=None):
    """Logits [B,T,V] and the mean cross-entropy over positions with target >= 0."""
    Tn = tok.shape[1]
    x = p["wte"][tok]
    if model["position"] == "learned":
        x = x + p["wpe"][:Tn]
    for l in range(model["n_layers"]):
        pre = "layers.%d." % l
        h = norm(x, p, pre + "norm1", model)
        if model["conv"] > 0:
            h = causal_conv(h, p[pre + "conv.w"], p[pre + "conv.b"])
        x = x + mixer_forward(h, p, pre + "mixer.", model, mixer, form)
        if model["mlp"]:
            h = norm(x, p, pre + "norm2", model)
            h = F.gelu(F.linear(h, p[pre + "mlp.w1"], p[pre + "mlp.b1"]))
            x = x + F.linear(h, p[pre + "mlp.w2"], p[pre + "mlp.b2"])
    y = norm(x, p, "norm_f", model)
    head = p["wte"] if model["tie_embeddings"] else p["lm_head"]
    logits = y @ head.t()
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-1,
                           reduction="mean")
    return logits, loss


def make_batch(V):
    """Random tokens; about half the targets -1, at least one supervised per row."""
    tok = torch.randint(0, V, (B, T), dtype=torch.int64)
    tgt = torch.randint(0, V, (B, T), dtype=torch.int64)
    drop = torch.rand(B, T) < 0.5
    for b in range(B):
        if bool(drop[b].all()):
            drop[b, int(torch.randint(0, T, (1,)))] = False
    tgt = tgt.masked_fill(drop, -1)
    return tok, tgt


def build_case(case):
    """Seeded parameters and batch of a case: (spec, params, tok, tgt, model, mixer)."""
    stem, seed, model, mixer = case
    torch.manual_seed(seed)
    V, L = TASK["vocab_size"], TASK["seq_len"]
    p = make_params(model, mixer, V, L)
    tok, tgt = make_batch(V)
    return spec_text(stem, model, mixer), p, tok, tgt, model, mixer


def run_case(case):
    """The fixture entries of a case, as (name, kind, dims, values) tuples."""
    spec, p, tok, tgt, model, mixer = build_case(case)
    for t in p.values():
        t.requires_grad_(True)
    logits, loss = forward(p, tok, tgt, model, mixer)
    loss.backward()
    V = logits.shape[-1]
    ent = [
        ("spec", KIND_TEXT, None, spec.encode("utf-8")),
        ("input", KIND_I32, [B, T], tok.flatten().tolist()),
        ("target", KIND_I32, [B, T], tgt.flatten().tolist()),
        ("loss", KIND_F64, [1], [loss.item()]),
        ("logits", KIND_F64, [B, T, V], logits.detach().flatten().tolist()),
    ]
    for name, t in p.items():
        ent.append((name, KIND_F64, list(t.shape), t.detach().flatten().tolist()))
    for name, t in p.items():
        if t.grad is None:
            raise RuntimeError("%s: %s gets no gradient" % (case[0], name))
        ent.append(("grad." + name, KIND_F64, list(t.shape), t.grad.flatten().tolist()))
    return ent


def encode(entries):
    """The fixture bytes of a list of entries."""
    out = [FX_MAGIC, struct.pack("<II", FX_VERSION, len(entries))]
    for name, kind, dims, data in entries:
        nb = name.encode("utf-8")
        out.append(struct.pack("<I", len(nb)) + nb)
        if kind == KIND_TEXT:
            dims = [len(data)]
        out.append(struct.pack("<II", kind, len(dims)))
        out.append(struct.pack("<%dI" % len(dims), *dims))
        n = 1
        for d in dims:
            n *= d
        if kind == KIND_TEXT:
            out.append(data)
        elif kind == KIND_I32:
            assert len(data) == n
            out.append(struct.pack("<%di" % n, *data))
        else:
            assert len(data) == n
            out.append(struct.pack("<%dd" % n, *data))
    return b"".join(out)


def write_all(outdir):
    """Write every case's fixture into outdir (created if missing)."""
    os.makedirs(outdir, exist_ok=True)
    total = 0
    for case in CASES:
        blob = encode(run_case(case))
        path = os.path.join(outdir, "twin_%s.fx" % case[0])
        with open(path, "wb") as f:
            f.write(blob)
        total += len(blob)
    print("twin: wrote %d fixtures (%d bytes) to %s" % (len(CASES), total, outdir))


def check_semantics():
    """The two pieces where an off-by-one hides, against plain loops written
    from the spec: the causal conv (w[c, K-1] weighs the current token) and the
    attention window (query i sees keys i-w < j <= i)."""
    torch.manual_seed(7)
    Bn, Tn, Cn, K = 2, 7, 3, 3
    h = torch.randn(Bn, Tn, Cn, dtype=torch.float64)
    w = torch.randn(Cn, K, dtype=torch.float64)
    b = torch.randn(Cn, dtype=torch.float64)
    got = causal_conv(h, w, b)
    for bb in range(Bn):
        for t in range(Tn):
            for c in range(Cn):
                want = b[c].item()
                for j in range(K):
                    s = t - (K - 1) + j
                    if s >= 0:
                        want += w[c, j].item() * h[bb, s, c].item()
                assert abs(got[bb, t, c].item() - want) < 1e-12, "conv differs"
    D, window = 2, 3
    q, k, v = (torch.randn(1, 1, Tn, D, dtype=torch.float64) for _ in range(3))
    got = softmax_attention(q, k, v, window)
    for i in range(Tn):
        keys = [j for j in range(Tn) if i - window < j <= i]
        s = [sum(q[0, 0, i, d].item() * k[0, 0, j, d].item() for d in range(D)) / math.sqrt(D)
             for j in keys]
        m = max(s)
        e = [math.exp(x - m) for x in s]
        for d in range(D):
            want = sum(e[n] * v[0, 0, j, d].item() for n, j in enumerate(keys)) / sum(e)
            assert abs(got[0, 0, i, d].item() - want) < 1e-12, "window differs"
    print("twin check: conv taps and attention window match plain loops")


def check_forms():
    """The three linear-attention forms give the same logits on every linear
    case (a form that mis-handles the short last chunk shows up here)."""
    worst = 0.0
    for case in CASES:
        if case[2]["mixer"] != "linear":
            continue
        _, p, tok, tgt, model, mixer = build_case(case)
        ref, _ = forward(p, tok, tgt, model, mixer, "recurrent")
        for form in ("parallel", "chunkwise"):
            got, _ = forward(p, tok, tgt, model, mixer, form)
            d = ((got - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, d)
            if d > 1e-12:
                raise AssertionError("%s: %s differs from recurrent by %.3g" %
                                     (case[0], form, d))
    print("twin check: linear forms agree (max relative difference %.3g)" % worst)


def check_gradients(stems):
    """torch.autograd.gradcheck of the loss w.r.t. every parameter of the named
    cases (float64 central differences against autograd)."""
    for case in CASES:
        if case[0] not in stems:
            continue
        _, p, tok, tgt, model, mixer = build_case(case)
        names = list(p.keys())
        leaves = [p[n].clone().requires_grad_(True) for n in names]

        def loss_of(*ts, names=names, tok=tok, tgt=tgt, model=model, mixer=mixer):
            return forward(dict(zip(names, ts)), tok, tgt, model, mixer)[1]

        ok = torch.autograd.gradcheck(loss_of, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)
        print("twin check: gradcheck %s: %s (%d parameters)" %
              (case[0], "ok" if ok else "FAILED", sum(t.numel() for t in leaves)))


def main(argv):
    """Command line: OUTDIR writes the fixtures, --check runs the self-checks."""
    torch.set_num_threads(1)
    if len(argv) == 2 and argv[1] == "--check":
        check_semantics()
        check_forms()
        check_gradients({"softmax_b", "linear_a"})
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: twin.py OUTDIR | --check\n")
        return 2
    write_all(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
