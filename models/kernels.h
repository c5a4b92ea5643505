/* kernels.h: the op library, forward/backward pairs on caller-owned memory.
 *
 * Dimension letters: B batch, T time, C channels (d_model), H heads, D head
 * width, K kernel taps, V vocabulary, N rows (usually B*T), S supervised rows.
 * Tensors are row-major, shapes given as [..] in each comment.
 *
 * Conventions (llm.c style): outputs first, then saved activations, then
 * inputs, then parameters, then sizes. Kernels never allocate. Every backward
 * ACCUMULATES (+=) into its gradient outputs; a NULL gradient pointer means
 * "not wanted" and is skipped. Linear weights use PyTorch's [out, in] layout. */
#ifndef MEMLAB_KERNELS_H
#define MEMLAB_KERNELS_H

#include <stddef.h>
#include "real.h"

/* ---- embedding --------------------------------------------------------- */
/* out[B,T,C] = wte[tok[b,t],:] + (wpe ? wpe[t,:] : 0). wte [V,C], wpe [T,C]. */
void embedding_forward(real *out, const int *tok, const real *wte, const real *wpe,
                       int B, int T, int C);
void embedding_backward(real *dwte, real *dwpe, const real *dout, const int *tok,
                        int B, int T, int C);

/* ---- normalisation ----------------------------------------------------- */
/* LayerNorm over the last axis: out = (x - mean) * rstd * w + b.
 * x,out [N,C]; mean,rstd [N] saved; w,b [C]. eps inside the sqrt. */
void layernorm_forward(real *out, real *mean, real *rstd, const real *x, const real *w,
                       const real *b, int N, int C, real eps);
void layernorm_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                        const real *w, const real *mean, const real *rstd, int N, int C);
/* RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps). rstd [N] saved. */
void rmsnorm_forward(real *out, real *rstd, const real *x, const real *w, int N, int C,
                     real eps);
void rmsnorm_backward(real *dx, real *dw, const real *dout, const real *x, const real *w,
                      const real *rstd, int N, int C);

/* ---- matrix products (OpenBLAS) and their operation count ---------------- */
/* Row-major C[M,N] = alpha op(A) op(B) + beta C; ta/tb nonzero: transpose. */
void ml_gemm(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
             const real *B, int ldb, real beta, real *C, int ldc);
/* The precision of ml_gemm in the float build: 0 fp32 (OpenBLAS), 1 bfloat16
 * inputs with float sums (gemm_bf16.h; the caller checks that the CPU has
 * it). Process-wide; the trainer sets it from train.matmul for a run. GEMV
 * and the triangular solve stay fp32. */
void ml_matmul_set_bf16(int on);
int ml_matmul_bf16(void);
/* y = alpha op(A) x + beta y, A [M,N] row-major; x, y with strides incx, incy. */
void ml_gemv(int ta, int M, int N, real alpha, const real *A, int lda, const real *x, int incx,
             real beta, real *y, int incy);
/* X[n,m] <- op(A)^-1 X for A [n,n] unit lower triangular (ta: A^T). */
void ml_trsm_unit_lower(int ta, int n, int m, const real *A, int lda, real *X, int ldx);
/* Process-wide count of the FLOPs of every matrix product since the last
 * reset (matmul.c; the products above add theirs, no kernel calls BLAS
 * directly). */
void ml_flops_add(double n);
double ml_flops_read(void);
void ml_flops_reset(void);
/* Seconds spent inside those products since the process started, while the
 * clock is on (off by default: memlab bench turns it on to split a step into
 * products and the rest). A product inside a parallel region of n threads
 * adds 1/n of its time, so that the sum estimates wall time. */
void ml_products_clock(int on);
double ml_products_seconds(void);
/* Seconds of the monotonic clock that clock reads (for the callers that time
 * around it: the model's phases, the tests). */
double ml_clock_s(void);

/* ---- linear layer (OpenBLAS GEMM) ---------------------------------------- */
/* out[N,OC] = x[N,IC] w[OC,IC]^T + b[OC] (b may be NULL). */
void linear_forward(real *out, const real *x, const real *w, const real *b, int N, int IC,
                    int OC);
/* dx[N,IC] += dout w; dw[OC,IC] += dout^T x; db[OC] += colsum(dout). */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC);
/* The same on columns of wider arrays: out's (dout's) rows ldo (ldd) >= OC
 * apart, e.g. one block of a fused projection. */
