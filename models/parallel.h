/* parallel.h: the one thread pool of the kernels (OpenMP) and how a kernel
 * splits its work over it.
 *
 * memlab's thread setting is OpenBLAS's thread count (--threads sets it).
 * A kernel whose work divides into independent units (sequences, heads)
 * asks ml_par_threads how many threads that work is worth, then runs
 * ml_par_ranges: one contiguous range of units per thread, OpenBLAS
 * single-threaded inside, so that only OpenMP's pool is busy (two pools
 * spinning on the same cores slow each other down). Scratch is sized for
 * ml_par_slots() threads at build time, one slot per thread. A unit's
 * results never depend on which thread ran it, so a run gives the same
 * numbers at every thread count. */
#ifndef MEMLAB_PARALLEL_H
#define MEMLAB_PARALLEL_H

#include <stddef.h>

/* Most threads (and scratch slots) a kernel ever uses. */
#define ML_PAR_MAX_SLOTS 64

/* Scratch slots a kernel provides: one per processor (fixed for the process,
 * at most ML_PAR_MAX_SLOTS), so the size asked for at build time holds at any
 * setting. */
int ml_par_slots(void);

/* Threads for `units` independent units of `work` multiply-adds in all:
 * the thread setting, at most one per slot and per unit, and at most one per
 * min_work multiply-adds (small calls such as gradient checks stay serial);
 * 1 inside a parallel region or without OpenMP. */
int ml_par_threads(long units, double work, double min_work);

/* fn(ctx, u0, u1, slot) over [0, n): one call with slot 0 when nt <= 1,
 * else thread t of nt gets [n t / nt, n (t + 1) / nt) and slot t, with
 * OpenBLAS single-threaded and this thread's denormal mode. */
void ml_par_ranges(int n, int nt, void (*fn)(void *ctx, int u0, int u1, int slot), void *ctx);

/* memset(p, 0, bytes), split among the threads when large, for the step's
 * large gradient buffers: on a 2-core host of the README's measurements,
 * zeroing 64 MiB ran at 12.7 GB/s on one thread and 41.7 GB/s on two.
 * Inside a parallel region, one memset. */
void ml_par_zero(void *p, size_t bytes);

/* The first `bytes` of each of `rows` rows `stride` bytes apart set to zero
 * (a block of columns of a row-major matrix), rows split among the threads
 * as ml_par_zero splits bytes. */
void ml_par_zero_rows(void *p, size_t rows, size_t stride, size_t bytes);

/* The calling thread's floating-point mode (denormal flushing; 0 without
 * SSE). The mode is per thread: a kernel with its own parallel region
 * sets the caller's mode in each of its threads, as ml_par_ranges does. */
unsigned ml_fp_mode(void);
void ml_fp_mode_set(unsigned mode);

#endif
