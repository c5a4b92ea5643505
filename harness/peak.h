/* peak.h: what the cores can do at most, so that the benchmark can say how
 * close a kernel, and OpenBLAS's SGEMM, come to the hardware. */
#ifndef MEMLAB_PEAK_H
#define MEMLAB_PEAK_H

/* The best single-precision GFLOP/s of `threads` threads each running
 * independent fused multiply-adds on registers (no memory traffic) at the
 * build's vector width, over repeats for about `seconds`. A multiply-add
 * counts 2 FLOPs. */
double fma_peak_gflops(int threads, double seconds);

/* The vector width the measurement uses: 512, 256 or 128 bits. */
int fma_peak_vector_bits(void);

/* The same for the bfloat16 dot product of train.matmul: bf16, through the
 * instruction its products use (gemm_bf16_amx(): AMX TDPBF16PS on tiles, else
 * VDPBF16PS, two multiply-adds per float lane), the limit of that precision's
 * products; 0 where the build or the CPU has no AVX-512 BF16. */
double bf16_peak_gflops(int threads, double seconds);

/* The instruction bf16_peak_gflops times: "TDPBF16PS" or "VDPBF16PS". */
const char *bf16_peak_instruction(void);

#endif
