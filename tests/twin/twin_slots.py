#!/usr/bin/python3
"""twin_slots.py: the PyTorch twin of memlab's slot bottleneck mixer.

An independent float64 implementation of models/mixer_slots.c (both variants,
with and without the slot MLP and the GRU gate) inside the same pre-norm block
as twin.py, from whose file it takes only the pieces that do not depend on the
mixer: the norms, the causal conv, the batch, the spec text helpers and the
fixture encoder. Its own structure is the plain reading of models.md section 4:
a Python loop over chunks, each read done on the explicit concatenation
[slots ; chunk tokens] with a boolean mask, each write on [slots ; chunk], and
gradients from torch.autograd. Nothing is shared with the C code's packing.

Fixtures (same format as twin.py, see there):
    OUTDIR/twin_slots_<letter>.fx           chunk variant
    OUTDIR/context/twin_slots_<letter>.fx   context variant
The context variant needs the task's context boundary, which the generic twin
test (tests/test_twin.c) does not pass to the model; tests/test_slots.c checks
the context/ fixtures with the boundary set.

Usage:
    /usr/bin/python3 tests/twin/twin_slots.py OUTDIR
    /usr/bin/python3 tests/twin/twin_slots.py --check   torch.autograd.gradcheck
        of one case of each variant (slow-ish, not for CI)
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402  (the block pieces and the fixture format)

LN_EPS = 1e-5  # the mixer's own LayerNorms


def slot_keys(**over):
    k = {
        "variant": "chunk",
        "slots": 3,
        "chunk": 4,
        "heads": 2,
        "gate": "none",
        "slot_mlp_ratio": 2,
        "qkv_bias": True,
    }
    k.update(over)
    return k


M = twin.model_keys
CASES = [
    ("a", 301, M(mixer="slots"), slot_keys()),
    ("b", 302,
     M(mixer="slots", conv=0, norm="rms", tie_embeddings=False, position="learned"),
     slot_keys(slots=1, chunk=3, heads=1, gate="gru", slot_mlp_ratio=0, qkv_bias=False)),
    ("c", 303, M(mixer="slots", mlp=False),
     slot_keys(slots=2, chunk=16, gate="gru", slot_mlp_ratio=1)),
    ("d", 304, M(mixer="slots", conv=2),
     slot_keys(variant="context", slots=3, chunk=3, heads=2, gate="gru")),
    ("e", 305, M(mixer="slots", n_layers=3, norm="rms", position="learned"),
     slot_keys(variant="context", slots=2, chunk=16, heads=4, slot_mlp_ratio=1,
               qkv_bias=False)),
    ("f", 306, M(mixer="slots", mlp=False, conv=4),
     slot_keys(variant="context", slots=4, chunk=2, heads=1, gate="none", slot_mlp_ratio=0)),
]


def context_len():
    """MQAR's context boundary: the 2N key-value tokens."""
    return 2 * twin.TASK["num_kv_pairs"]


def make_params(model, mixer, V, L):
    """Random float64 parameters under their C names, in C layout ([out, in])."""
    C = model["d_model"]
    R = model["mlp_ratio"] * C
    Rs = mixer["slot_mlp_ratio"] * C
    K = model["conv"]
    layer_norm = model["norm"] == "layer"
    p = {}

    def mat(name, rows, cols):
        p[name] = 0.3 * torch.randn(rows, cols, dtype=torch.float64)

    def bias(name, n):
        p[name] = 0.1 * torch.randn(n, dtype=torch.float64)

    def normw(name, n):
        p[name] = 1.0 + 0.1 * torch.randn(n, dtype=torch.float64)

    def proj(pre, name):
        mat(pre + "wqkv" + name, 3 * C, C)
        if mixer["qkv_bias"]:
            bias(pre + "bqkv" + name, 3 * C)
        mat(pre + "wo" + name, C, C)
        bias(pre + "bo" + name, C)

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
        mx = pre + "mixer."
        p[mx + "slots"] = torch.randn(mixer["slots"], C, dtype=torch.float64)
        normw(mx + "norm_s.w", C)
        bias(mx + "norm_s.b", C)
        proj(mx, "")
        proj(mx, "_w")
        if mixer["slot_mlp_ratio"] > 0 or mixer["gate"] == "gru":
            normw(mx + "norm_m.w", C)
            bias(mx + "norm_m.b", C)
        if mixer["slot_mlp_ratio"] > 0:
            mat(mx + "mlp.w1", Rs, C)
            bias(mx + "mlp.b1", Rs)
            mat(mx + "mlp.w2", C, Rs)
            bias(mx + "mlp.b2", C)
        if mixer["gate"] == "gru":
            mat(mx + "gate.w", C, 2 * C)
            bias(mx + "gate.b", C)
        if mixer["variant"] == "context":
            normw(mx + "norm_x.w", C)
            bias(mx + "norm_x.b", C)
            proj(mx, "_x")
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


