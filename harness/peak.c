/* peak.c: the floating-point limit of the cores, measured (see peak.h).
 *
 * Each thread runs PEAK_CHAINS independent multiply-add chains on vectors as
 * wide as the build targets (512-bit with AVX-512, 256-bit with AVX2, else
 * 128-bit): enough independent chains to cover the FMA latency of current
 * cores, nothing loaded from memory. GNU C contracts a * b + c into one FMA
 * (-ffp-contract=fast is the default of gnu11). */
#include "peak.h"

#include "gemm_bf16.h"

#include <omp.h>
#include <time.h>

#if defined(__AVX512F__)
#define PEAK_BYTES 64
#elif defined(__AVX2__) || defined(__AVX__)
#define PEAK_BYTES 32
#else
#define PEAK_BYTES 16
#endif
#define PEAK_LANES (PEAK_BYTES / (int)sizeof(float))
#define PEAK_CHAINS 16

#if defined(__x86_64__) || defined(__i386__)
#define PEAK_IN_REGISTERS(x, y) __asm__("" : "+v"(x), "+v"(y))
#else
#define PEAK_IN_REGISTERS(x, y) ((void)0)
#endif

typedef float peak_vec __attribute__((vector_size(PEAK_BYTES)));

static double peak_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* iters rounds of PEAK_CHAINS multiply-adds; returns a value that depends on
 * every chain, so none is dropped. */
static float peak_chains(long iters) {
    peak_vec a[PEAK_CHAINS], b, c;
    for (int l = 0; l < PEAK_LANES; l++) b[l] = 1.0f + 0x1p-20f, c[l] = 0x1p-24f;
    for (int i = 0; i < PEAK_CHAINS; i++)
        for (int l = 0; l < PEAK_LANES; l++) a[i][l] = (float)(i + l) * 0x1p-10f;
    /* Without this GCC may leave b in memory and fold its load into every
     * FMA; the loads then bound the loop (seen on an Intel Xeon: 179 GFLOP/s
     * against 244 with both operands in registers). */
    PEAK_IN_REGISTERS(b, c);
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 16
        for (int i = 0; i < PEAK_CHAINS; i++) a[i] = a[i] * b + c;
    }
    float s = 0;
    for (int i = 0; i < PEAK_CHAINS; i++)
        for (int l = 0; l < PEAK_LANES; l++) s += a[i][l];
    return s;
}

/* The best GFLOP/s of `threads` threads each running chains(iters), which
 * does flop_per_iter FLOPs per iteration, over repeats for about `seconds`. */
static double peak_time(float (*chains)(long), double flop_per_iter, int threads,
                        double seconds) {
    if (threads < 1) threads = 1;
    long iters = 1L << 20;
    double best = 0, t_end = peak_now() + seconds;
    volatile float sink = 0;
    for (int r = 0; r < 32; r++) {
        double t0 = peak_now();
        float part = 0;
#pragma omp parallel num_threads(threads) reduction(+ : part)
        part += chains(iters);
        double dt = peak_now() - t0;
        sink = sink + part;
        double g = flop_per_iter * (double)iters * threads / dt / 1e9;
        if (g > best) best = g;
        if (dt < 0.02) iters *= 2; /* long enough that the region's start-up is noise */
        else if (r >= 4 && peak_now() > t_end) break;
    }
    return best;
}

double fma_peak_gflops(int threads, double seconds) {
    return peak_time(peak_chains, 2.0 * PEAK_LANES * PEAK_CHAINS, threads, seconds);
}

int fma_peak_vector_bits(void) { return 8 * PEAK_BYTES; }

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

/* iters rounds of PEAK_CHAINS VDPBF16PS (16 lanes, two products each). */
static float peak_bf16_chains(long iters) {
    __m512 a[PEAK_CHAINS];
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 */
    const __m512bh y = (__m512bh)_mm512_set1_epi16(0x2f80); /* 2^-32 */
    for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 16
        for (int i = 0; i < PEAK_CHAINS; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    }
    float s = 0;
    for (int i = 0; i < PEAK_CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

/* iters rounds of four TDPBF16PS on tiles of 16 x 16 floats (16 rows x 16
 * pairs of A, 16 pairs x 16 columns of B, every bfloat16 2^-32): 4 x 16 x 16 x
 * 32 x 2 FLOPs. The accumulators are independent, A and B stay in tiles. */
__attribute__((target("amx-tile,amx-bf16"))) static float peak_amx_chains(long iters) {
    unsigned short ab[16 * 32] __attribute__((aligned(64)));
    float out[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ab[i] = 0x2f80;
    gemm_bf16_tiles_begin();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ab, 64);
    _tile_loadd(5, ab, 64);
    _tile_loadd(6, ab, 64);
    _tile_loadd(7, ab, 64);
    for (long k = 0; k < iters; k++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    gemm_bf16_tiles_end();
    return out[0];
}

double bf16_peak_gflops(int threads, double seconds) {
    if (!gemm_bf16_available()) return 0;
    if (gemm_bf16_amx()) /* fewer, longer rounds: one is 64 x 16 x 16 x 32 FLOPs */
        return peak_time(peak_amx_chains, 4.0 * 16 * 16 * 32 * 2, threads, seconds);
    return peak_time(peak_bf16_chains, 4.0 * 16 * PEAK_CHAINS, threads, seconds);
}

const char *bf16_peak_instruction(void) { return gemm_bf16_amx() ? "TDPBF16PS" : "VDPBF16PS"; }
#else
const char *bf16_peak_instruction(void) { return "VDPBF16PS"; }

double bf16_peak_gflops(int threads, double seconds) {
    (void)threads, (void)seconds;
    return 0;
}
#endif
