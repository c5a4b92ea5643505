#!/usr/bin/python3
"""bench_torch.py: the PyTorch timing twin of `memlab bench`.

Builds, in float32 (or, when the config says train.matmul: bf16, with its
forward under CPU autocast to bfloat16), the model a memlab config describes (the config JSON that
memlab records for a run: token embedding tied to the LM head, pre-norm blocks
of norm, short causal depthwise conv, mixer and residual, optional MLP, final
norm) the way a researcher would write it in PyTorch (Zoology style: einsum
attention with a masked softmax, chunked linear attention with cumulative
sums, torch.optim.AdamW, clip_grad_norm_), and times full training steps on
an MQAR-shaped batch: forward, backward, clipping and the optimiser step.

Two heads, as in memlab:
  full        logits at every position, cross-entropy with ignore_index (what
              Zoology does);
  supervised  logits only at the positions that have a target.

It does not check numbers (tests/twin/twin.py does, in float64) and it does not
generate MQAR data: inputs are random tokens and each sequence has
num_kv_pairs supervised positions at random places in its query region, which
is all that the cost of a step depends on. It knows the mixers softmax,
linear (chunkwise or parallel form), deltanet, gated_deltanet, mamba2 and based
(chunkwise: chunk_rule below), and mom, slots and memcache (their modules are
in bench_torch_memories.py, on the pieces of this file: chunk_rule and the
linear family's projections; MoM's load-balancing loss is added to the loss
when its aux_coef is not 0, as memlab does); other configs (recurrent forms,
other tasks, learned positions, what bench_torch_memories.unsupported names)
are answered with a skip.

Threads: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS must be set
before torch is imported (torch.set_num_threads does not bound the OpenBLAS
that its matmuls call); memlab bench sets them in this process's environment,
and --threads sets them here before the import.

Usage:
    bench_torch.py --serve
        one command per stdin line, one reply line each on stdout, so that the
        caller (memlab bench) can alternate its own steps with the twin's:
          build {"config": <memlab config JSON>, "head": "full"|"supervised"}
                -> "ok" or "skip REASON"   (model, optimiser and batch built)
          step  -> "ok SECONDS CPU_SECONDS" or "skip REASON"   (one timed
                   training step: wall time, and CPU time of all threads)
          done  -> "ok PEAK_RSS_MIB"   (peak resident memory since build; the
                   model is freed)
        The first line written is "ready torch VERSION threads N", or
        "unavailable REASON" when torch cannot be imported.
    bench_torch.py --self-check
        chunk_rule against the token-by-token definition of tests/twin/twin.py
        (rule_step) in float64, every rule, with and without the normaliser
        trick, T not a multiple of the chunk, also split in two runs that
        carry the state; then the mom, slots and memcache modules against the
        float64 correctness twins (bench_torch_memories.self_check: outputs,
        MoM's aux loss, gradients w.r.t. the input and every parameter);
        prints one line per case and exits non-zero on a mismatch.
    bench_torch.py --threads N --config CONFIG.json [--head full] [--steps N]
        one measurement by hand: 2 warm-up steps, then N timed steps (at least
        3, at most --budget seconds once 3 are done), printed as
          ok MEDIAN_S MIN_S MAX_S TIMED_STEPS PEAK_RSS_MIB
"""

import gc
import json
import math
import os
import resource
import sys
import time


def parse_argv(argv):
    """--serve | --threads N --config FILE [--head H] [--steps N] [--budget S]."""
    opts = {"serve": False, "self_check": False, "threads": None, "config": None, "head": "supervised",
            "steps": 10, "budget": 10.0}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--serve":
            opts["serve"] = True
        elif a == "--self-check":
            opts["self_check"] = True
        elif a in ("--threads", "--config", "--head", "--steps", "--budget") and i + 1 < len(argv):
            opts[a[2:]] = argv[i + 1]
            i += 1
        else:
            sys.exit("bench_torch.py: unknown argument %r (see the docstring)" % a)
        i += 1
    return opts