class Slots:
    """One layer's slot mixer: parameters by short name, sizes, and the maths."""

    def __init__(self, p, pre, model, mixer):
        self.p = {k[len(pre):]: v for k, v in p.items() if k.startswith(pre)}
        self.C = model["d_model"]
        self.H = mixer["heads"]
        self.mixer = mixer

    def w(self, name):
        return self.p.get(name)

    def ln(self, x, name):
        return F.layer_norm(x, (self.C,), self.p[name + ".w"], self.p[name + ".b"], LN_EPS)

    def project(self, x, suffix, part):
        """Rows of x through part (0 q, 1 k, 2 v) of the Wqkv<suffix> projection."""
        C = self.C
        w = self.p["wqkv" + suffix][part * C:(part + 1) * C]
        b = self.w("bqkv" + suffix)
        return F.linear(x, w, None if b is None else b[part * C:(part + 1) * C])

    def attend(self, q, k, v, allowed=None):
        """Per-head softmax attention of q [B,Tq,C] over k, v [B,Tk,C];
        allowed [Tq,Tk] bool (None: everything)."""
        Bn, Tq, C = q.shape
        Tk, H = k.shape[1], self.H
        D = C // H

        def heads(x, n):
            return x.reshape(Bn, n, H, D).transpose(1, 2)

        s = heads(q, Tq) @ heads(k, Tk).transpose(-1, -2) / math.sqrt(D)
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        o = torch.softmax(s, dim=-1) @ heads(v, Tk)
        return o.transpose(1, 2).reshape(Bn, Tq, C)

    def write(self, Mst, X):
        """The slot update: Mst [B,K,C] after reading the chunk X [B,n,C]."""
        Mh = self.ln(Mst, "norm_s")
        rows = torch.cat([Mh, X], dim=1)
        A = self.attend(self.project(Mh, "_w", 0), self.project(rows, "_w", 1),
                        self.project(rows, "_w", 2))
        Mt = Mst + F.linear(A, self.p["wo_w"], self.p["bo_w"])
        Hc = Mt
        if self.mixer["slot_mlp_ratio"] > 0:
            Nm = self.ln(Mt, "norm_m")
            Hc = Mt + F.linear(F.gelu(F.linear(Nm, self.p["mlp.w1"], self.p["mlp.b1"])),
                               self.p["mlp.w2"], self.p["mlp.b2"])
        if self.mixer["gate"] == "gru":
            Nm = self.ln(Mt, "norm_m")
            z = torch.sigmoid(F.linear(torch.cat([Mh, Nm], dim=-1), self.p["gate.w"],
                                       self.p["gate.b"]))
            return (1 - z) * Mst + z * Hc
        return Hc

    def read(self, front, X):
        """Token i of the chunk X [B,n,C] attends to the rows `front` [B,S,C]
        (already normed slots) and to chunk tokens up to itself."""
        S, n = front.shape[1], X.shape[1]
        rows = torch.cat([front, X], dim=1)
        i = torch.arange(n).view(n, 1)
        j = torch.arange(S + n).view(1, S + n)
        return self.attend(self.project(X, "", 0), self.project(rows, "", 1),
                           self.project(rows, "", 2), j <= i + S)

    def segment(self, x, ctx_rows=None):
        """The chunk variant on the tokens x [B,n,C], slots from M_0; ctx_rows
        (normed M_ctx) in front of every chunk's slots when given."""
        Bn, n, C = x.shape
        Ch = self.mixer["chunk"]
        Mst = self.p["slots"].unsqueeze(0).expand(Bn, -1, -1)
        outs = []
        for s in range(0, n, Ch):
            e = min(s + Ch, n)
            front = self.ln(Mst, "norm_s")
            if ctx_rows is not None:
                front = torch.cat([ctx_rows, front], dim=1)
            outs.append(self.read(front, x[:, s:e]))
            if e < n:
                Mst = self.write(Mst, x[:, s:e])
        return torch.cat(outs, dim=1)

    def forward(self, x, lc):
        Tn = x.shape[1]
        if self.mixer["variant"] == "chunk":
            o = self.segment(x)
        else:
            lc = max(0, min(lc, Tn))
            parts = []
            if lc > 0:
                parts.append(self.segment(x[:, :lc]))
            if lc < Tn:
                Bn = x.shape[0]
                M0 = self.p["slots"].unsqueeze(0).expand(Bn, -1, -1)
                M1 = self.write(M0, x[:, :lc])
                Nx = self.ln(M1, "norm_x")
                ox = self.attend(self.project(Nx, "_x", 0), self.project(Nx, "_x", 1),
                                 self.project(Nx, "_x", 2))
                Mctx = M1 + F.linear(ox, self.p["wo_x"], self.p["bo_x"])
                parts.append(self.segment(x[:, lc:], self.ln(Mctx, "norm_s")))
            o = torch.cat(parts, dim=1)
        return F.linear(o, self.p["wo"], self.p["bo"])


