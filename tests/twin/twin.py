#!/usr/bin/python3
"""twin.py: the PyTorch twin of memlab's model, and the fixtures it writes.

An independent float64 implementation of the model described in model.h and
docs/models.md (softmax attention; the linear family: linear attention,
DeltaNet, gated DeltaNet, Mamba-2 scalar decay, Based; Mixture-of-Memories;
the pre-norm block with optional short causal conv and MLP, tied or untied LM
head, learned or no positions). For each case it builds the model from a fixed spec, fills the
weights with seeded random values, runs one forward and backward on a seeded
batch, and writes one fixture file (format below) that tests/test_twin.c diffs
against the C model. Parameters are kept under their C names and in the C
layout ([out, in] for linear maps, [C, K] for conv taps), so nothing is renamed
or transposed on the way out.

It deliberately does not use the C code's structure: attention is a masked
softmax over the full score matrix, the plain linear mixer runs whichever of its
three forms the spec names, every other rule runs token by token from its
definition (whatever form the spec names for the C side), Based's feature map
keeps all d^2 products as the Based code does (the C map keeps the upper
triangle), MoM keeps one explicit state per memory and freezes the unselected
ones with torch.where, and gradients come from torch.autograd. The loss includes
the MoM load-balancing loss, whose value MoM fixtures also hold apart ("aux");
most MoM cases set aux_coef to 0, mom_e weighs it enough (0.5) that its
gradient through the router shows. It does not parse
YAML (the specs are written here from the same dicts that build the model) and
it does not generate MQAR data (inputs and targets are random tokens).

Usage:
    /usr/bin/python3 tests/twin/twin.py OUTDIR [CASE...]
                                                write OUTDIR/twin_<mixer>_<letter>.fx
                                                (every case, or the named ones)
    /usr/bin/python3 tests/twin/twin.py --check    self-checks (slow-ish, not for CI):
        conv taps and the attention window against plain loops, the three
        linear-attention forms agree on every linear case, the upper-triangle
        Taylor map has the kernel of Based's full one, and
        torch.autograd.gradcheck passes on one softmax, one linear, one gated
        DeltaNet and one MoM case.

Fixture format (little-endian): b"MLFX", u32 version (1), u32 entry count; per
entry: u32 name length, name bytes, u32 kind (0 float64, 1 int32, 2 UTF-8 text),
u32 ndim, u32 dims[ndim], then the data (text: ndim 1, dims[0] = byte length).
Entries: spec, input [B,T], target [B,T] (-1 = unsupervised), loss [1],
logits [B,T,V], aux [1] (MoM: the load-balancing loss inside loss), every
parameter by name, and grad.<name> for each.

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


# Keys of the linear-family entries (mixer_linear.c), every key written out so
# that no C default is assumed; `entry` picks the entry's defaults.
LINFAM_DEFAULTS = {
    "linear": dict(rule="additive", feature_map="elu1", normalize=True, eps=1e-6,
                   feature_dim=0, qk_l2norm=False, out_norm="none"),
    "deltanet": dict(rule="delta", feature_map="silu", normalize=False, eps=1e-6,
                     feature_dim=0, qk_l2norm=True, out_norm="rms"),
    "gated_deltanet": dict(rule="gated_delta", feature_map="silu", normalize=False, eps=1e-6,
                           feature_dim=0, qk_l2norm=True, out_norm="gated"),
    "mamba2": dict(rule="decay", feature_map="silu", normalize=False, eps=1e-6,
                   feature_dim=0, qk_l2norm=False, out_norm="gated"),
    "based": dict(rule="additive", feature_map="taylor", normalize=True, eps=1e-12,
                  feature_dim=16, qk_l2norm=False, out_norm="none"),
}


def linfam_keys(entry, **over):
    k = {"heads": 2}
    k.update(LINFAM_DEFAULTS[entry])
    k.update({"short_conv": 0, "dt_min": 0.001, "dt_max": 0.1, "chunk": 4,
              "form": "chunkwise", "qkv_bias": False})
    k.update(over)
    return k


def mom_keys(**over):
    k = {"heads": 2, "memories": 4, "topk": 2, "shared": True, "rule": "gated_delta",
         "feature_map": "silu", "feature_dim": 0, "qk_l2norm": True, "out_norm": "gated",
         "aux_coef": 0.0, "dt_min": 0.001, "dt_max": 0.1, "chunk": 4, "form": "chunkwise"}
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
    ("linear_f", 206, model_keys(mixer="linear", conv=0),
     linfam_keys("linear", rule="decay", normalize=False, feature_map="silu", qk_l2norm=True,
                 out_norm="gated", short_conv=3, feature_dim=3, dt_min=0.01, dt_max=0.5)),
    ("deltanet_a", 301, model_keys(mixer="deltanet"), linfam_keys("deltanet")),
    ("deltanet_b", 302,
     model_keys(mixer="deltanet", conv=0, norm="rms", tie_embeddings=False, position="learned"),
     linfam_keys("deltanet", heads=1, feature_map="elu1", qk_l2norm=False, out_norm="none",
                 short_conv=3, qkv_bias=True, form="recurrent", chunk=3)),
    ("gated_deltanet_a", 311, model_keys(mixer="gated_deltanet"),
     linfam_keys("gated_deltanet", chunk=3, dt_min=0.05, dt_max=0.5)),
    ("gated_deltanet_b", 312,
     model_keys(mixer="gated_deltanet", mlp=False, norm="rms", tie_embeddings=False),
     linfam_keys("gated_deltanet", heads=1, feature_dim=6, out_norm="rms", form="recurrent")),
    ("mamba2_a", 321, model_keys(mixer="mamba2", conv=4), linfam_keys("mamba2", dt_max=0.9)),
    ("based_a", 331, model_keys(mixer="based"), linfam_keys("based", feature_dim=3)),
    ("based_b", 332, model_keys(mixer="based", norm="rms", mlp=False),
     linfam_keys("based", heads=1, feature_dim=4, form="recurrent", qkv_bias=True,
                 short_conv=2, eps=1e-6)),
    ("mom_a", 401, model_keys(mixer="mom"), mom_keys()),
    ("mom_b", 402, model_keys(mixer="mom", conv=0, norm="rms", tie_embeddings=False),
     mom_keys(rule="delta", memories=3, topk=1, shared=False, out_norm="rms",
              form="recurrent")),
    ("mom_c", 403, model_keys(mixer="mom", mlp=False),
     mom_keys(rule="additive", memories=2, topk=2, feature_map="taylor", feature_dim=2,
              qk_l2norm=False, out_norm="none", heads=1)),
    ("mom_d", 404, model_keys(mixer="mom", conv=4), mom_keys(rule="decay", memories=3, chunk=3,
                                                          dt_min=0.02, dt_max=0.6)),
    ("mom_e", 405, model_keys(mixer="mom", mlp=False), mom_keys(aux_coef=0.5, topk=1)),
]

RULE_DELTA = ("delta", "gated_delta")
RULE_DECAY = ("decay", "gated_delta")


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
        if model["mixer"] == "mom":
            mom_params(p, pre + "mixer.", C, mixer, mat, bias, normw)
        else:
            linfam_params(p, pre + "mixer.", C, mixer, mat, bias, normw)
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


def head_dims(C, mixer):
    """(H, Dk, Dv) of a linear-family or MoM mixer (softmax: Dk = Dv)."""
    H = mixer["heads"]
    Dv = C // H
    Dk = mixer.get("feature_dim", 0) or Dv
    return H, Dk, Dv


def linfam_params(p, pre, C, mixer, mat, bias, normw):
    """Mixer tensors of softmax and the linear family, in mixer_linear.c's
    order (the plain softmax/linear cases draw exactly what they always did)."""
    H, Dk, Dv = head_dims(C, mixer)
    Cp = 2 * H * Dk + C
    rule = mixer.get("rule", "additive")
    mat(pre + "wqkv", Cp, C)
    if mixer["qkv_bias"]:
        bias(pre + "bqkv", Cp)
    if mixer.get("short_conv", 0):
        mat(pre + "conv.w", Cp, mixer["short_conv"])
    if rule in RULE_DELTA:
        mat(pre + "wbeta", H, C)
    if rule in RULE_DECAY:
        mat(pre + "wdecay", H, C)
        bias(pre + "A_log", H)
        bias(pre + "dt_bias", H)
    if mixer.get("out_norm", "none") != "none":
        normw(pre + "onorm.w", Dv)
    if mixer.get("out_norm", "none") == "gated":
        mat(pre + "wgate", C, C)
    mat(pre + "wo", C, C)
    bias(pre + "bo", C)


def mom_params(p, pre, C, mixer, mat, bias, normw):
    """MoM's tensors in mixer_mom.c's order; row block m of wk, wv, wbeta,
    wdecay is memory m, the last one the shared memory."""
    H, Dk, Dv = head_dims(C, mixer)
    Mt = mixer["memories"] + (1 if mixer["shared"] else 0)
    rule = mixer["rule"]
    mat(pre + "wq", H * Dk, C)
    mat(pre + "wk", Mt * H * Dk, C)
    mat(pre + "wv", Mt * C, C)
    if rule in RULE_DELTA:
        mat(pre + "wbeta", Mt * H, C)
    if rule in RULE_DECAY:
        mat(pre + "wdecay", Mt * H, C)
        bias(pre + "A_log", H)
        bias(pre + "dt_bias", H)
    mat(pre + "wrouter", mixer["memories"], C)
    if mixer["out_norm"] != "none":
        normw(pre + "onorm.w", Dv)
    if mixer["out_norm"] == "gated":
        mat(pre + "wgate", C, C)
    mat(pre + "wo", C, C)
    bias(pre + "bo", C)


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


def taylor_full(x):
    """Based's TaylorExp: [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))] with all
    d^2 products (the C map stores the upper triangle; dot products agree)."""
    D = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(start_dim=-2) / math.sqrt(2.0 * D)
    return torch.cat([torch.ones_like(x[..., :1]), x / D ** 0.25, x2], dim=-1)


def taylor_triangle(x):
    """The C layout: the upper triangle, off-diagonal products weighted sqrt(2)
    more (used only by --check, to compare kernels)."""
    D = x.shape[-1]
    iu = torch.triu_indices(D, D)
    quad = (x.unsqueeze(-1) * x.unsqueeze(-2))[..., iu[0], iu[1]]
    coef = torch.where(iu[0] == iu[1], torch.tensor(1 / math.sqrt(2.0 * D), dtype=x.dtype),
                       torch.tensor(1 / math.sqrt(D), dtype=x.dtype))
    return torch.cat([torch.ones_like(x[..., :1]), x / D ** 0.25, quad * coef], dim=-1)


def qk_map(x, mixer):
    """Feature map on q or k heads [..., D], then the optional L2 norm
    (x / sqrt(|x|^2 + 1e-6))."""
    kind = mixer["feature_map"]
    if kind == "silu":
        y = F.silu(x)
    elif kind == "taylor":
        y = taylor_full(x)
    else:
        y = feature_map(x, kind)
    if mixer.get("qk_l2norm", False):
        y = y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-6)
    return y


def dt_shift(H, mixer):
    """Per-head softplus^-1 of the log-spaced initial time step (linfam.h)."""
    lo, hi = math.log(mixer["dt_min"]), math.log(mixer["dt_max"])
    return torch.tensor([math.log(math.expm1(math.exp(lo + (h + 0.5) / H * (hi - lo))))
                         for h in range(H)], dtype=torch.float64)


def log_decay(z, p, pre, H, mixer):
    """g = -exp(A_log) softplus(z + dt_bias + shift) for z [..., H]."""
    return -torch.exp(p[pre + "A_log"]) * F.softplus(z + p[pre + "dt_bias"] + dt_shift(H, mixer))


def rule_step(S, k, v, beta, g, rule):
    """One token of the rule on states S [B,H,F,Dv]: decay first, then the
    delta correction (u = v - S^T k) or the plain write."""
    if rule in RULE_DECAY:
        S = S * torch.exp(g)[..., None, None]
    if rule in RULE_DELTA:
        u = v - torch.einsum("bhkv,bhk->bhv", S, k)
        return S + beta[..., None, None] * k[..., :, None] * u[..., None, :]
    return S + k[..., :, None] * v[..., None, :]


def out_norm(o, h, p, pre, H, mixer):
    """none, rms (per head, weight shared by heads) or gated (rms * silu(h Wgate))."""
    kind = mixer["out_norm"]
    if kind == "none":
        return o
    Bn, Tn, Cn = o.shape
    oh = o.view(Bn, Tn, H, Cn // H)
    y = oh * torch.rsqrt((oh * oh).mean(-1, keepdim=True) + 1e-5) * p[pre + "onorm.w"]
    y = y.reshape(Bn, Tn, Cn)
    if kind == "gated":
        y = y * F.silu(F.linear(h, p[pre + "wgate"]))
    return y


def linfam_mixer(h, p, pre, model, mixer):
    """A linear-family mixer from its definition, token by token (any rule)."""
    C = model["d_model"]
    H, Dk, Dv = head_dims(C, mixer)
    rule = mixer["rule"]
    qkv = F.linear(h, p[pre + "wqkv"], p.get(pre + "bqkv") if mixer["qkv_bias"] else None)
    if mixer["short_conv"]:
        qkv = causal_conv(qkv, p[pre + "conv.w"], None)
    q = qk_map(split_heads(qkv[..., :H * Dk], H), mixer)
    k = qk_map(split_heads(qkv[..., H * Dk:2 * H * Dk], H), mixer)
    v = split_heads(qkv[..., 2 * H * Dk:], H)
    beta = torch.sigmoid(F.linear(h, p[pre + "wbeta"])) if rule in RULE_DELTA else None
    g = log_decay(F.linear(h, p[pre + "wdecay"]), p, pre, H, mixer) if rule in RULE_DECAY else None
    Bn, _, Tn, Fw = q.shape
    S = torch.zeros(Bn, H, Fw, Dv, dtype=q.dtype)
    z = torch.zeros(Bn, H, Fw, dtype=q.dtype)
    outs = []
    for t in range(Tn):
        S = rule_step(S, k[:, :, t], v[:, :, t], None if beta is None else beta[:, t],
                      None if g is None else g[:, t], rule)
        o = torch.einsum("bhk,bhkv->bhv", q[:, :, t], S)
        if mixer["normalize"]:
            z = z + k[:, :, t]
            o = o / ((q[:, :, t] * z).sum(-1, keepdim=True) + mixer["eps"])
        outs.append(o)
    o = merge_heads(torch.stack(outs, dim=2))
    return F.linear(out_norm(o, h, p, pre, H, mixer), p[pre + "wo"], p[pre + "bo"])


def mom_mixer(h, p, pre, model, mixer, aux=None):
    """Mixture-of-Memories from its definition: one state per memory, updated
    (decay included) only where the token is routed to it, frozen elsewhere;
    the shared memory on every token. aux (a one-element list) receives the
    weighted load-balancing loss."""
    C = model["d_model"]
    H, Dk, Dv = head_dims(C, mixer)
    E, K, rule = mixer["memories"], mixer["topk"], mixer["rule"]
    Mt = E + (1 if mixer["shared"] else 0)
    Bn, Tn, _ = h.shape
    q = qk_map(F.linear(h, p[pre + "wq"]).view(Bn, Tn, H, Dk), mixer)
    k = qk_map(F.linear(h, p[pre + "wk"]).view(Bn, Tn, Mt, H, Dk), mixer)
    v = F.linear(h, p[pre + "wv"]).view(Bn, Tn, Mt, H, Dv)
    beta = (torch.sigmoid(F.linear(h, p[pre + "wbeta"])).view(Bn, Tn, Mt, H)
            if rule in RULE_DELTA else None)
    g = (log_decay(F.linear(h, p[pre + "wdecay"]).view(Bn, Tn, Mt, H), p, pre, H, mixer)
         if rule in RULE_DECAY else None)
    probs = torch.softmax(F.linear(h, p[pre + "wrouter"]), dim=-1)
    top, idx = torch.topk(probs, K, dim=-1)
    # With K = 1 the renormalised weight is exactly 1; written as such, so that
    # autograd's rounding residue (1/s - p/s^2 ~ 1e-17) does not pose as a
    # router gradient (the C side gives exactly 0 there).
    wts = top / top.sum(-1, keepdim=True) if K > 1 else torch.ones_like(top)
    if aux is not None:
        frac = F.one_hot(idx, E).to(probs.dtype).sum(2).mean((0, 1))
        aux[0] = aux[0] + mixer["aux_coef"] * E * (frac * probs.mean((0, 1))).sum()
    Fw = q.shape[-1]
    S = [torch.zeros(Bn, H, Fw, Dv, dtype=q.dtype) for _ in range(Mt)]
    outs = []
    for t in range(Tn):
        o = torch.zeros(Bn, H, Dv, dtype=q.dtype)
        for m in range(Mt):
            if m < E:
                hit = idx[:, t] == m                                # [B,K]
                active = hit.any(-1)
                weight = (wts[:, t] * hit.to(wts.dtype)).sum(-1)    # [B]
            else:
                active = torch.ones(Bn, dtype=torch.bool)
                weight = torch.ones(Bn, dtype=q.dtype)
            new = rule_step(S[m], k[:, t, m], v[:, t, m],
                            None if beta is None else beta[:, t, m],
                            None if g is None else g[:, t, m], rule)
            S[m] = torch.where(active[:, None, None, None], new, S[m])
            o = o + weight[:, None, None] * torch.einsum("bhk,bhkv->bhv", q[:, t], S[m])
        outs.append(o)
    o = torch.stack(outs, dim=1).reshape(Bn, Tn, C)
    return F.linear(out_norm(o, h, p, pre, H, mixer), p[pre + "wo"], p[pre + "bo"])


def mixer_forward(h, p, pre, model, mixer, form=None, aux=None):
    """qkv projection, per-head mixing, output projection (C = H*D)."""
    if model["mixer"] == "mom":
        return mom_mixer(h, p, pre, model, mixer, aux)
    if model["mixer"] != "softmax" and (model["mixer"] != "linear" or "rule" in mixer):
        return linfam_mixer(h, p, pre, model, mixer)
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


def forward(p, tok, tgt, model, mixer, form=None, aux_out=None):
    """Logits [B,T,V] and the loss: the mean cross-entropy over positions with
    target >= 0 plus the mixers' auxiliary losses, whose sum is appended to
    aux_out (a list) when given."""
    Tn = tok.shape[1]
    aux = [0.0]
    x = p["wte"][tok]
    if model["position"] == "learned":
        x = x + p["wpe"][:Tn]
    for l in range(model["n_layers"]):
        pre = "layers.%d." % l
        h = norm(x, p, pre + "norm1", model)
        if model["conv"] > 0:
            h = causal_conv(h, p[pre + "conv.w"], p[pre + "conv.b"])
        x = x + mixer_forward(h, p, pre + "mixer.", model, mixer, form, aux)
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
    if aux_out is not None:
        aux_out.append(float(aux[0]))
    return logits, loss + aux[0]


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
    aux = []
    logits, loss = forward(p, tok, tgt, model, mixer, aux_out=aux)
    loss.backward()
    V = logits.shape[-1]
    ent = [
        ("spec", KIND_TEXT, None, spec.encode("utf-8")),
        ("input", KIND_I32, [B, T], tok.flatten().tolist()),
        ("target", KIND_I32, [B, T], tgt.flatten().tolist()),
        ("loss", KIND_F64, [1], [loss.item()]),
        ("logits", KIND_F64, [B, T, V], logits.detach().flatten().tolist()),
    ]
    if model["mixer"] == "mom":
        ent.append(("aux", KIND_F64, [1], aux))
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


def write_all(outdir, stems=None):
    """Write every case's fixture (or those of the named stems) into outdir
    (created if missing)."""
    cases = [c for c in CASES if not stems or c[0] in stems]
    unknown = set(stems or ()) - {c[0] for c in CASES}
    if unknown:
        raise SystemExit("twin: no case named %s" % ", ".join(sorted(unknown)))
    os.makedirs(outdir, exist_ok=True)
    total = 0
    for case in cases:
        blob = encode(run_case(case))
        path = os.path.join(outdir, "twin_%s.fx" % case[0])
        with open(path, "wb") as f:
            f.write(blob)
        total += len(blob)
    print("twin: wrote %d fixtures (%d bytes) to %s" % (len(cases), total, outdir))


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


def check_taylor():
    """The C layout's upper-triangle Taylor map has the same kernel as Based's
    full map, 1 + q.k/sqrt(d) + (q.k)^2/(2d), and width 1 + d + d(d+1)/2."""
    torch.manual_seed(9)
    for D in (1, 3, 16):
        q, k = torch.randn(2, D, dtype=torch.float64)
        s = (q * k).sum()
        want = 1 + s / math.sqrt(D) + s * s / (2 * D)
        full = (taylor_full(q) * taylor_full(k)).sum()
        tri = (taylor_triangle(q) * taylor_triangle(k)).sum()
        assert abs(full - want) < 1e-12 and abs(tri - want) < 1e-12, "taylor kernel differs"
        assert taylor_triangle(q).shape[-1] == 1 + D + D * (D + 1) // 2
    print("twin check: Taylor maps (full and upper triangle) have the same kernel")


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
        check_taylor()
        check_gradients({"softmax_b", "linear_a", "gated_deltanet_a", "mom_a"})
        return 0
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: twin.py OUTDIR [CASE...] | --check\n")
        return 2
    write_all(argv[1], argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