void linear_forward_ld(real *out, int ldo, const real *x, const real *w, const real *b, int N,
                       int IC, int OC);
void linear_backward_ld(real *dx, real *dw, real *db, const real *dout, int ldd, const real *x,
                        const real *w, int N, int IC, int OC);
/* The projection with its first OQ output columns (e.g. the queries of a
 * fused q|k|v) wanted only at S rows (ascending flat indices, S < N):
 * out[N,OC] gets columns [OQ, OC) for every row, [0, OQ) for the rows and
 * zero at the others. xr [S,IC] holds the rows' inputs; qr [S,OQ] scratch. */
void linear_forward_rows(real *out, real *qr, const real *x, const real *xr, const real *w,
                         const real *b, const int *rows, int S, int N, int IC, int OC, int OQ);
/* Its backward: dx[N,IC] += the part of columns [OQ, OC) of dout[N,OC],
 * dxr[S,IC] += the part of columns [0, OQ) at the rows (the caller scatters
 * it), dw, db += both. qr [S,OQ] scratch. */
void linear_backward_rows(real *dx, real *dxr, real *dw, real *db, real *qr, const real *dout,
                          const real *x, const real *xr, const real *w, const int *rows, int S,
                          int N, int IC, int OC, int OQ);

/* ---- rows by index ---------------------------------------------------------- */
/* dst[s, 0:C] = src[rows[s], 0:C] (src row stride ld) for s < S. */
void rows_gather(real *dst, const real *src, int ld, const int *rows, int S, int C);
/* dst[rows[s], 0:C] += src[s, 0:C] (both of row width C). */
void rows_scatter_add(real *dst, const real *src, const int *rows, int S, int C);
/* dst[rows[s], 0:C] = src[s, 0:C] (dst row stride ld, src rows of width C). */
void rows_scatter(real *dst, int ld, const real *src, const int *rows, int S, int C);
/* The first s in [0, S) with rows[s] >= pos, S when there is none (rows
 * ascending): rows[lower_bound(a)..lower_bound(b)) are the rows in [a, b). */
int rows_lower_bound(const int *rows, int S, int pos);
/* The end e <= s1 of the run of consecutive positions that starts at rows[s]:
 * rows[s..e) = rows[s], rows[s] + 1, ... (s < s1). */
int rows_run_end(const int *rows, int s, int s1);

/* ---- GELU (exact, erf form, as torch.nn.functional.gelu) ------------------ */
void gelu_forward(real *out, const real *x, size_t n);
void gelu_backward(real *dx, const real *dout, const real *x, size_t n);

/* ---- short causal depthwise convolution --------------------------------- */
/* out[b,t,c] = bias[c] + sum_{j<K} w[c,j] * x[b, t-(K-1)+j, c], zero before t=0.
 * Same as torch Conv1d(C, C, K, groups=C, padding=K-1) truncated to the first T
 * outputs: w[c,K-1] weighs the current token. x,out [B,T,C]; w [C,K]; bias [C]. */
void conv1d_causal_forward(real *out, const real *x, const real *w, const real *bias,
                           int B, int T, int C, int K);
void conv1d_causal_backward(real *dx, real *dw, real *dbias, const real *dout,
                            const real *x, const real *w, int B, int T, int C, int K);
/* Threads the two above split a call of this shape over (parallel.h). */
int conv1d_causal_threads(int B, int T, int C, int K);
/* naive loop references with the same contract */
void conv1d_causal_forward_ref(real *out, const real *x, const real *w, const real *bias,
                               int B, int T, int C, int K);
void conv1d_causal_backward_ref(real *dx, real *dw, real *dbias, const real *dout,
                                const real *x, const real *w, int B, int T, int C, int K);

/* ---- masked cross-entropy ------------------------------------------------ */
/* Rows whose target is < 0 are ignored (no loss, no gradient).
 * probs[S,V] receives softmax(logits) (may alias logits). Returns the SUM of
 * -log p[target] over the kept rows, accumulated in double; *count (if not
 * NULL) receives the number of kept rows. */
double crossentropy_forward(real *probs, const real *logits, const int *targets, int S,
                            int V, int *count);
