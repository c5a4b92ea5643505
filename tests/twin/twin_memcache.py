#!/usr/bin/python3
"""twin_memcache.py: the PyTorch twin of memlab's Memory Caching mixer.

An independent float64 implementation of Memory Caching as docs/models.md
section 5 defines it (over the linear-family rules of section 2), inside the
same pre-norm block as twin.py. From twin.py it takes the block (norms, causal
conv, batch, spec helpers, fixture encoder) and the linear family's pieces
that do not depend on caching (feature maps, gates, one token of a rule, the
output norm). The caching itself is written here in the plainest form, token
by token, with nothing shared with the C code's chunking or GEMM batching:

  - token t is in segment s = t // c; its cached memories are the blocks of
    finished segments it reads: constant segments: every segment i < s;
    log segments: the blocks of the binary decomposition of s (s = 2^a + 2^b
    + ..., a > b: segments [0, 2^a), [2^a, 2^a + 2^b), ...);
  - every memory is recomputed from zero by running the rule over its tokens
    (a block [lo, hi): checkpoint init: tokens 0 .. hi*c - 1; fresh: tokens
    lo*c .. hi*c - 1), the online memory over tokens 0 .. t (checkpoint) or
    s*c .. t (fresh);
  - read: S^T q (divided by q.z + eps when normalising); pools: the mean of
    the mixer input h (pool x) or of the keys phi(k) (pool k) over a block's
    tokens, over s*c .. t for the online memory; scores <u_t, pool>, u = h Wu^T;
  - residual: sum of the reads; grm: softmax-weighted reads; soup: weighted
    numerators over weighted denominators; ssc: grm over the top-K cached
    memories by score (ties to the older) plus the online one;
  - cache_grad false: cached states and their pools .detach()ed.
Gradients come from torch.autograd.

Fixtures (same format as twin.py): OUTDIR/memcache/memcache_<letter>.fx. They
live in a subdirectory because tests/test_memcache.c checks them (the generic
twin test reads only OUTDIR/*.fx).

Usage:
    /usr/bin/python3 tests/twin/twin_memcache.py OUTDIR
    /usr/bin/python3 tests/twin/twin_memcache.py --check   torch.autograd.gradcheck
        of two cases (slow-ish, not for CI)
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402  (the block pieces, the linear family and the fixture format)


def mc_keys(**over):
    """Every key of the memcache mixer written out (no C default assumed)."""
    k = {
        "heads": 2,
        "rule": "additive",
        "feature_map": "elu1",
        "feature_dim": 0,
        "qk_l2norm": False,
        "normalize": True,
        "eps": 1e-6,
        "out_norm": "none",
        "short_conv": 0,
        "dt_min": 0.001,
        "dt_max": 0.1,
        "chunk": 2,
        "form": "chunkwise",
        "qkv_bias": False,
        "segment": 3,
        "segments": "constant",
        "seg_init": "checkpoint",
        "aggregate": "grm",
        "cache_topk": 2,
        "cache_grad": True,
        "pool": "x",
    }
    k.update(over)
    return k


M = twin.model_keys
CASES = [
    ("a", 401, M(mixer="memcache"), mc_keys()),
    ("b", 402, M(mixer="memcache", conv=0, norm="rms", position="learned"),
     mc_keys(rule="delta", feature_map="silu", normalize=False, qk_l2norm=True,
             out_norm="rms", segments="log", seg_init="fresh", segment=2, pool="k")),
    ("c", 403, M(mixer="memcache", mlp=False),
     mc_keys(rule="decay", feature_map="silu", normalize=False, out_norm="gated",
             aggregate="residual", seg_init="fresh", segment=4, heads=1)),
    ("d", 404, M(mixer="memcache", tie_embeddings=False),
     mc_keys(feature_map="identity", normalize=False, aggregate="residual", segments="log",
             segment=1, chunk=3)),
    ("e", 405, M(mixer="memcache", conv=2),
     mc_keys(rule="gated_delta", feature_map="silu", normalize=False, qk_l2norm=True,
             out_norm="gated", aggregate="ssc", cache_topk=1, segment=2, short_conv=2,
             qkv_bias=True)),
    ("f", 406, M(mixer="memcache", norm="rms"),
     mc_keys(aggregate="ssc", cache_topk=1, segments="log", seg_init="fresh", segment=1,
             pool="k", heads=1)),
    ("g", 407, M(mixer="memcache", mlp=False, position="learned"),
     mc_keys(aggregate="soup", seg_init="fresh", segment=3)),
    ("h", 408, M(mixer="memcache"),
     mc_keys(rule="delta", feature_map="silu", normalize=False, qk_l2norm=True,
             aggregate="soup", segments="log", segment=2, cache_grad=False)),
    ("i", 409, M(mixer="memcache", conv=0),
     mc_keys(aggregate="grm", segment=2, cache_grad=False, pool="k")),
    ("j", 410, M(mixer="memcache", norm="rms", tie_embeddings=False),
     mc_keys(rule="decay", feature_map="silu", normalize=False, aggregate="ssc",
             cache_topk=2, segments="log", segment=1, cache_grad=False)),
]


def make_params(model, mixer, V, L):
    """Random float64 parameters under their C names, in C layout ([out, in])."""
    C = model["d_model"]
    R = model["mlp_ratio"] * C
    K = model["conv"]
    layer_norm = model["norm"] == "layer"
    H, Dk, _ = twin.head_dims(C, mixer)
    Fw = twin.qk_map(torch.zeros(1, Dk, dtype=torch.float64), mixer).shape[-1]
    Pw = Fw if mixer["pool"] == "k" else C
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
        twin.linfam_params(p, pre + "mixer.", C, mixer, mat, bias, normw)
        if mixer["aggregate"] != "residual":
            mat(pre + "mixer.wu", H * Pw, C)
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


def cached_blocks(s, log):
    """The finished-segment blocks [lo, hi) segment s reads, oldest first."""
    if not log:
        return [(i, i + 1) for i in range(s)]
    blocks, lo = [], 0
    for bit in reversed(range(s.bit_length())):
        if s >> bit & 1:
            blocks.append((lo, lo + (1 << bit)))
            lo += 1 << bit
    return blocks


class Caching:
    """One layer's Memory Caching mixer on h [B,T,C]."""

    def __init__(self, p, pre, model, mixer, h):
        self.p, self.pre, self.mixer, self.h = p, pre, mixer, h
        C = model["d_model"]
        self.H, self.Dk, self.Dv = twin.head_dims(C, mixer)
        H, Dk = self.H, self.Dk
        self.rule = mixer["rule"]
        self.norm = mixer["normalize"] and self.rule == "additive"
        qkv = F.linear(h, p[pre + "wqkv"], p.get(pre + "bqkv") if mixer["qkv_bias"] else None)
        if mixer["short_conv"]:
            qkv = twin.causal_conv(qkv, p[pre + "conv.w"], None)
        self.q = twin.qk_map(twin.split_heads(qkv[..., :H * Dk], H), mixer)  # [B,H,T,F]
        self.k = twin.qk_map(twin.split_heads(qkv[..., H * Dk:2 * H * Dk], H), mixer)
        self.v = twin.split_heads(qkv[..., 2 * H * Dk:], H)  # [B,H,T,Dv]
        self.beta = (torch.sigmoid(F.linear(h, p[pre + "wbeta"]))
                     if self.rule in twin.RULE_DELTA else None)  # [B,T,H]
        self.g = (twin.log_decay(F.linear(h, p[pre + "wdecay"]), p, pre, H, mixer)
                  if self.rule in twin.RULE_DECAY else None)
        self.u = None
        if mixer["aggregate"] != "residual":
            Bn, Tn, _ = h.shape
            self.u = F.linear(h, p[pre + "wu"]).view(Bn, Tn, H, -1)  # [B,T,H,Pw]
        self.runs = {}

    def run(self, a, b):
        """The rule from zero over tokens a .. b-1: S [B,H,F,Dv], z [B,H,F]."""
        key = (a, b)
        if key not in self.runs:
            Bn, H, _, Fw = self.q.shape
            S = torch.zeros(Bn, H, Fw, self.Dv, dtype=self.q.dtype)
            z = torch.zeros(Bn, H, Fw, dtype=self.q.dtype)
            for t in range(a, b):
                S = twin.rule_step(S, self.k[:, :, t], self.v[:, :, t],
                                   None if self.beta is None else self.beta[:, t],
                                   None if self.g is None else self.g[:, t], self.rule)
                z = z + self.k[:, :, t]
            self.runs[key] = (S, z)
        return self.runs[key]

    def pool(self, a, b):
        """Mean of the pooled rows over tokens a .. b-1, per head [B,H,Pw]."""
        if self.mixer["pool"] == "k":
            return self.k[:, :, a:b].mean(dim=2)
        m = self.h[:, a:b].mean(dim=1)
        return m.unsqueeze(1).expand(-1, self.H, -1)

    def token(self, t):
        """y_t [B,H,Dv]."""
        mixer = self.mixer
        c = mixer["segment"]
        s = t // c
        fresh = mixer["seg_init"] == "fresh"
        mems = []  # (S, z, pool range) oldest first, the online one last
        for lo, hi in cached_blocks(s, mixer["segments"] == "log"):
            S, z = self.run(lo * c if fresh else 0, hi * c)
            pool = self.pool(lo * c, hi * c) if self.u is not None else None
            if not mixer["cache_grad"]:
                S, z = S.detach(), z.detach()
                pool = None if pool is None else pool.detach()
            mems.append((S, z, pool))
        S, z = self.run(s * c if fresh else 0, t + 1)
        mems.append((S, z, self.pool(s * c, t + 1) if self.u is not None else None))

        qt = self.q[:, :, t]
        nums = [torch.einsum("bhk,bhkv->bhv", qt, S) for S, _, _ in mems]
        dens = [(qt * z).sum(-1) for _, z, _ in mems]  # [B,H]
        eps = mixer["eps"]

        def read(i):
            return nums[i] / (dens[i] + eps)[..., None] if self.norm else nums[i]

        agg = mixer["aggregate"]
        if agg == "residual":
            return sum(read(i) for i in range(len(mems)))
        scores = torch.stack([(self.u[:, t] * pool).sum(-1) for _, _, pool in mems], dim=-1)
        if agg == "ssc":
            n = len(mems) - 1
            keep = torch.zeros_like(scores, dtype=torch.bool)
            keep[..., n] = True
            Bn, H, _ = scores.shape
            for b in range(Bn):
                for h in range(H):
                    order = sorted(range(n), key=lambda j: (-scores[b, h, j].item(), j))
                    for j in order[:mixer["cache_topk"]]:
                        keep[b, h, j] = True
            scores = scores.masked_fill(~keep, float("-inf"))
        gam = torch.softmax(scores, dim=-1)  # [B,H,n+1]
        if agg == "soup":
            num = sum(gam[..., i, None] * nums[i] for i in range(len(mems)))
            if not self.norm:
                return num
            den = sum(gam[..., i] * dens[i] for i in range(len(mems)))
            return num / (den + eps)[..., None]
        return sum(gam[..., i, None] * read(i) for i in range(len(mems)))

    def forward(self):
        Tn = self.h.shape[1]
        y = torch.stack([self.token(t) for t in range(Tn)], dim=2)  # [B,H,T,Dv]
        o = twin.out_norm(twin.merge_heads(y), self.h, self.p, self.pre, self.H, self.mixer)
        return F.linear(o, self.p[self.pre + "wo"], self.p[self.pre + "bo"])


