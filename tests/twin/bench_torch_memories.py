#!/usr/bin/python3
"""bench_torch_memories.py: the memory mixers of the PyTorch timing twin.

The mixers mom (Mixture-of-Memories, models/mixer_mom.c), slots (the slot
bottleneck, models/mixer_slots.c) and memcache (Memory Caching,
models/mixer_memcache.c) as nn.Modules for bench_torch.py, written the way a
researcher writes them in PyTorch: batched projections, the linear-family
rules through bench_torch.chunk_rule, Python loops only over chunks,
segments or cached memories, never over tokens.

  MoM       each routed memory runs on its own tokens only: per (sequence,
            memory) the routed tokens are gathered into a compact sequence
            (padded at the end to the longest), all E x B of them go through
            one chunk_rule call, and the outputs are scattered back weighted;
            the shared memory is one more call over every token. The
            load-balancing loss is left in .aux when aux_coef > 0.
  slots     the chain of slot states is a loop over chunks (the write); the
            reads of every chunk are one batched masked attention over
            [slot rows ; chunk tokens].
  memcache  the online memory is chunk_rule over the sequence (checkpoint:
            one call per segment, carrying the state, whose end states are the
            cached memories) or over every segment at once (fresh; log blocks
            of 2^j segments run from zero, one call per level); each cached
            memory is read by one product over the tokens that read it.

Parameters have memlab's shapes, one nn.Parameter per memlab tensor
(memlab_params() gives each module's tensors under memlab's names), so the
FLOPs and the optimiser's work match memlab's. Based's Taylor map keeps all
D^2 products here as in bench_torch.py (memlab keeps the upper triangle: the
same kernel, so the same outputs, with a wider state).

Skipped (unsupported(m) says why): the recurrent form (bench_torch.build
skips it for every mixer), and memcache's pool k with the Taylor feature map
(memlab pools its upper-triangle features, whose width wu's shape follows).

torch is imported at the top: bench_torch.py imports this file only after it
has set the thread variables and imported torch itself.

self_check() (bench_torch.py --self-check) builds each mixer in float64,
loads the parameters of a case of the float64 correctness twins
(tests/twin/twin.py mom_mixer, twin_slots.py, twin_memcache.py), and compares
the outputs, MoM's load-balancing loss, and the gradients of a random linear
function of the output w.r.t. the input and every parameter.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_torch as bt  # noqa: E402  (chunk_rule, the linear family's pieces)


def unsupported(m):
    """Why the config m (its model section) cannot be timed, or None."""
    if m["mixer"] == "memcache" and m.get("pool", "x") == "k" \
            and m.get("feature_map", "elu1") == "taylor":
        return ("memcache pool k with feature_map taylor is not in the timing twin (memlab "
                "pools its upper-triangle Taylor features)")
    return None


def make(m, C, context_len):
    """The mixer module of config m for width C; context_len is the task's
    context prefix (read by the context variant of slots)."""
    if m["mixer"] == "mom":
        return MoM(m, C)
    if m["mixer"] == "slots":
        return Slots(m, C, context_len)
    return MemCache(m, C)


# ---- Mixture-of-Memories ----------------------------------------------------------


def gate_out_params(mod, p):
    """p plus the linear family's gate and output tensors of mod (MoM, Memory
    Caching) under memlab's names."""
    if mod.delta:
        p["wbeta"] = mod.wbeta.weight
    if mod.decay:
        p.update(wdecay=mod.wdecay.weight, A_log=mod.A_log, dt_bias=mod.dt_bias)
    if mod.onorm != "none":
        p["onorm.w"] = mod.onorm_w
    if mod.wgate is not None:
        p["wgate"] = mod.wgate.weight
    p.update(wo=mod.wo.weight, bo=mod.wo.bias)
    return p