/* dlogits[S,V] += scale * (probs - onehot(target)) on kept rows. */
void crossentropy_backward(real *dlogits, const real *probs, const int *targets, int S,
                           int V, real scale);
/* The same in place, for a caller that no longer needs the probabilities:
 * probs[S,V] becomes scale * probs - scale * onehot(target) on kept rows and 0
 * on the others. Rows are shared among the threads (the same numbers at
 * every thread count). */
void crossentropy_grad_inplace(real *probs, const int *targets, int S, int V, real scale);

/* ---- the LM head's loss and gradient in blocks (lm_head.c) --------------- */
/* Most groups of rows, each with its own partial of dW. */
#define LMH_MAX_GROUPS 4
/* Rows per block for vocabulary V: about 8 MiB of logits (at least 16 rows),
 * fewer when want > 0 asks for fewer, at most max_rows. */
int lm_head_block_rows(int V, int want, int max_rows);
/* Groups for S rows in blocks of R: depends on S and R only. */
int lm_head_groups(int S, int R);
/* For rows y[S,C], head W[V,C], targets tgt[S] (< 0: no loss): returns the
 * loss sum over kept rows (crossentropy_forward) and *count the kept rows;
 * dy[S,C] = d logits W is overwritten, with d logits = (softmax - onehot) /
 * count; partial g of parts[G,V,C] (G = lm_head_groups(S, R)) receives group
 * g's share of d logits^T y. blk holds G blocks of R x V logits. */
double lm_head_loss_grad(real *dy, real *parts, real *blk, const real *y, const real *W,
                         const int *tgt, int S, int V, int C, int R, int *count);
/* dW[V,C] += the G partials, in group order. */
void lm_head_add_parts(real *dW, const real *parts, int G, int V, int C);

/* ---- optimiser ------------------------------------------------------------ */
/* One AdamW step (decoupled weight decay, bias-corrected moments), step t >= 1:
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p). */
void adamw_step(real *p, const real *g, real *m, real *v, size_t n, real lr, real beta1,
                real beta2, real eps, real wd, int t);
/* The same step on the gradient g * gs (g unchanged); gs 1 is adamw_step. */
void adamw_step_scaled(real *p, const real *g, real *m, real *v, size_t n, real lr, real beta1,
                       real beta2, real eps, real wd, int t, real gs);
/* Learning rate at step (0-based) of total: linear warmup from lr_max/warmup
 * to lr_max over `warmup` steps, then cosine decay to lr_min at step total-1. */
double lr_schedule(int step, int total, int warmup, double lr_max, double lr_min);
/* L2 norm of g, accumulated in double. */
double grad_norm(const real *g, size_t n);
/* If the norm exceeds max_norm > 0, scale g by max_norm / norm. Returns the
 * norm before clipping. */
double grad_clip(real *g, size_t n, double max_norm);
/* The norm as grad_clip returns it, and in *scale the factor grad_clip would
 * apply (1 when it would not), g unchanged: for adamw_step_scaled. */
double grad_clip_scale(const real *g, size_t n, double max_norm, real *scale);

/* ---- causal softmax attention ------------------------------------------- */
/* Softmax of row a[lo..i] in place (scores already scaled; lo <= i < T),
 * vectorised with the float build's exp (fastexp.h); the rest of the row
 * a[0..T) becomes exact zeros. Shared by the attention kernels. */
void softmax_row(real *a, int lo, int i, int T);
/* qkv [B,T,3,H,D] packed (q, k, v blocks of H*D per token); out [B,T,H,D];
 * att [B,H,T,T] saved probabilities (entries outside the mask are 0).
 * Scale 1/sqrt(D). window 0: full causal; window w > 0: query i sees keys j
 * with i-w < j <= i (w keys, itself included). */
void attention_forward(real *out, real *att, const real *qkv, int B, int T, int H, int D,
                       int window, real *scratch);
/* dqkv [B,T,3,H,D] += gradient. scratch: attention_scratch_size(T,D) reals. */
void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att,
                        int B, int T, int H, int D, int window, real *scratch);
size_t attention_scratch_size(int T, int D);
/* Query-key pairs the fast kernel's GEMMs compute per (b, h): the visible
 * pairs plus the masked corners of its row blocks (FLOP accounting). */
double attention_band_pairs(int T, int D, int window);
/* naive loop references with the same contract (scratch unused). */
void attention_forward_ref(real *out, real *att, const real *qkv, int B, int T, int H,
                           int D, int window);
