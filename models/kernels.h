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

/* ---- linear layer (OpenBLAS GEMM) ---------------------------------------- */
/* out[N,OC] = x[N,IC] w[OC,IC]^T + b[OC] (b may be NULL). */
void linear_forward(real *out, const real *x, const real *w, const real *b, int N, int IC,
                    int OC);
/* dx[N,IC] += dout w; dw[OC,IC] += dout^T x; db[OC] += colsum(dout). */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC);

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

/* ---- optimiser ------------------------------------------------------------ */
/* One AdamW step (decoupled weight decay, bias-corrected moments), step t >= 1:
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p). */
void adamw_step(real *p, const real *g, real *m, real *v, size_t n, real lr, real beta1,
                real beta2, real eps, real wd, int t);
/* Learning rate at step (0-based) of total: linear warmup from lr_max/warmup
 * to lr_max over `warmup` steps, then cosine decay to lr_min at step total-1. */
double lr_schedule(int step, int total, int warmup, double lr_max, double lr_min);
/* L2 norm of g, accumulated in double. */
double grad_norm(const real *g, size_t n);
/* If the norm exceeds max_norm > 0, scale g by max_norm / norm. Returns the
 * norm before clipping. */
double grad_clip(real *g, size_t n, double max_norm);

/* ---- causal softmax attention ------------------------------------------- */
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
/* naive loop references with the same contract (scratch unused). */
void attention_forward_ref(real *out, real *att, const real *qkv, int B, int T, int H,
                           int D, int window);
void attention_backward_ref(real *dqkv, const real *dout, const real *qkv,
                            const real *att, int B, int T, int H, int D, int window);

/* ---- feature maps (linear attention) -------------------------------------- */
typedef enum { FMAP_IDENTITY = 0, FMAP_ELU1 = 1, FMAP_RELU = 2 } fmap_kind;
/* out[i] = phi(x[i]) for n elements; out may not alias x. */
void featuremap_forward(real *out, const real *x, size_t n, fmap_kind f);
/* dx[i] += dout[i] * phi'(x[i]). */
void featuremap_backward(real *dx, const real *dout, const real *x, size_t n, fmap_kind f);

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
void linattn_forward(real *out, real *save, const real *q, const real *k, const real *v,
                     const linattn_dims *d, real *scratch);
/* dq, dk, dv (same strides as q, k, v) += gradient. */
void linattn_backward(real *dq, real *dk, real *dv, const real *dout, const real *out,
                      const real *save, const real *q, const real *k, const real *v,
                      const linattn_dims *d, real *scratch);

#endif