class MoM(nn.Module):
    """Mixture-of-Memories (mixer_mom.c): shared q; per memory k, v, beta and
    decay projections; softmax router, top-K, weights renormalised over the
    selected (K = 1: weight 1); each routed memory updated only at its tokens;
    the shared memory at every token; output norm, gate, out projection. As in
    the reference implementation, the tokens are gathered per memory before
    its projections, so a routed memory projects only its own tokens (and the
    padding of the compact sequences)."""

    def __init__(self, m, C):
        super().__init__()
        self.H = H = m.get("heads", 1)
        self.Dv = C // H
        self.Dk = Dk = m.get("feature_dim", 0) or self.Dv
        self.E, self.K = m.get("memories", 4), m.get("topk", 2)
        self.shared = m.get("shared", True)
        self.Mt = Mt = self.E + (1 if self.shared else 0)
        self.delta, self.decay = bt.RULES[m.get("rule", "gated_delta")]
        self.fmap, self.l2 = m.get("feature_map", "silu"), m.get("qk_l2norm", True)
        self.chunk = m.get("chunk", 64)
        self.aux_coef = m.get("aux_coef", 0.01)
        self.wq = nn.Linear(C, H * Dk, bias=False)
        self.wk = nn.Linear(C, Mt * H * Dk, bias=False)
        self.wv = nn.Linear(C, Mt * C, bias=False)
        self.wbeta = nn.Linear(C, Mt * H, bias=False) if self.delta else None
        if self.decay:
            self.wdecay = nn.Linear(C, Mt * H, bias=False)
            self.A_log = nn.Parameter(torch.zeros(H))
            self.dt_bias = nn.Parameter(torch.zeros(H))
            self.register_buffer("shift", bt.dt_shift(torch, H, m.get("dt_min", 0.001),
                                                      m.get("dt_max", 0.1)))
        self.wrouter = nn.Linear(C, self.E, bias=False)
        self.onorm = m.get("out_norm", "gated")
        if self.onorm != "none":
            self.onorm_w = nn.Parameter(torch.ones(self.Dv))
        self.wgate = nn.Linear(C, C, bias=False) if self.onorm == "gated" else None
        self.wo = nn.Linear(C, C)
        self.aux = None

    def memlab_params(self):
        p = {"wq": self.wq.weight, "wk": self.wk.weight, "wv": self.wv.weight}
        p["wrouter"] = self.wrouter.weight
        return gate_out_params(self, p)

    def project(self, x, lo, hi):
        """k, v, beta, g of memories [lo, hi) on x [..., n, C] (memory dim -3
        when hi - lo > 1 is matched against x's dim -3)."""
        H, Dk, Dv, C = self.H, self.Dk, self.Dv, self.H * self.Dv

        def lin(w, width):
            wm = w.weight.view(self.Mt, width, C)[lo:hi]
            if hi - lo == 1:
                return F.linear(x, wm[0])
            return torch.einsum("...enc,eoc->...eno", x, wm)

        k = bt.feature_map(torch, lin(self.wk, H * Dk).unflatten(-1, (H, Dk)), self.fmap, self.l2)
        v = lin(self.wv, C).unflatten(-1, (H, Dv))
        beta = torch.sigmoid(lin(self.wbeta, H)) if self.delta else None
        g = None
        if self.decay:
            g = bt.log_decay(torch, lin(self.wdecay, H), self.A_log, self.dt_bias, self.shift)
        return k, v, beta, g

    def forward(self, x):
        B, T, C = x.shape
        H, Dk, Dv, E, K, Mt = self.H, self.Dk, self.Dv, self.E, self.K, self.Mt
        q = bt.feature_map(torch, self.wq(x).view(B, T, H, Dk), self.fmap, self.l2)

        # router: top-K of the softmax, weights renormalised over the selected
        probs = torch.softmax(self.wrouter(x), dim=-1)  # [B,T,E]
        top, idx = torch.topk(probs, K, dim=-1)
        wts = top / top.sum(-1, keepdim=True) if K > 1 else torch.ones_like(top)
        onehot = F.one_hot(idx, E)  # [B,T,K,E]
        self.aux = None
        if self.aux_coef > 0:
            frac = onehot.sum(2).to(probs.dtype).mean((0, 1))
            self.aux = self.aux_coef * E * (frac * probs.mean((0, 1))).sum()
        hit = onehot.sum(2)  # [B,T,E] 0/1
        w_tok = (onehot.to(wts.dtype) * wts.unsqueeze(-1)).sum(2)  # [B,T,E]

        # compact sequences: src[b, e, j] = the j-th token of sequence b routed to e
        cnt = hit.sum(1)  # [B,E]
        n = max(int(cnt.max()), 1)
        dest = torch.where(hit.bool(), hit.cumsum(1) - 1, torch.full_like(hit, n))
        src = torch.zeros(B, E, n + 1, dtype=torch.long)
        src.scatter_(2, dest.transpose(1, 2), torch.arange(T).expand(B, E, T))
        src = src[:, :, :n]  # padding (after a sequence's tokens) reads token 0
        bi = torch.arange(B).view(B, 1, 1)
        ei = torch.arange(E).view(1, E, 1)
        # each routed memory's projections on its own tokens: [B,E,n,...]
        kc, vc, bc, gc = self.project(x[bi, src], 0, E)

        def compact(c):  # [B,E,n,H,...] -> [B*E,H,n,...]
            return c.reshape(B * E, n, *c.shape[3:]).transpose(1, 2)

        qc = q[bi, src].reshape(B * E, n, H, -1).transpose(1, 2)
        oc = bt.chunk_rule(torch, qc, compact(kc), compact(vc),
                           compact(bc) if self.delta else None,
                           compact(gc) if self.decay else None, min(self.chunk, n), self.delta,
                           self.decay)  # [B*E,H,n,Dv]; a run shorter than a chunk is one chunk
        valid = torch.arange(n).view(1, 1, n) < cnt.unsqueeze(-1)
        wc = w_tok[bi, src, ei] * valid  # [B,E,n]
        contrib = (oc.transpose(1, 2).reshape(B, E, n, C) * wc.unsqueeze(-1)).reshape(B, E * n, C)
        o = contrib.new_zeros(B, T, C).scatter_add(1, src.reshape(B, E * n, 1).expand(-1, -1, C),
                                             contrib)
        if self.shared:
            ks, vs, bs, gs = self.project(x, E, E + 1)  # [B,T,...]
            os_ = bt.chunk_rule(torch, q.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                bs.transpose(1, 2) if self.delta else None,
                                gs.transpose(1, 2) if self.decay else None, self.chunk,
                                self.delta, self.decay)
            o = o + os_.transpose(1, 2).reshape(B, T, C)
        if self.onorm != "none":
            o = bt.head_rms(torch, o.view(B, T, H, Dv), self.onorm_w).reshape(B, T, C)
        if self.wgate is not None:
            o = o * F.silu(self.wgate(x))
        return self.wo(o)