void attention_backward_ref(real *dqkv, const real *dout, const real *qkv,
                            const real *att, int B, int T, int H, int D, int window);

/* The same attention for a subset of query rows (the last layer when only the
 * LM head's rows are needed). rows[S]: ascending flat positions b*T + t;
 * q [S,H,D] the queries of those rows; kv [B,T,2,H,D] keys then values of
 * every token; out [S,H,D]; att [H,S,T] saved probabilities (zeros outside
 * the visible keys). */
void attention_rows_forward(real *out, real *att, const real *q, const real *kv,
                            const int *rows, int S, int B, int T, int H, int D, int window);
/* dq [S,H,D] and dkv [B,T,2,H,D] += gradient of out [S,H,D].
 * scratch: attention_scratch_size(T, D) reals. */
void attention_rows_backward(real *dq, real *dkv, const real *dout, const real *q,
                             const real *kv, const real *att, const int *rows, int S, int B,
                             int T, int H, int D, int window, real *scratch);
/* Query-key pairs the rows kernel's GEMMs compute (FLOP accounting). */
double attention_rows_band_pairs(const int *rows, int S, int T, int window);
/* references with the same contract: the naive full attention read at the
 * rows (they allocate; tests only). */
void attention_rows_forward_ref(real *out, real *att, const real *q, const real *kv,
                                const int *rows, int S, int B, int T, int H, int D,
                                int window);
void attention_rows_backward_ref(real *dq, real *dkv, const real *dout, const real *q,
                                 const real *kv, const real *att, const int *rows, int S,
                                 int B, int T, int H, int D, int window);

/* ---- feature maps (linear attention) -------------------------------------- */
typedef enum { FMAP_IDENTITY = 0, FMAP_ELU1 = 1, FMAP_RELU = 2 } fmap_kind;
/* out[i] = phi(x[i]) for n elements; out may not alias x. */
void featuremap_forward(real *out, const real *x, size_t n, fmap_kind f);
/* dx[i] += dout[i] * phi'(x[i]). */
void featuremap_backward(real *dx, const real *dout, const real *x, size_t n, fmap_kind f);
/* dx[i] = dout[i] * phi'(x[i]) (dx overwritten), with phi = featuremap_forward's
 * output at x: elu+1's derivative below 0 is phi itself, so no exp is
 * recomputed. The same numbers as featuremap_backward into a zeroed dx. */
void featuremap_backward_set(real *dx, const real *dout, const real *x, const real *phi, size_t n,
                             fmap_kind f);

/* ---- linear attention core ----------------------------------------------- */
/* Per (b,h): S_t = S_{t-1} + k_t v_t^T, num_t = S_t^T q_t; with normalize,
 * z_t = z_{t-1} + k_t, o_t = num_t / (q_t.z_t + eps), else o_t = num_t.
 * q,k are [B,T,H,Dk] and v [B,T,H,Dv] read with row strides (elements from
 * token t to t+1 of the same batch; batch b starts at b*T*stride); the feature
 * map is already applied. out [B,T,H,Dv] contiguous. */
typedef enum { LA_RECURRENT = 0, LA_PARALLEL = 1, LA_CHUNKWISE = 2 } la_form;
typedef struct {
    int B, T, H, Dk, Dv;
    int q_stride, k_stride, v_stride; /* row strides of q, k, v (and dq, dk, dv) */
    int normalize;                    /* divide by q.z + eps */
    real eps;
    int chunk;                        /* chunk length (chunkwise form) */
    la_form form;
} linattn_dims;
/* Reals that forward saves for backward, and backward's scratch. */
size_t linattn_save_size(const linattn_dims *d);
size_t linattn_scratch_size(const linattn_dims *d);
/* Query-key pairs per (b, h) the chunkwise form's intra-chunk products
 * compute (FLOP accounting): the visible ones and the masked upper halves of
 * the diagonal sub-blocks. */
double linattn_band_pairs(int T, int chunk);
/* Rows per sub-block of the chunkwise form's intra-chunk products, for the
 * tests of both layouts: rows > 0 fixes it (1 << 30: whole chunks), 0 goes
 * back to the automatic choice (16 rows; whole chunks on AMX tiles). Set it
 * before threads run. */
