/* gemm_bf16.h: the bfloat16 matrix product (AVX-512 BF16, or AMX tiles where
 * the CPU and the OS have them), the opt-in
 * precision of train.matmul: bf16.
 *
 * C[M,N] = alpha op(A) op(B) + beta C, row-major, float in and out: every
 * element of op(A) and op(B) is rounded to bfloat16 (8 significant bits, round
 * to nearest even, as VCVTNEPS2BF16), the products are summed in float
 * (VDPBF16PS, two products per lane and step, k in ascending order), then
 * scaled by alpha and added to beta C (C is not read when beta is 0; the AMX
 * kernel sums C = op(A) op(B) + C on from C's value, gemm_bf16.c). Each
 * element of C is computed the same way whatever the shape around it, so a
 * product split into row or column blocks gives the same bits. The float
 * build's ml_gemm sends its products here when the matmul precision is bf16
 * (matmul.c); float products of the double build never come here. */
#ifndef MEMLAB_GEMM_BF16_H
#define MEMLAB_GEMM_BF16_H

/* 1 when this build has the kernel and this CPU runs it (AVX-512 BF16). */
int gemm_bf16_available(void);

/* 1 when the CPU also has AMX-BF16 tiles and the kernel grants them to this
 * process (asked once, on the first call). */
int gemm_bf16_amx_available(void);

/* Which kernel the products go through: AMX tiles (TDPBF16PS, the default
 * where available) or the AVX-512 BF16 micro-kernel (VDPBF16PS). Both round
 * the same inputs and sum each element's pairs in ascending k in a float
 * chain; whether two machines' hardware rounds inside a pair alike is the
 * hardware's, so results are compared to a reference, not across kernels.
 * gemm_bf16_use_amx(on) chooses (AMX only where available; set it before
 * threads run products) and returns the choice; gemm_bf16_amx() tells it. */
int gemm_bf16_use_amx(int on);
int gemm_bf16_amx(void);

/* The kernel by name, as runs and reports record it: "AMX", "AVX-512 BF16"
 * or "none" (no bf16 kernel in this build or on this CPU). */
const char *gemm_bf16_kernel(void);

/* This thread's tile configuration (palette 1, tiles 0-7 of 16 rows x 64
 * bytes), loaded and released around each AMX product; also for timing the
 * tile instruction (harness/peak.c). Only where gemm_bf16_amx(). */
void gemm_bf16_tiles_begin(void);
void gemm_bf16_tiles_end(void);

/* The product above; only when gemm_bf16_available(). ta/tb nonzero:
 * transpose. No allocation: packing buffers are per thread and fixed. */
void gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);

/* x rounded to the nearest bfloat16, ties to even, as a float (subnormals
 * to zero, as the hardware conversion); for references and tests. */
float bf16_round(float x);

#endif