# ---- slot bottleneck --------------------------------------------------------------

SLOT_LN_EPS = 1e-5  # the slot mixer's own LayerNorms


def attend(q, k, v, H, allowed=None):
    """Softmax attention per head, scale 1/sqrt(D): q [..., Tq, C] over k, v
    [..., Tk, C] (the same leading dims), allowed [Tq, Tk] bool or None."""
    *lead, Tq, C = q.shape
    Tk, D = k.shape[-2], C // H

    def heads(t, n):
        return t.reshape(*lead, n, H, D).transpose(-2, -3)

    s = heads(q, Tq) @ heads(k, Tk).transpose(-1, -2) * D ** -0.5
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    o = torch.softmax(s, dim=-1) @ heads(v, Tk)
    return o.transpose(-2, -3).reshape(*lead, Tq, C)


def rows_of(lin, x, a, b):
    """Output rows [a, b) of the nn.Linear lin applied to x (a slice of a
    packed projection: the k|v part of a qkv projection)."""
    return F.linear(x, lin.weight[a:b], None if lin.bias is None else lin.bias[a:b])


class Slots(nn.Module):
    """The slot bottleneck (mixer_slots.c), chunk and context variants: K
    learned slots; tokens of a chunk read [LN_s(slots) ; the chunk so far]
    (context: [LN_s(M_ctx) ; LN_s(slots) ; ...]); at every chunk end but the
    last the slots are rewritten by attention over [LN_s(slots) ; chunk],
    plus the slot MLP, optionally GRU-gated."""

    def __init__(self, m, C, context_len):
        super().__init__()
        self.C, self.H = C, m.get("heads", 1)
        self.K, self.Ch = m.get("slots", 16), m.get("chunk", 64)
        self.context = m.get("variant", "chunk") == "context"
        self.lc = context_len
        R = m.get("slot_mlp_ratio", 2) * C
        gru = m.get("gate", "none") == "gru"
        bias = m.get("qkv_bias", True)
        self.slots = nn.Parameter(torch.zeros(self.K, C))
        self.slots.no_decay = True  # memlab: normal init, no weight decay
        self.norm_s = nn.LayerNorm(C, eps=SLOT_LN_EPS)
        self.wqkv, self.wo = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C)
        self.wqkv_w, self.wo_w = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C)
        self.norm_m = nn.LayerNorm(C, eps=SLOT_LN_EPS) if R > 0 or gru else None
        self.mlp = nn.Sequential(nn.Linear(C, R), nn.GELU(), nn.Linear(R, C)) if R > 0 else None
        self.gate = nn.Linear(2 * C, C) if gru else None
        if self.context:
            self.norm_x = nn.LayerNorm(C, eps=SLOT_LN_EPS)
            self.wqkv_x, self.wo_x = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C)

    def memlab_params(self):
        p = {"slots": self.slots, "norm_s.w": self.norm_s.weight, "norm_s.b": self.norm_s.bias}
        for suf in ("", "_w") + (("_x",) if self.context else ()):
            if suf == "_x":
                p.update({"norm_x.w": self.norm_x.weight, "norm_x.b": self.norm_x.bias})
            qkv, wo = getattr(self, "wqkv" + suf), getattr(self, "wo" + suf)
            p["wqkv" + suf] = qkv.weight
            if qkv.bias is not None:
                p["bqkv" + suf] = qkv.bias
            p.update({"wo" + suf: wo.weight, "bo" + suf: wo.bias})
        if self.norm_m is not None:
            p.update({"norm_m.w": self.norm_m.weight, "norm_m.b": self.norm_m.bias})
        if self.mlp is not None:
            p.update({"mlp.w1": self.mlp[0].weight, "mlp.b1": self.mlp[0].bias,
                      "mlp.w2": self.mlp[2].weight, "mlp.b2": self.mlp[2].bias})
        if self.gate is not None:
            p.update({"gate.w": self.gate.weight, "gate.b": self.gate.bias})
        return p

    def write(self, M, Mh, kv):
        """The slot update of M [B,K,C] (Mh = LN_s(M)) after a chunk whose
        tokens have the write keys|values kv [B,n,2C]."""
        C = self.C
        qw = rows_of(self.wqkv_w, Mh, 0, C)
        rows = torch.cat([rows_of(self.wqkv_w, Mh, C, 3 * C), kv], dim=1)
        Mt = M + self.wo_w(attend(qw, rows[..., :C], rows[..., C:], self.H))
        Nm = self.norm_m(Mt) if self.norm_m is not None else None
        Hc = Mt + self.mlp(Nm) if self.mlp is not None else Mt
        if self.gate is None:
            return Hc
        z = torch.sigmoid(self.gate(torch.cat([Mh, Nm], dim=-1)))
        return (1 - z) * M + z * Hc

    def segment(self, qkv, kvw, front=None):
        """Read outputs [B,n,C] of a run of n tokens (read q|k|v qkv [B,n,3C],
        write k|v kvw [B,n,2C]) cut into chunks from its start, slots chained
        from the learned ones; front [B,S0,2C]: read keys|values in front of
        every chunk's slots (context: M_ctx's)."""
        B, n, _ = qkv.shape
        C, Ch, K = self.C, self.Ch, self.K
        nch = (n + Ch - 1) // Ch
        M = self.slots.unsqueeze(0).expand(B, K, C)
        Mhs = []
        for c in range(nch):  # the chain of slot states, chunk by chunk
            Mh = self.norm_s(M)
            Mhs.append(Mh)
            if c + 1 < nch:
                M = self.write(M, Mh, kvw[:, c * Ch:(c + 1) * Ch])
        kv_s = rows_of(self.wqkv, torch.stack(Mhs, 1), C, 3 * C)  # [B,nch,K,2C]
        if front is not None:
            kv_s = torch.cat([front.unsqueeze(1).expand(-1, nch, -1, -1), kv_s], dim=2)
        S = kv_s.shape[2]
        pad = nch * Ch - n  # a short last chunk: padded keys come after its last query
        qkv = F.pad(qkv, (0, 0, 0, pad)).reshape(B, nch, Ch, 3 * C)
        keys = torch.cat([kv_s, qkv[..., C:]], dim=2)  # [B,nch,S+Ch,2C]
        i = torch.arange(Ch).view(Ch, 1)
        j = torch.arange(S + Ch).view(1, S + Ch)
        o = attend(qkv[..., :C], keys[..., :C], keys[..., C:], self.H, j <= i + S)
        return o.reshape(B, nch * Ch, C)[:, :n]

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.wqkv(x)
        kvw = rows_of(self.wqkv_w, x, C, 3 * C)
        if not self.context:
            return self.wo(self.segment(qkv, kvw))
        lc = max(0, min(self.lc, T))
        parts = []
        if lc > 0:
            parts.append(self.segment(qkv[:, :lc], kvw[:, :lc]))
        if lc < T:
            M0 = self.slots.unsqueeze(0).expand(B, self.K, C)
            M1 = self.write(M0, self.norm_s(M0), kvw[:, :lc])
            qx, kx, vx = self.wqkv_x(self.norm_x(M1)).split(C, dim=-1)
            Mctx = M1 + self.wo_x(attend(qx, kx, vx, self.H))
            front = rows_of(self.wqkv, self.norm_s(Mctx), C, 3 * C)
            parts.append(self.segment(qkv[:, lc:], kvw[:, lc:], front))
        return self.wo(torch.cat(parts, dim=1))