void linattn_set_sub(int rows);
void linattn_forward(real *out, real *save, const real *q, const real *k, const real *v,
                     const linattn_dims *d, real *scratch);
/* dq, dk, dv (same strides as q, k, v) += gradient. */
void linattn_backward(real *dq, real *dk, real *dv, const real *dout, const real *out,
                      const real *save, const real *q, const real *k, const real *v,
                      const linattn_dims *d, real *scratch);

/* ---- SiLU (x * sigmoid(x)), elementwise ----------------------------------- */
/* out may alias x. */
void silu_forward(real *out, const real *x, size_t n);
/* dx[i] += dout[i] * s (1 + x (1 - s)), s = sigmoid(x[i]); x is the forward input. */
void silu_backward(real *dx, const real *dout, const real *x, size_t n);
/* y[i] = silu(g[i]) a[i] (y may alias a); backward: dg += dy a silu'(g),
 * da = dy silu(g) (overwritten; da may alias dy). */
void silu_mul_forward(real *y, const real *g, const real *a, size_t n);
void silu_mul_backward(real *dg, real *da, const real *dy, const real *g, const real *a,
                       size_t n);

/* ---- L2 normalisation of rows -------------------------------------------- */
/* y[N,D] = x * rn, rn[N] = 1/sqrt(sum x^2 + eps) saved. y may alias x. */
void l2norm_forward(real *y, real *rn, const real *x, int N, int D, real eps);
/* dx += rn (dy - y (y.dy)): needs the forward's output y, not x. */
void l2norm_backward(real *dx, const real *dy, const real *y, const real *rn, int N, int D);

/* ---- Based's 2nd-order Taylor feature map --------------------------------- */
/* For n rows x [D] (row r at x + r*ldx) writes phi [F] at out + r*ldo,
 * F = taylor_width(D) = 1 + D + D(D+1)/2:
 *   phi = [1, x / D^(1/4), x_i x_i / sqrt(2D) (i), x_i x_j / sqrt(D) (i < j)]
 * with the quadratic terms in row-major upper-triangle order, so that
 * phi(q).phi(k) = 1 + q.k / sqrt(D) + (q.k)^2 / (2D). */
int taylor_width(int D);
void taylor_forward(real *out, const real *x, int n, int D, int ldx, int ldo);
/* dx += J^T dout, same layout. */
void taylor_backward(real *dx, const real *dout, const real *x, int n, int D, int ldx,
                     int ldo);

/* ---- decay and delta rules (the gated delta family) ----------------------- */
/* Per (b,h), S_0 = 0 [Dk,Dv], for t = 1..T:
 *   S_t = a_t (I - beta_t k_t k_t^T)^[delta] S_{t-1} + beta_t^[delta] k_t v_t^T,
 *   a_t = e^{g_t} when decay (g_t <= 0, a log decay) else 1;  o_t = S_t^T q_t.
 * delta 0, decay 0: unnormalised linear attention; decay only: scalar decay
 * (Mamba-2, simple GLA); delta only: DeltaNet; both: gated DeltaNet.
 * q,k [B,T,H,Dk], v [B,T,H,Dv] read through row strides (as linattn);
 * beta, g [B,T,H] read with gate_stride elements from token to token (H when
 * contiguous); out [B,T,H,Dv] contiguous.
 * GD_RECURRENT runs token by token (the reference, and the generation form);
 * GD_CHUNKWISE runs chunks of `chunk` tokens on GEMMs, the delta rule through
 * the WY representation (a unit lower-triangular solve per chunk). Both save
 * the state at the start of every chunk; the recurrent form recomputes inside
 * a chunk for the backward, the chunkwise one also saves each chunk's
 * products (scores, decay mask, the solve's matrix and results). */
typedef enum { GD_RECURRENT = 0, GD_CHUNKWISE = 1 } gd_form;
typedef struct {
    int B, T, H, Dk, Dv;
    int q_stride, k_stride, v_stride; /* row strides of q, k, v (and dq, dk, dv) */
    int gate_stride;                  /* row stride of beta, g (and dbeta, dg) */
    int delta;                        /* delta rule: beta used */
    int decay;                        /* scalar decay: g used */
    int chunk;                        /* chunk length (both forms: checkpoint spacing) */
    gd_form form;
} gdelta_dims;
size_t gdelta_save_size(const gdelta_dims *d);
size_t gdelta_scratch_size(const gdelta_dims *d);
/* save (gdelta_save_size reals) may be NULL when no backward follows. beta
 * and g may be NULL when delta, decay are off. */