def set_threads_env(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# The rules of memlab's linear family: (delta, decay).
RULES = {"additive": (False, False), "decay": (False, True), "delta": (True, False),
         "gated_delta": (True, True)}

# Mixers whose twins live in bench_torch_memories.py.
MEMORY_MIXERS = ("mom", "slots", "memcache")


def widen(torch, t):
    """t in float32 when autocast made it bfloat16 (None and other dtypes as
    they are: the float64 checks keep float64)."""
    return t.float() if t is not None and t.dtype == torch.bfloat16 else t


def chunk_rule(torch, q, k, v, beta, g, c, delta, decay, S0=None, final=False):
    """The decay/delta rules chunk by chunk, as a researcher writes them in
    PyTorch (the WY form of the delta rule with one batched triangular solve
    per layer, a Python loop over chunks for the state): q, k [B,H,T,Dk],
    v [B,H,T,Dv], beta and g (log decay) [B,H,T] or None. Per chunk, from
    the file header of models/gated_delta.c:
        A = strict_tril(diag(beta) (K K^T) .* M);  (I + A) [U | Wk] = [diag(beta) V | diag(beta Gam) K]
        W = U - Wk S;  O = diag(Gam) Q S + ((Q K^T) .* M) W;  S = Gam_last S + K^T diag(gam) W.
    S0 [B,H,Dk,Dv]: the state before the first token (None: zero). With final
    the state after the last token is returned too: (outputs, state); the
    padding of a short last chunk (k = v = 0, no decay) leaves it unchanged."""
    F = torch.nn.functional
    # under autocast the projections arrive in bfloat16: the rule's sums and
    # state stay float32 (autocast rounds the products' inputs), as in memlab
    q, k, v, beta, g = (widen(torch, t) for t in (q, k, v, beta, g))
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    n = (T + c - 1) // c
    pad = n * c - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta = F.pad(beta, (0, pad)) if beta is not None else None
        g = F.pad(g, (0, pad)) if g is not None else None
    qc, kc, vc = (t.reshape(B, H, n, c, t.shape[-1]) for t in (q, k, v))
    tril = torch.ones(c, c, dtype=torch.bool).tril()
    if decay:
        G = g.reshape(B, H, n, c).cumsum(-1)
        Gam = G.exp()
        gam = (G[..., -1:] - G).exp()
        M = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~tril, float("-inf")).exp()
    else:
        M = tril.to(q.dtype)
    P = (qc @ kc.transpose(-1, -2)) * M
    if delta:
        b = beta.reshape(B, H, n, c).unsqueeze(-1)
        A = (b * (kc @ kc.transpose(-1, -2)) * M).tril(-1)
        rhs = torch.cat([b * vc, b * (Gam.unsqueeze(-1) if decay else 1) * kc], -1)
        eye = torch.eye(c, dtype=q.dtype)
        X = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        U, Wk = X[..., :Dv], X[..., Dv:]
    S = q.new_zeros(B, H, Dk, Dv) if S0 is None else S0
    outs = []
    for i in range(n):
        W = U[:, :, i] - Wk[:, :, i] @ S if delta else vc[:, :, i]
        qS = qc[:, :, i] @ S
        if decay:
            qS = qS * Gam[:, :, i].unsqueeze(-1)
        outs.append(qS + P[:, :, i] @ W)
        if i + 1 < n or final:
            kg = kc[:, :, i] * gam[:, :, i].unsqueeze(-1) if decay else kc[:, :, i]
            S = (S * Gam[:, :, i, -1, None, None] if decay else S) + kg.transpose(-1, -2) @ W
    o = torch.cat(outs, 2)[:, :, :T]
    return (o, S) if final else o


def taylor_map(torch, x):
    """Based's feature map: [1, x / d^(1/4), vec(x x^T) / sqrt(2 d)]."""
    D = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(start_dim=-2) / math.sqrt(2.0 * D)
    return torch.cat([torch.ones_like(x[..., :1]), x / D ** 0.25, x2], dim=-1)


def feature_map(torch, x, fmap, l2):
    """phi on q or k heads [..., D] (identity, elu1, relu, silu, taylor), then
    the optional L2 norm x / sqrt(|x|^2 + 1e-6)."""
    F = torch.nn.functional
    if fmap == "silu":
        y = F.silu(x)
    elif fmap == "taylor":
        y = taylor_map(torch, x)
    elif fmap == "elu1":
        y = F.elu(x) + 1
    elif fmap == "relu":
        y = F.relu(x)
    else:
        y = x
    if l2:
        y = y * torch.rsqrt((y * y).sum(-1, keepdim=True) + 1e-6)
    return y