# ---- Memory Caching ---------------------------------------------------------------


def lowbit(P):
    return P & -P


class MemCache(nn.Module):
    """Memory Caching (mixer_memcache.c) over a linear-family rule: the
    online memory of each segment (checkpoint: the base rule; fresh: from zero
    at the segment start) plus the cached memories of finished segments
    (constant: one per segment; log: the blocks of the binary decomposition
    of the segment index), aggregated by residual, grm, soup or ssc."""

    def __init__(self, m, C):
        super().__init__()
        bt.linfam_init(torch, self, m, C)
        self.norm = m.get("normalize", True) and m.get("rule", "additive") == "additive"
        self.eps, self.chunk = m.get("eps", 1e-6), m.get("chunk", 64)
        self.c = m.get("segment", 64)
        self.log = m.get("segments", "constant") == "log"
        self.fresh = m.get("seg_init", "checkpoint") == "fresh"
        self.agg = m.get("aggregate", "grm")
        self.topk = m.get("cache_topk", 2)
        self.cgrad = m.get("cache_grad", True)
        self.poolk = m.get("pool", "x") == "k"
        self.Pw = bt.feature_width(self.fmap, self.Dk) if self.poolk else C
        self.wu = nn.Linear(C, self.H * self.Pw, bias=False) if self.agg != "residual" else None

    def memlab_params(self):
        p = {"wqkv": self.wqkv.weight}
        if self.wqkv.bias is not None:
            p["bqkv"] = self.wqkv.bias
        if self.sconv is not None:
            p["conv.w"] = self.sconv.weight
        if self.wu is not None:
            p["wu"] = self.wu.weight
        return gate_out_params(self, p)

    def hi(self, P, nseg):
        """Segments [P, hi) read memory P."""
        return min(P + lowbit(P), nseg) if self.log else nseg

    def reads(self, s):
        """The memories segment s reads, oldest first."""
        if not self.log:
            return list(range(1, s + 1))
        out, P = [], 0
        for bit in reversed(range(s.bit_length())):
            if s >> bit & 1:
                P |= 1 << bit
                out.append(P)
        return out

    def rule(self, q, k, v, beta, g, S0=None):
        """chunk_rule with its final state: (outputs, state); a run shorter
        than a chunk is one chunk."""
        return bt.chunk_rule(torch, q, k, v, beta, g, min(self.chunk, q.shape[2]), self.delta,
                             self.decay, S0, final=True)

    def memories(self, q, k, v, beta, g, nseg):
        """The online reads [B,H,T,W] (W = Dv, + 1 for the normaliser) and the
        cached states S_P [B,H,F,W], P = 1 .. nseg - 1."""
        B, H, T, Fw = q.shape
        c, W = self.c, v.shape[-1]
        if not self.fresh:  # the base rule, one call per segment; its end states are cached
            outs, states, S = [], [], None
            for s in range(nseg):
                a, b = s * c, min(T, (s + 1) * c)
                o, S = self.rule(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                 None if beta is None else beta[:, :, a:b],
                                 None if g is None else g[:, :, a:b], S)
                outs.append(o)
                if s + 1 < nseg:
                    states.append(S)
            return torch.cat(outs, 2), states
        pad = nseg * c - T

        def blocks(t, L, step):  # [B,H,T,...] -> [B*nb,H,L c,...]: every step-th L-segment block
            t = F.pad(t, (0, 0, 0, pad)) if t.dim() == 4 else F.pad(t, (0, pad))
            n = nseg // L
            t = t[:, :, :n * L * c].reshape(B, H, n, L * c, *t.shape[3:])[:, :, ::step]
            nb = t.shape[2]
            return t.transpose(1, 2).reshape(B * nb, H, L * c, *t.shape[4:]), nb

        def run(L, step):  # those blocks from zero: outputs, end states [B,nb,H,F,W]
            (qb, nb), (kb, _), (vb, _) = (blocks(t, L, step) for t in (q, k, v))
            o, S = self.rule(qb, kb, vb, None if beta is None else blocks(beta, L, step)[0],
                             None if g is None else blocks(g, L, step)[0])
            return o.reshape(B, nb, H, L * c, W), S.reshape(B, nb, H, Fw, W)

        o, Sseg = run(1, 1)  # each segment from zero: online reads, one-segment memories
        on = o.transpose(1, 2).reshape(B, H, nseg * c, W)[:, :, :T]
        states = [Sseg[:, P - 1] for P in range(1, nseg)] if not self.log else [None] * (nseg - 1)
        L = 1
        while self.log and L < nseg:  # log: memory P (lowbit L) is the block [P - L, P) from zero
            if L == 1:
                for P in range(1, nseg, 2):
                    states[P - 1] = Sseg[:, P - 1]
            else:
                _, Sb = run(L, 2)  # block i: segments [2 i L, (2 i + 1) L), memory (2 i + 1) L
                for i, P in enumerate(range(L, nseg, 2 * L)):
                    states[P - 1] = Sb[:, i]
            L *= 2
        return on, states

    def forward(self, x):
        B, T, C = x.shape
        H, Dv, c = self.H, self.Dv, self.c
        q, k, v, beta, g = bt.linfam_inputs(torch, self, x)
        if self.norm:
            v = torch.cat([v, torch.ones_like(v[..., :1])], -1)  # reads give [num | den]
        nseg = (T + c - 1) // c
        nmem = nseg - 1
        on, states = self.memories(q, k, v, beta, g, nseg)
        if not self.cgrad:
            states = [S.detach() for S in states]

        def read(nd):
            return nd[..., :Dv] / (nd[..., Dv:] + self.eps) if self.norm else nd

        if self.agg == "residual":
            y = torch.zeros_like(on[..., :Dv])
            for P in range(1, nmem + 1):
                a, b = P * c, min(T, self.hi(P, nseg) * c)
                y[:, :, a:b] += read(q[:, :, a:b] @ states[P - 1])
            return bt.linfam_output(torch, self, read(on) + y, x)

        # gate scores <u_t, pool>: pools of the cached blocks and the online running mean
        rows = k if self.poolk else x.unsqueeze(1)  # [B,H or 1,T,Pw]
        Hp = rows.shape[1]
        u = self.wu(x).view(B, T, H, self.Pw).transpose(1, 2)  # [B,H,T,Pw]
        rs = F.pad(rows, (0, 0, 0, nseg * c - T)).reshape(B, Hp, nseg, c, self.Pw)
        cnt = torch.arange(1, c + 1, dtype=x.dtype).view(c, 1)
        pool_on = (rs.cumsum(3) / cnt).reshape(B, Hp, nseg * c, self.Pw)[:, :, :T]
        sc_on = (u * pool_on).sum(-1)  # [B,H,T]
        cs = F.pad(rs.sum(3).cumsum(2), (0, 0, 1, 0))  # [B,Hp,nseg+1,Pw] prefix sums
        lo = [P - lowbit(P) if self.log else P - 1 for P in range(1, nmem + 1)]
        pools = torch.stack([(cs[:, :, P] - cs[:, :, lo[P - 1]]) / ((P - lo[P - 1]) * c)
                             for P in range(1, nmem + 1)], 2) if nmem else rs[:, :, :0, 0]
        if not self.cgrad:
            pools = pools.detach()
        sc_all = u @ pools.transpose(-1, -2)  # [B,H,T,nmem]: every token against every memory
        # slot j of token t: the j-th memory (oldest first) its segment reads
        seg = torch.arange(T) // c
        nslot = max((len(self.reads(s)) for s in range(nseg)), default=0)
        table = torch.zeros(nseg, max(nslot, 1), dtype=torch.long)
        for s in range(nseg):
            r = self.reads(s)
            table[s, :len(r)] = torch.tensor(r, dtype=torch.long)
        table = table[seg][:, :nslot]  # [T,nslot], 0 = no memory
        valid = table > 0
        sc = sc_all.gather(-1, (table - 1).clamp(min=0).expand(B, H, T, nslot))
        sc = sc.masked_fill(~valid, float("-inf"))
        if self.agg == "ssc" and nslot:
            with torch.no_grad():  # the top-K cached by score, ties to the older (lower slot)
                si, sj = sc.unsqueeze(-2), sc.unsqueeze(-1)  # [...,j,i]: score of i, of j
                jj = torch.arange(nslot)
                older = jj.view(1, nslot) < jj.view(nslot, 1)  # [j,i]: i < j
                beats = ((si > sj) | ((si == sj) & older)) & valid.unsqueeze(-2)
                keep = valid & (beats.sum(-1) < self.topk)
            sc = sc.masked_fill(~keep, float("-inf"))
        gam = torch.softmax(torch.cat([sc, sc_on.unsqueeze(-1)], -1), dim=-1)  # online last
        slot = [bin(P).count("1") - 1 if self.log else P - 1 for P in range(1, nmem + 1)]
        if self.agg == "soup":  # the memories mixed by gamma, read once
            acc = gam[..., nslot:] * on
            for P in range(1, nmem + 1):
                a, b = P * c, min(T, self.hi(P, nseg) * c)
                acc[:, :, a:b] += gam[:, :, a:b, slot[P - 1], None] * (q[:, :, a:b] @ states[P - 1])
            return bt.linfam_output(torch, self, read(acc), x)
        y = gam[..., nslot:] * read(on)
        for P in range(1, nmem + 1):
            a, b = P * c, min(T, self.hi(P, nseg) * c)
            y[:, :, a:b] += gam[:, :, a:b, slot[P - 1], None] * read(q[:, :, a:b] @ states[P - 1])
        return bt.linfam_output(torch, self, y, x)