void gdelta_forward(real *out, real *save, const real *q, const real *k, const real *v,
                    const real *beta, const real *g, const gdelta_dims *d, real *scratch);
/* dq, dk, dv, dbeta, dg (strides as their inputs; any may be NULL) += gradient,
 * from the save of a forward on the same inputs. */
void gdelta_backward(real *dq, real *dk, real *dv, real *dbeta, real *dg, const real *dout,
                     const real *save, const real *q, const real *k, const real *v,
                     const real *beta, const real *g, const gdelta_dims *d, real *scratch);

/* ---- top-K softmax router (mixture of memories) -------------------------- */
/* Per row of logits [N,E]: p = softmax (accumulated in double), sel[N,K] the
 * K largest p in decreasing order (ties to the lower index), w[N,K] =
 * p[sel] / sum of p[sel] (renormalised over the selected). */
void router_forward(real *p, int *sel, real *w, const real *logits, int N, int E, int K);
/* Selection held fixed: dlogits[N,E] += d/dlogits of (dw . w + dp_all . p), where
 * dw [N,K] is the gradient of the weights and dp_all [E] (may be NULL) a
 * gradient that every row's p receives (the load-balancing loss). */
void router_backward(real *dlogits, const real *dw, const real *dp_all, const real *p,
                     const int *sel, const real *w, int N, int E, int K);
/* Load balancing (Switch / Mixtral form): frac[e] = share of the N rows that
 * selected e (so sum frac = K), mean[e] = mean of p[:,e]; returns
 * E * sum_e frac[e] mean[e] (K when perfectly balanced). frac, mean [E]. */
double router_balance(real *frac, real *mean, const real *p, const int *sel, int N, int E,
                      int K);

/* ---- cross attention (slot mixer) ---------------------------------------- */
/* Softmax attention of queries q [B,Tq,H,D] over keys k and values v
 * [B,Tk,H,D]; out [B,Tq,H,D]; att [B,H,Tq,Tk] saved probabilities (zero
 * outside the mask), contiguous. Each of q, k, v, out is read at
 * base + b * (batch stride) + row * (row stride) + h * D, so the rows may sit
 * in packed buffers. Mask: causal == 0, every query sees every key; causal,
 * query i sees keys j <= i + offset. A query that sees no key outputs zeros.
 * Scale 1/sqrt(D).
 *
 * Keys in two parts: with a prefix (pre != NULL), key rows [0, pre->T) come
 * from pre->k, pre->v (row stride ld, batch stride b; b = 0: one set that
 * every batch element reads) and row j >= pre->T from k, v at row j - pre->T.
 * The backward adds the prefix's gradients into pre->dk, pre->dv (either may
 * be NULL; row stride ld, batch stride db, which must not be 0: batch
 * elements may run on different threads). */
typedef struct xattn_prefix {
    int T, ld;
    size_t b, db;
    const real *k, *v;
    real *dk, *dv;
} xattn_prefix;
typedef struct xattn_dims {
    int B, H, D, Tq, Tk;
    int ldq, ldk, ldv, ldo; /* row strides of q, k, v, out (and of their gradients) */
    size_t bq, bk, bv, bo;  /* batch strides of the same */
    int causal, offset;
    const xattn_prefix *pre; /* the first keys' source, NULL: none */
} xattn_dims;
size_t xattn_scratch_size(const xattn_dims *d);
void xattn_forward(real *out, real *att, const real *q, const real *k, const real *v,
                   const xattn_dims *d, real *scratch);
/* dq, dk, dv (any may be NULL; strides of q, k, v) += gradient; dout has the
 * strides of out. scratch: xattn_scratch_size reals. */
void xattn_backward(real *dq, real *dk, real *dv, const real *dout, const real *q,
                    const real *k, const real *v, const real *att, const xattn_dims *d,
                    real *scratch);
/* naive loop references with the same contract (no scratch). */
void xattn_forward_ref(real *out, real *att, const real *q, const real *k, const real *v,
                       const xattn_dims *d);
void xattn_backward_ref(real *dq, real *dk, real *dv, const real *dout, const real *q,
                        const real *k, const real *v, const real *att, const xattn_dims *d);

#endif