def forward(p, tok, tgt, model, mixer):
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
        x = x + Caching(p, pre + "mixer.", model, mixer, h).forward()
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
    lines = ["name: twin-memcache-" + stem, "task:"]
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
    """The fixture entries of a case. A parameter the forward never uses gets
    gradient zero, as in C."""
    spec, p, tok, tgt, model, mixer = build_case(case)
    for t in p.values():
        t.requires_grad_(True)
    logits, loss = forward(p, tok, tgt, model, mixer)
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
    sub = os.path.join(outdir, "memcache")
    os.makedirs(sub, exist_ok=True)
    total = 0
    for case in CASES:
        blob = twin.encode(run_case(case))
        with open(os.path.join(sub, "memcache_%s.fx" % case[0]), "wb") as f:
            f.write(blob)
        total += len(blob)
    print("twin_memcache: wrote %d fixtures (%d bytes) to %s" % (len(CASES), total, sub))


def check_gradients(stems):
    """torch.autograd.gradcheck of the loss w.r.t. every parameter of the cases."""
    for case in CASES:
        if case[0] not in stems:
            continue
        _, p, tok, tgt, model, mixer = build_case(case)
        names = list(p.keys())
        leaves = [p[n].clone().requires_grad_(True) for n in names]

        def loss_of(*ts, names=names, tok=tok, tgt=tgt, model=model, mixer=mixer):
            return forward(dict(zip(names, ts)), tok, tgt, model, mixer)[1]

        ok = torch.autograd.gradcheck(loss_of, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)
        print("twin_memcache check: gradcheck %s: %s" % (case[0], "ok" if ok else "FAILED"))


def main(argv):
    torch.set_num_threads(1)
    if len(argv) == 2 and argv[1] == "--check":
        check_gradients({"a", "f"})
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: twin_memcache.py OUTDIR | --check\n")
        return 2
    write_all(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