# ---- self-check against the float64 correctness twins ------------------------------


def check_cases():
    """(label, twin module name, case, lc) of every self-check: cases of the
    correctness twins, some with keys overridden so that every key value the
    timing twin accepts is compared at least once."""
    import twin
    import twin_memcache
    import twin_slots

    def pick(mod, stem, **over):
        case = next(cs for cs in mod.CASES if cs[0] == stem)
        mixer = dict(case[3])
        mixer.update(over)
        if "form" in mixer:
            mixer["form"] = "chunkwise"  # the twins' definitions do not depend on the form
        label = stem + "".join(" %s=%s" % kv for kv in over.items())
        return label, case[0], case[1], case[2], mixer

    out = []
    mom = [("mom_a", {}), ("mom_b", {}), ("mom_c", {}), ("mom_d", {}),
           ("mom_a", dict(feature_map="elu1", qk_l2norm=False, feature_dim=3)),
           ("mom_b", dict(feature_map="relu", rule="gated_delta", topk=3)),
           ("mom_d", dict(feature_map="identity", qk_l2norm=False, out_norm="none",
                          shared=False))]
    for stem, over in mom:
        over.setdefault("aux_coef", 0.25)
        out.append(("mom", twin) + pick(twin, stem, **over))
    for stem in "abcdef":
        out.append(("slots", twin_slots) + pick(twin_slots, stem))
    memcache = [(s, {}) for s in "abcdefghij"] + [
        ("a", dict(feature_map="relu", aggregate="residual", feature_dim=3)),
        ("g", dict(feature_map="taylor", feature_dim=2, segments="log", segment=2)),
        ("c", dict(rule="additive", normalize=True, segments="log", segment=2, heads=2,
                   cache_grad=False, short_conv=3)),
        ("e", dict(aggregate="soup", pool="k", seg_init="fresh", segments="log", segment=1,
                   chunk=3))]
    for stem, over in memcache:
        out.append(("memcache", twin_memcache) + pick(twin_memcache, stem, **over))
    return out


