/* real.h: the one precision switch of the kernel library.
 *
 * Every kernel is written once against `real` and compiled twice: float for
 * training (release) and double for the gradient checks (-DMEMLAB_DOUBLE).
 * The BLAS entry points follow the same switch. Nothing else lives here. */
#ifndef MEMLAB_REAL_H
#define MEMLAB_REAL_H

#include <cblas.h>

#ifdef MEMLAB_DOUBLE
typedef double real;
#define REAL_NAME "double"
#define cblas_gemm cblas_dgemm
#define cblas_gemv cblas_dgemv
#define cblas_axpy cblas_daxpy
#define cblas_dot cblas_ddot
#define RSQRT(x) (1.0 / sqrt(x))
#define REXP exp
#define RLOG log
#define RSQRTF sqrt
#define RTANH tanh
#define RABS fabs
#else
typedef float real;
#define REAL_NAME "float"
#define cblas_gemm cblas_sgemm
#define cblas_gemv cblas_sgemv
#define cblas_axpy cblas_saxpy
#define cblas_dot cblas_sdot
#define RSQRT(x) (1.0f / sqrtf(x))
#define REXP expf
#define RLOG logf
#define RSQRTF sqrtf
#define RTANH tanhf
#define RABS fabsf
#endif

#endif