def forward(p, tok, tgt, model, mixer, lc):
    """Logits [B,T,V] and the mean cross-entropy over positions with target >= 0."""
    Tn = tok.shape[1]
    x = p["wte"][tok]
    if model["position"] == "learned":
        x = x + p["wpe"][:Tn]
    for l in range(model["n_layers"]):
        pre = "layers.%d." % l
        h = twin.norm(x, p, pre + "norm1", model)
        if model["conv"] > 0:
            h = twin.causal_conv(h, p[pre + "conv.w"], p[pre + "conv.b"])
        x = x + Slots(p, pre + "mixer.", model, mixer).forward(h, lc)
        if model["mlp"]:
            h = twin.norm(x, p, pre + "norm2", model)
            h = F.gelu(F.linear(h, p[pre + "mlp.w1"], p[pre + "mlp.b1"]))
            x = x + F.linear(h, p[pre + "mlp.w2"], p[pre + "mlp.b2"])
    y = twin.norm(x, p, "norm_f", model)
    head = p["wte"] if model["tie_embeddings"] else p["lm_head"]
    logits = y @ head.t()
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-1,
                           reduction="mean")
    return logits, loss


def spec_text(stem, model, mixer):
    """The full memlab YAML spec of a case (name, task, model sections)."""
    lines = ["name: twin-slots-" + stem, "task:"]
    lines += ["  %s: %s" % (k, twin.yaml_scalar(v)) for k, v in twin.TASK.items()]
    lines.append("model:")
    lines += ["  %s: %s" % (k, twin.yaml_scalar(v)) for k, v in model.items()]
    lines += ["  %s: %s" % (k, twin.yaml_scalar(v)) for k, v in mixer.items()]
    return "\n".join(lines) + "\n"


def build_case(case):
    stem, seed, model, mixer = case
    torch.manual_seed(seed)
    V, L = twin.TASK["vocab_size"], twin.TASK["seq_len"]
    p = make_params(model, mixer, V, L)
    tok, tgt = twin.make_batch(V)
    return spec_text(stem, model, mixer), p, tok, tgt, model, mixer


def run_case(case):
    """The fixture entries of a case. A parameter the forward never uses (the
    write path when one chunk covers the sequence) has gradient zero, as in C."""
    spec, p, tok, tgt, model, mixer = build_case(case)
    for t in p.values():
        t.requires_grad_(True)
    logits, loss = forward(p, tok, tgt, model, mixer, context_len())
    loss.backward()
    Bn, Tn, V = logits.shape
    ent = [
        ("spec", twin.KIND_TEXT, None, spec.encode("utf-8")),
        ("input", twin.KIND_I32, [Bn, Tn], tok.flatten().tolist()),
        ("target", twin.KIND_I32, [Bn, Tn], tgt.flatten().tolist()),
        ("loss", twin.KIND_F64, [1], [loss.item()]),
        ("logits", twin.KIND_F64, [Bn, Tn, V], logits.detach().flatten().tolist()),
    ]
    for name, t in p.items():
        ent.append((name, twin.KIND_F64, list(t.shape), t.detach().flatten().tolist()))
    for name, t in p.items():
        g = t.grad if t.grad is not None else torch.zeros_like(t)
        ent.append(("grad." + name, twin.KIND_F64, list(t.shape), g.flatten().tolist()))
    return ent


def write_all(outdir):
    """Write every case's fixture: chunk variant into outdir, context variant
    into outdir/context."""
    total = 0
    for case in CASES:
        sub = outdir if case[3]["variant"] == "chunk" else os.path.join(outdir, "context")
        os.makedirs(sub, exist_ok=True)
        blob = twin.encode(run_case(case))
        with open(os.path.join(sub, "twin_slots_%s.fx" % case[0]), "wb") as f:
            f.write(blob)
        total += len(blob)
    print("twin_slots: wrote %d fixtures (%d bytes) to %s" % (len(CASES), total, outdir))


def check_gradients(stems):
    """torch.autograd.gradcheck of the loss w.r.t. every parameter of the cases."""
    for case in CASES:
        if case[0] not in stems:
            continue
        _, p, tok, tgt, model, mixer = build_case(case)
        names = list(p.keys())
        leaves = [p[n].clone().requires_grad_(True) for n in names]

        def loss_of(*ts, names=names, tok=tok, tgt=tgt, model=model, mixer=mixer):
            return forward(dict(zip(names, ts)), tok, tgt, model, mixer, context_len())[1]

        ok = torch.autograd.gradcheck(loss_of, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)
        print("twin_slots check: gradcheck %s: %s" % (case[0], "ok" if ok else "FAILED"))


def main(argv):
    torch.set_num_threads(1)
    if len(argv) == 2 and argv[1] == "--check":
        check_gradients({"b", "d"})
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: twin_slots.py OUTDIR | --check\n")
        return 2
    write_all(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