def self_check():
    """Each check case: the timing twin's mixer against the correctness
    twin's in float64. Prints one line per case; returns the failures."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the parameters and buffers (dt shift) in float64
    try:
        return sum(check_one(*cs) for cs in check_cases())
    finally:
        torch.set_default_dtype(dtype)


def check_one(kind, mod, label, stem, seed, model, mixer):
    """One case; 0 when it matches, 1 when not (printed either way)."""
    import twin
    import twin_slots
    torch.manual_seed(seed)
    V, L = twin.TASK["vocab_size"], twin.TASK["seq_len"]
    p = mod.make_params(model, mixer, V, L)
    pre = "layers.0.mixer."
    ref_p = {k: t.clone().requires_grad_(True) for k, t in p.items() if k.startswith(pre)}
    C = model["d_model"]
    lc = twin_slots.context_len()
    B, T = 2, 13
    m = dict(model)
    m.update(mixer)
    mine = make(m, C, lc)
    names = mine.memlab_params()
    want = {k[len(pre):]: t for k, t in ref_p.items()}
    why = None
    if set(names) != set(want):
        why = "tensors differ: %s" % sorted(set(names) ^ set(want))
    elif any(names[n].numel() != want[n].numel() for n in names):
        why = "shapes differ: %s" % [n for n in names if names[n].numel() != want[n].numel()]
    elif {id(t) for t in names.values()} != {id(t) for t in mine.parameters()}:
        why = "a parameter has no memlab name"
    if why:
        print("FAIL %-8s %s: %s" % (kind, label, why))
        return 1
    with torch.no_grad():
        for n, t in names.items():
            t.copy_(want[n].detach().view_as(t))

    h = torch.randn(B, T, C)
    r = None
    outs, aux, grads = [], [], []
    for side in ("twin", "timing"):
        hh = h.clone().requires_grad_(True)
        if side == "twin":
            full = dict(p)
            full.update(ref_p)
            a = [0.0]
            if kind == "mom":
                y = twin.mom_mixer(hh, full, pre, model, mixer, a)
            elif kind == "slots":
                y = twin_slots.Slots(full, pre, model, mixer).forward(hh, lc)
            else:
                y = mod.Caching(full, pre, model, mixer, hh).forward()
            a = a[0] if torch.is_tensor(a[0]) else None
            leaves = [ref_p[pre + n] for n in names]
        else:
            y = mine(hh)
            a = getattr(mine, "aux", None)
            leaves = [names[n] for n in names]
        if r is None:
            r = torch.randn_like(y)
        loss = (y * r).sum() + (a if a is not None else 0.0)
        gs = torch.autograd.grad(loss, [hh] + leaves, allow_unused=True)
        outs.append(y.detach())
        aux.append(None if a is None else a.detach())
        grads.append([torch.zeros_like(t) if gr is None else gr.reshape(t.shape)
                      for gr, t in zip(gs, [hh] + [names[n] for n in names])])

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()

    err = rel(outs[1], outs[0])
    gerr = max(rel(g1, g0) if g0.abs().max() > 0 else g1.abs().max().item()
               for g0, g1 in zip(grads[0], grads[1]))
    aerr = 0.0
    if (aux[0] is None) != (aux[1] is None):
        aerr = float("inf")
    elif aux[0] is not None:
        aerr = rel(aux[1], aux[0])
    ok = max(err, gerr, aerr) < 1e-10
    print("%s %-8s %-58s out %.2g, grads %.2g%s" %
          ("ok  " if ok else "FAIL", kind, label, err, gerr,
           ", aux %.2g" % aerr if aux[0] is not None else ""))
    return 0 if ok else 1