def feature_width(fmap, D):
    """Width of feature_map's output for heads of width D."""
    return 1 + D + D * D if fmap == "taylor" else D


def dt_shift(torch, H, dt_min, dt_max):
    """Per head, softplus^-1 of the initial time step, log-spaced from dt_min
    to dt_max (linfam.h)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    return torch.tensor([math.log(math.expm1(math.exp(lo + (h + 0.5) / H * (hi - lo))))
                         for h in range(H)])


def log_decay(torch, z, A_log, dt_bias, shift):
    """Mamba-2's log decay g = -exp(A_log) softplus(z + dt_bias + shift), z [..., H]."""
    return -torch.exp(A_log) * torch.nn.functional.softplus(z + dt_bias + shift)


def head_rms(torch, o, w):
    """RMSNorm over the last dim (a head), eps 1e-5, weight w."""
    return o * torch.rsqrt((o * o).mean(-1, keepdim=True) + 1e-5) * w


def linfam_init(torch, mod, m, C):
    """The linear family's projections on mod (mixer_linear.c): qkv projection
    (optional bias), optional short conv, beta and decay projections as the
    rule needs them, output norm weight, gate and out projection; and the
    switches linfam_inputs and linfam_output read."""
    nn = torch.nn
    mod.H = m.get("heads", 1)
    mod.Dv = C // mod.H
    mod.Dk = m.get("feature_dim", 0) or mod.Dv
    mod.delta, mod.decay = RULES[m.get("rule", "additive")]
    Cp = 2 * mod.H * mod.Dk + C
    mod.wqkv = nn.Linear(C, Cp, bias=m.get("qkv_bias", False))
    K = m.get("short_conv", 0)
    mod.sconv = nn.Conv1d(Cp, Cp, K, groups=Cp, padding=K - 1, bias=False) if K else None
    mod.wbeta = nn.Linear(C, mod.H, bias=False) if mod.delta else None
    if mod.decay:
        mod.wdecay = nn.Linear(C, mod.H, bias=False)
        mod.A_log = nn.Parameter(torch.zeros(mod.H))
        mod.dt_bias = nn.Parameter(torch.zeros(mod.H))
        mod.register_buffer("shift", dt_shift(torch, mod.H, m.get("dt_min", 0.001),
                                              m.get("dt_max", 0.1)))
    mod.onorm = m.get("out_norm", "none")
    if mod.onorm != "none":
        mod.onorm_w = nn.Parameter(torch.ones(mod.Dv))
    mod.wgate = nn.Linear(C, C, bias=False) if mod.onorm == "gated" else None
    mod.wo = nn.Linear(C, C)
    mod.fmap = m.get("feature_map", "elu1")
    mod.l2 = m.get("qk_l2norm", False)


def linfam_inputs(torch, mod, x):
    """The rule's inputs from x [B,T,C]: q, k [B,H,T,F] (feature map, L2),
    v [B,H,T,Dv], beta and log decay g [B,H,T] (None when the rule has none)."""
    B, T, _ = x.shape
    H, Dk, Dv = mod.H, mod.Dk, mod.Dv
    qkv = mod.wqkv(x)
    if mod.sconv is not None:
        qkv = mod.sconv(qkv.transpose(1, 2))[..., :T].transpose(1, 2)
    q = feature_map(torch, qkv[..., :H * Dk].reshape(B, T, H, Dk).transpose(1, 2), mod.fmap,
                    mod.l2)
    k = feature_map(torch, qkv[..., H * Dk:2 * H * Dk].reshape(B, T, H, Dk).transpose(1, 2),
                    mod.fmap, mod.l2)
    v = qkv[..., 2 * H * Dk:].reshape(B, T, H, Dv).transpose(1, 2)
    beta = torch.sigmoid(mod.wbeta(x)).transpose(1, 2) if mod.delta else None
    g = None
    if mod.decay:
        g = log_decay(torch, mod.wdecay(x), mod.A_log, mod.dt_bias, mod.shift).transpose(1, 2)
    return q, k, v, beta, g


def linfam_output(torch, mod, o, x):
    """The per-head output norm of o [B,H,T,Dv] (gated: times silu(x Wgate)),
    then the out projection: [B,T,C]."""
    B, H, T, Dv = o.shape
    if mod.onorm != "none":
        o = head_rms(torch, o, mod.onorm_w)
    o = o.transpose(1, 2).reshape(B, T, H * Dv)
    if mod.wgate is not None:
        o = o * torch.nn.functional.silu(mod.wgate(x))
    return mod.wo(o)


def build(torch, cfg):
    """The model of a memlab config, or a string saying why it cannot be built."""
    nn = torch.nn
    F = torch.nn.functional
    m, task = cfg["model"], cfg["task"]
    if task.get("name") != "mqar":
        return "task %s has no torch twin" % task.get("name")
    mixer = m["mixer"]
    memories = None
    if mixer in MEMORY_MIXERS:
        import bench_torch_memories as memories
    elif mixer not in ("softmax", "linear", "deltanet", "gated_deltanet", "mamba2", "based"):
        return "mixer %s has no torch twin" % mixer
    if m.get("position", "none") != "none":
        return "learned positions are not in the timing twin"
    if mixer != "softmax" and m.get("form", "chunkwise") == "recurrent":
        return "the recurrent form is not timed in PyTorch"
    if memories is not None:
        why = memories.unsupported(m)
        if why:
            return why
    V, C = task["vocab_size"], m["d_model"]
    H = m.get("heads", 1)
    D = C // H
    std = m.get("init_std", 0.02)
    eps_norm = m.get("norm_eps", 1e-5)

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps_norm) * self.weight

    def norm():
        return nn.LayerNorm(C, eps=eps_norm) if m.get("norm", "layer") == "layer" else RMSNorm()

    class Softmax(nn.Module):
        """Zoology's MHA: einsum scores, additive causal mask, softmax, einsum."""

        def __init__(self):
            super().__init__()
            self.wqkv = nn.Linear(C, 3 * C, bias=m.get("qkv_bias", True))
            self.wo = nn.Linear(C, C)
            self.window = m.get("window", 0)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.wqkv(x).view(B, T, 3, H, D).unbind(2)
            scores = torch.einsum("bthd,bshd->bhts", q, k) * (D ** -0.5)
            i = torch.arange(T).unsqueeze(1)
            j = torch.arange(T).unsqueeze(0)
            hide = j > i
            if self.window > 0:
                hide = hide | (j <= i - self.window)
            scores = scores.masked_fill(hide, float("-inf"))
            att = torch.softmax(scores, dim=-1)
            o = torch.einsum("bhts,bshd->bthd", att, v).reshape(B, T, C)
            return self.wo(o)

    class Linear(nn.Module):
        """Linear attention with a feature map and the normaliser; chunkwise:
        exclusive prefix sums of the per-chunk k^T v and k sums, plus the
        masked intra-chunk scores; parallel: the masked T x T scores."""

        def __init__(self):
            super().__init__()
            self.wqkv = nn.Linear(C, 3 * C, bias=m.get("qkv_bias", False))
            self.wo = nn.Linear(C, C)
            self.fmap = m.get("feature_map", "elu1")
            self.normalize = m.get("normalize", True)
            self.eps = m.get("eps", 1e-6)
            self.chunk = m.get("chunk", 64)
            self.parallel = m.get("form", "chunkwise") == "parallel"

        def phi(self, x):
            if self.fmap == "elu1":
                return F.elu(x) + 1
            if self.fmap == "relu":
                return F.relu(x)
            return x

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = widen(torch, self.wqkv(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = self.phi(q), self.phi(k)  # [B,H,T,D], float32 under autocast too
            if self.parallel or T <= self.chunk:
                A = torch.tril(q @ k.transpose(-1, -2))
                num = A @ v
                den = A.sum(-1) + self.eps
            else:
                c = self.chunk
                n = (T + c - 1) // c
                pad = n * c - T
                if pad:
                    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
                qc, kc, vc = (t.reshape(B, H, n, c, D) for t in (q, k, v))
                kv = kc.transpose(-1, -2) @ vc  # [B,H,n,D,D]
                S = kv.cumsum(2) - kv
                ks = kc.sum(3)
                z = ks.cumsum(2) - ks  # [B,H,n,D]
                A = torch.tril(qc @ kc.transpose(-1, -2))
                num = (qc @ S + A @ vc).reshape(B, H, n * c, D)[:, :, :T]
                den = ((qc * z.unsqueeze(3)).sum(-1) + A.sum(-1)).reshape(B, H, n * c)[:, :, :T]
                den = den + self.eps
            o = num / den.unsqueeze(-1) if self.normalize else num
            return self.wo(o.transpose(1, 2).reshape(B, T, C))

    class LinFam(nn.Module):
        """The rest of memlab's linear family (mixer_linear.c): qkv projection,
        optional short conv, feature map and L2 norm on q and k, sigmoid
        beta and Mamba-2 style log decay from their own projections, the
        rule chunk by chunk (chunk_rule), the normaliser for additive rules,
        the per-head RMS output norm (gated: times silu(x Wgate)), out
        projection."""

        def __init__(self):
            super().__init__()
            linfam_init(torch, self, m, C)
            self.normalize = m.get("normalize", False)
            self.eps = m.get("eps", 1e-6)
            self.chunk = m.get("chunk", 64)

        def forward(self, x):
            q, k, v, beta, g = linfam_inputs(torch, self, x)
            if self.normalize:
                v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
            o = chunk_rule(torch, q, k, v, beta, g, self.chunk, self.delta, self.decay)
            if self.normalize:
                o = o[..., :self.Dv] / (o[..., self.Dv:] + self.eps)
            return linfam_output(torch, self, o, x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = norm()
            K = m.get("conv", 0)
            self.conv = nn.Conv1d(C, C, K, groups=C, padding=K - 1) if K > 0 else None
            if memories is not None:
                # MQAR's context prefix: the 2N key-value tokens
                self.mixer = memories.make(m, C, 2 * task["num_kv_pairs"])
            else:
                self.mixer = (Softmax() if mixer == "softmax" else Linear() if mixer == "linear"
                              else LinFam())
            self.mlp = None
            if m.get("mlp", False):
                R = m.get("mlp_ratio", 4) * C
                self.norm2 = norm()
                self.mlp = nn.Sequential(nn.Linear(C, R), nn.GELU(), nn.Linear(R, C))

        def forward(self, x):
            h = self.norm1(x)
            if self.conv is not None:
                T = h.shape[1]
                h = self.conv(h.transpose(1, 2))[..., :T].transpose(1, 2)
            x = x + self.mixer(h)
            if self.mlp is not None:
                x = x + self.mlp(self.norm2(x))
            return x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.layers = nn.ModuleList([Block() for _ in range(m["n_layers"])])
            self.norm_f = norm()
            self.head = None if m.get("tie_embeddings", True) else nn.Linear(C, V, bias=False)

        def forward(self, tokens, targets, full):
            x = self.wte(tokens)
            for blk in self.layers:
                x = blk(x)
            x = self.norm_f(x)
            w = self.wte.weight if self.head is None else self.head.weight
            if full:
                logits = F.linear(x, w)
                loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
            else:
                keep = targets >= 0
                loss = F.cross_entropy(F.linear(x[keep], w), targets[keep])
            for blk in self.layers:  # MoM's load-balancing loss, when its coefficient is set
                aux = getattr(blk.mixer, "aux", None)
                if aux is not None:
                    loss = loss + aux
            return loss

    model = Model()
    decay, no_decay = [], []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=std)
                (no_decay if getattr(p, "no_decay", False) else decay).append(p)
            else:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                no_decay.append(p)
    tr = cfg["train"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tr.get("lr", 1e-3), betas=(tr.get("beta1", 0.9), tr.get("beta2", 0.999)),
        eps=tr.get("adam_eps", 1e-8))
    return model, opt


def batch(torch, cfg):
    """Random tokens; num_kv_pairs targets per sequence in its query region."""
    task = cfg["task"]
    B, T, V = cfg["train"]["batch_size"], task["seq_len"], task["vocab_size"]
    N = task["num_kv_pairs"]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.full((B, T), -1, dtype=torch.long)
    for b in range(B):
        pos = 2 * N + torch.randperm(T - 2 * N, generator=g)[:N]
        targets[b, pos] = torch.randint(V // 2, V, (N,), generator=g)
    return tokens, targets


class Session:
    """One built configuration: model, optimiser, batch, and its step."""

    def __init__(self, torch, cfg, full):
        self.torch = torch
        self.full = full
        gc.collect()
        reset_peak_rss()
        built = build(torch, cfg)
        self.why = built if isinstance(built, str) else None
        if self.why:
            return
        self.model, self.opt = built
        self.tokens, self.targets = batch(torch, cfg)
        self.clip = cfg["train"].get("grad_clip", 1.0)
        # train.matmul: bf16 -> the forward under CPU autocast (products in
        # bfloat16 through oneDNN, the rest as autocast decides), as a
        # researcher runs mixed precision in PyTorch; backward follows it
        self.bf16 = cfg["train"].get("matmul", "fp32") == "bf16"

    def step(self):
        """One training step: (wall seconds, CPU seconds of the process), or a
        string saying what went wrong."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        if self.bf16:
            with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
                loss = self.model(self.tokens, self.targets, self.full)
        else:
            loss = self.model(self.tokens, self.targets, self.full)
        loss.backward()
        if self.clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        return (dt, dc) if math.isfinite(loss.item()) else "loss is not finite"

    def close(self):
        """Free the model; the peak RSS in MiB since the session began."""
        rss = peak_rss_mib()
        self.model = self.opt = None
        gc.collect()
        return rss


def measure(torch, req):
    """One configuration start to end (by hand): the reply line."""
    ses = Session(torch, req["config"], req.get("head", "supervised") == "full")
    if ses.why:
        return "skip " + ses.why
    steps, budget, min_steps = int(req.get("steps", 10)), float(req.get("budget", 10.0)), 3
    for _ in range(2):
        if isinstance(ses.step(), str):
            return "skip loss is not finite"
    times, spent = [], 0.0
    while len(times) < steps and (len(times) < min_steps or spent < budget):
        dt = ses.step()
        if isinstance(dt, str):
            return "skip " + dt
        times.append(dt[0])
        spent += dt[0]
    rss = ses.close()
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    return "ok %.9g %.9g %.9g %d %.1f" % (med, times[0], times[-1], n, rss)


def serve(torch):
    """The --serve loop (commands in the module docstring)."""
    ses = None
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        try:
            if cmd == "build":
                req = json.loads(rest)
                ses = Session(torch, req["config"], req.get("head", "supervised") == "full")
                reply = "skip " + ses.why if ses.why else "ok"
                if ses.why:
                    ses = None
            elif cmd == "step":
                dt = ses.step() if ses else "no model built"
                reply = "skip " + dt if isinstance(dt, str) else "ok %.9g %.9g" % dt
            elif cmd == "done":
                reply = "ok %.1f" % (ses.close() if ses else peak_rss_mib())
                ses = None
            else:
                reply = "skip unknown command %r" % cmd
        except Exception as exc:  # one bad request must not end the server
            ses = None
            gc.collect()
            reply = "skip %s: %s" % (type(exc).__name__, str(exc).replace("\n", " "))
        print(reply, flush=True)


def self_check(torch):
    """chunk_rule against twin.py's definition, then the memory mixers against
    their correctness twins (the --self-check mode)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import twin
    g = torch.Generator().manual_seed(3)
    B, H, T, Dk, Dv, c = 2, 2, 23, 5, 4, 8
    bad = 0
    for rule, (delta, decay) in RULES.items():
        for normalize in (False, True):
            if normalize and (delta or decay):
                continue
            q = torch.rand(B, H, T, Dk, generator=g, dtype=torch.float64)
            k = torch.rand(B, H, T, Dk, generator=g, dtype=torch.float64) / Dk
            v = torch.randn(B, H, T, Dv, generator=g, dtype=torch.float64)
            beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
            gl = -0.5 * torch.rand(B, H, T, generator=g, dtype=torch.float64)
            S = torch.zeros(B, H, Dk, Dv, dtype=torch.float64)
            z = torch.zeros(B, H, Dk, dtype=torch.float64)
            want = []
            for t in range(T):
                S = twin.rule_step(S, k[:, :, t], v[:, :, t], beta[:, :, t], gl[:, :, t], rule)
                o = torch.einsum("bhk,bhkv->bhv", q[:, :, t], S)
                if normalize:
                    z = z + k[:, :, t]
                    o = o / ((q[:, :, t] * z).sum(-1, keepdim=True) + 1e-6)
                want.append(o)
            want = torch.stack(want, 2)
            vv = torch.cat([v, torch.ones_like(v[..., :1])], -1) if normalize else v
            bb, gg = beta if delta else None, gl if decay else None
            got = chunk_rule(torch, q, k, vv, bb, gg, c, delta, decay)
            # the same in two runs, the second starting from the first's final state
            s = T // 2 + 1

            def part(t, a, b):
                return None if t is None else t[:, :, a:b]

            o1, S1 = chunk_rule(torch, q[:, :, :s], k[:, :, :s], vv[:, :, :s], part(bb, 0, s),
                                part(gg, 0, s), c, delta, decay, final=True)
            o2 = chunk_rule(torch, q[:, :, s:], k[:, :, s:], vv[:, :, s:], part(bb, s, T),
                            part(gg, s, T), c, delta, decay, S0=S1)
            split = torch.cat([o1, o2], 2)
            if normalize:
                got = got[..., :Dv] / (got[..., Dv:] + 1e-6)
                split = split[..., :Dv] / (split[..., Dv:] + 1e-6)
            err = ((got - want).abs().max() / want.abs().max()).item()
            err2 = ((split - want).abs().max() / want.abs().max()).item()
            ok = max(err, err2) < 1e-12
            bad += not ok
            print("%s %-12s normalize %d: max relative difference %.3g, in two runs %.3g" %
                  ("ok  " if ok else "FAIL", rule, normalize, err, err2))
    import bench_torch_memories
    bad += bench_torch_memories.self_check()
    bad += autocast_check(torch)
    sys.exit(1 if bad else 0)


def autocast_check(torch):
    """Every mixer's twin takes a training step under bf16 autocast (what
    `memlab bench --matmul bf16` times) with a finite loss; the failures."""
    bad = 0
    for mixer in ("softmax", "linear", "deltanet", "gated_deltanet", "mamba2", "based") + \
            MEMORY_MIXERS:
        cfg = {"model": {"mixer": mixer, "d_model": 32, "n_layers": 2, "heads": 2, "conv": 4},
               "task": {"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": 2},
               "train": {"batch_size": 4, "matmul": "bf16"}}
        try:
            ses = Session(torch, cfg, False)
            got = ses.why or ses.step()
        except Exception as exc:  # noqa: BLE001 -- reported as the failure
            got = "%s: %s" % (type(exc).__name__, exc)
        ok = not isinstance(got, str)
        bad += not ok
        print("%s %-14s one step under bf16 autocast%s" %
              ("ok  " if ok else "FAIL", mixer, "" if ok else ": " + got))
    return bad


def main():
    opts = parse_argv(sys.argv[1:])
    if opts["threads"] is not None:
        set_threads_env(int(opts["threads"]))
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        import torch  # only now: the thread variables are read at import
    except ImportError as exc:
        print("unavailable %s" % str(exc).replace("\n", " "), flush=True)
        return

    torch.set_num_threads(threads)
    if opts["self_check"]:
        self_check(torch)
    torch.set_flush_denormal(True)  # memlab flushes denormals too
    if opts["serve"]:
        print("ready torch %s threads %d" % (torch.__version__, torch.get_num_threads()),
              flush=True)
        serve(torch)
        return
    if not opts["config"]:
        sys.exit("bench_torch.py: --serve or --config FILE (see the docstring)")
    with open(opts["config"]) as f:
        cfg = json.load(f)
    print(measure(torch, {"config": cfg, "head": opts["head"], "steps": opts["steps"],
                          "budget": opts["budget"]}))


if __name__ == "__main__":
    # bench_torch_memories imports this file as bench_torch: the same module, not a copy
    sys.modules.setdefault("bench_torch", sys.modules[__name__])
    main()
