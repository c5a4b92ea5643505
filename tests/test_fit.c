/* test_fit.c: the scaling-law fits of fit.c.
 *
 * The power law y = a x^b is checked against an independent derivation (the
 * normal equations of the design matrix [1, log x], inverted explicitly,
 * rather than fit.c's centred sums), for exact recovery of known parameters,
 * and for calibrated standard errors: over many synthetic data sets with
 * known noise, the reported standard error of b matches the spread of the
 * fitted b and the 95% intervals cover the true exponent about 95% of the
 * time. The same for y = a x^b + c. Bad input is refused with a message.
 * Fitting a stored sweep end to end (export, groups, the fits table) is
 * tested on the command line (tests/cli_figures.sh). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fit.h"
#include "test.h"

/* n standard normal draws from test_fill's uniforms (Box-Muller). */
static void normals(double *z, int n, unsigned long long seed) {
    double *u = malloc(sizeof *u * (size_t)(2 * n));
    if (!u) return;
    test_fill(u, (size_t)(2 * n), seed, 1e-12, 1.0);
    for (int i = 0; i < n; i++)
        z[i] = sqrt(-2.0 * log(u[2 * i])) * cos(2.0 * M_PI * u[2 * i + 1]);
    free(u);
}

/* x = 1, 2, 4, ..., 2^(n-1). */
static void powers_of_two(double *x, int n) {
    for (int i = 0; i < n; i++) x[i] = ldexp(1.0, i);
}

/* Noise-free data give back the parameters exactly. */
static void test_fit_power_exact(void) {
    double x[11], y[11];
    powers_of_two(x, 11);
    for (int i = 0; i < 11; i++) y[i] = 3.0 * pow(x[i], -0.5);
    fit_result r;
    ml_error e;
    CHECK(fit_power(x, y, 11, &r, &e) == 0, "fit_power: %s", e.msg);
    CHECK(fabs(r.b + 0.5) < 1e-12 && fabs(r.a - 3.0) < 1e-12, "a %.15g b %.15g", r.a, r.b);
    CHECK(r.n == 11 && r.model == FIT_POWER && r.c == 0, "n %d model %d c %g", r.n, r.model, r.c);
    CHECK(r.rss < 1e-25 && fabs(r.r2 - 1.0) < 1e-12, "rss %g r2 %.15g", r.rss, r.r2);
    CHECK(r.b_err < 1e-10, "b_err %g on exact data", r.b_err);
    /* two points: the line through them, no error estimate */
    double x2[2] = {2, 8}, y2[2] = {5, 20};
    CHECK(fit_power(x2, y2, 2, &r, &e) == 0, "two points: %s", e.msg);
    CHECK(fabs(r.b - 1.0) < 1e-12 && fabs(r.a - 2.5) < 1e-12 && isnan(r.b_err),
          "two points: a %g b %g b_err %g", r.a, r.b, r.b_err);
}

/* The estimates and standard errors equal those of the textbook matrix form:
 * beta = (X^T X)^-1 X^T v, cov = s^2 (X^T X)^-1, X = [1, log x], v = log y,
 * s^2 = RSS / (n - 2); se(a) = a se(log a). */
static void test_fit_power_matches_normal_equations(void) {
    enum { N = 9 };
    double x[N], y[N], z[N];
    normals(z, N, 11);
    for (int i = 0; i < N; i++) {
        x[i] = 3.0 + 7.5 * i * i; /* unevenly spaced, not powers of 2 */
        y[i] = 0.8 * pow(x[i], 0.42) * exp(0.2 * z[i]);
    }
    double s0 = N, s1 = 0, s2 = 0, t0 = 0, t1 = 0;
    for (int i = 0; i < N; i++) {
        double u = log(x[i]), v = log(y[i]);
        s1 += u, s2 += u * u, t0 += v, t1 += u * v;
    }
    double det = s0 * s2 - s1 * s1;
    double i00 = s2 / det, i01 = -s1 / det, i11 = s0 / det; /* (X^T X)^-1 */
    double la = i00 * t0 + i01 * t1, b = i01 * t0 + i11 * t1, rss = 0;
    for (int i = 0; i < N; i++) {
        double res = log(y[i]) - la - b * log(x[i]);
        rss += res * res;
    }
    double s = rss / (N - 2);
    fit_result r;
    ml_error e;
    CHECK(fit_power(x, y, N, &r, &e) == 0, "fit_power: %s", e.msg);
    CHECK(fabs(r.b - b) < 1e-12 * fabs(b), "b %.15g vs %.15g", r.b, b);
    CHECK(fabs(r.a - exp(la)) < 1e-12 * exp(la), "a %.15g vs %.15g", r.a, exp(la));
    CHECK(fabs(r.b_err - sqrt(s * i11)) < 1e-10 * sqrt(s * i11), "b_err %.15g vs %.15g",
          r.b_err, sqrt(s * i11));
    CHECK(fabs(r.a_err - exp(la) * sqrt(s * i00)) < 1e-10 * r.a_err, "a_err %.15g vs %.15g",
          r.a_err, exp(la) * sqrt(s * i00));
    CHECK(fabs(r.rss - rss) < 1e-10 * rss, "rss %.15g vs %.15g", r.rss, rss);
    test_note("b %.4f +- %.4f, a %.4f +- %.4f, r2 %.4f", r.b, r.b_err, r.a, r.a_err, r.r2);
}

/* Over many noisy data sets from y = a x^b e^(sigma z): the fitted b is
 * unbiased, its reported standard error matches its spread, and b +- 2 se
 * covers the truth about 95% of the time (t with 10 degrees of freedom:
 * 92.7%). Tolerances are several Monte-Carlo standard deviations wide. */
static void test_fit_power_recovers_exponents(void) {
    enum { N = 12, TRIALS = 400 };
    const double exps[3] = {-0.35, 0.076, 1.0}, sigma = 0.1;
    for (int k = 0; k < 3; k++) {
        double x[N], y[N], z[N], sum = 0, sum2 = 0, se = 0;
        int covered = 0;
        powers_of_two(x, N);
        for (int t = 0; t < TRIALS; t++) {
            normals(z, N, 1000ull * (k + 1) + t);
            for (int i = 0; i < N; i++) y[i] = 2.0 * pow(x[i], exps[k]) * exp(sigma * z[i]);
            fit_result r;
            ml_error e;
            if (fit_power(x, y, N, &r, &e)) {
                CHECK(0, "fit_power: %s", e.msg);
                return;
            }
            sum += r.b, sum2 += r.b * r.b, se += r.b_err;
            covered += fabs(r.b - exps[k]) < 2.0 * r.b_err;
        }
        double mean = sum / TRIALS, sd = sqrt(sum2 / TRIALS - mean * mean);
        se /= TRIALS;
        /* the true spread: sigma / sqrt(S_uu) with u = i ln 2 */
        double suu = 0, mu = (N - 1) / 2.0 * log(2.0);
        for (int i = 0; i < N; i++) suu += (i * log(2.0) - mu) * (i * log(2.0) - mu);
        double sd_true = sigma / sqrt(suu);
        CHECK(fabs(mean - exps[k]) < 4.0 * sd_true / sqrt((double)TRIALS),
              "b %g: mean fitted %g (sd %g)", exps[k], mean, sd);
        CHECK(fabs(sd / sd_true - 1.0) < 0.15, "b %g: spread %g, theory %g", exps[k], sd, sd_true);
        CHECK(fabs(se / sd_true - 1.0) < 0.1, "b %g: mean se %g, theory %g", exps[k], se, sd_true);
        CHECK(covered > 0.88 * TRIALS && covered < 0.97 * TRIALS, "b %g: 2 se covered %d of %d",
              exps[k], covered, TRIALS);
        test_note("b %g: mean %.5f sd %.5f (theory %.5f) mean se %.5f covered %d/%d", exps[k],
                  mean, sd, sd_true, se, covered, TRIALS);
    }
}

/* y = a x^b + c: exact recovery, and calibrated errors under additive noise. */
static void test_fit_power_offset(void) {
    enum { N = 11, TRIALS = 300 };
    double x[N], y[N], z[N];
    powers_of_two(x, N);
    for (int i = 0; i < N; i++) y[i] = 2.0 * pow(x[i], -0.7) + 0.3;
    fit_result r;
    ml_error e;
    CHECK(fit_power_offset(x, y, N, &r, &e) == 0, "fit_power_offset: %s", e.msg);
    CHECK(fabs(r.b + 0.7) < 1e-8 && fabs(r.a - 2.0) < 1e-7 && fabs(r.c - 0.3) < 1e-8,
          "a %.12g b %.12g c %.12g", r.a, r.b, r.c);
    CHECK(r.model == FIT_POWER_OFFSET && r.n == N && fabs(r.r2 - 1) < 1e-12, "model %d n %d r2 %g",
          r.model, r.n, r.r2);
    /* a growing law with a negative offset */
    for (int i = 0; i < N; i++) y[i] = 0.5 * pow(x[i], 0.6) - 1.0;
    CHECK(fit_power_offset(x, y, N, &r, &e) == 0, "growing: %s", e.msg);
    CHECK(fabs(r.b - 0.6) < 1e-8 && fabs(r.a - 0.5) < 1e-7 && fabs(r.c + 1.0) < 1e-7,
          "growing: a %.12g b %.12g c %.12g", r.a, r.b, r.c);
    /* noise: spread of b against its reported error */
    double sum = 0, sum2 = 0, se = 0;
    int covered = 0, failed = 0;
    for (int t = 0; t < TRIALS; t++) {
        normals(z, N, 5000ull + t);
        for (int i = 0; i < N; i++) y[i] = 2.0 * pow(x[i], -0.7) + 0.3 + 0.003 * z[i];
        if (fit_power_offset(x, y, N, &r, &e)) {
            failed++;
            continue;
        }
        sum += r.b, sum2 += r.b * r.b, se += r.b_err;
        covered += fabs(r.b + 0.7) < 2.0 * r.b_err;
    }
    int ok = TRIALS - failed;
    CHECK(failed == 0, "%d of %d noisy fits failed", failed, TRIALS);
    if (ok < 10) return;
    double mean = sum / ok, sd = sqrt(sum2 / ok - mean * mean);
    se /= ok;
    CHECK(fabs(mean + 0.7) < 4.0 * sd / sqrt((double)ok), "mean b %g (sd %g)", mean, sd);
    CHECK(fabs(se / sd - 1.0) < 0.2, "mean se %g against spread %g", se, sd);
    CHECK(covered > 0.85 * ok && covered < 0.99 * ok, "2 se covered %d of %d", covered, ok);
    test_note("offset: mean b %.5f sd %.5f mean se %.5f covered %d/%d", mean, sd, se, covered, ok);
}

/* Input a fit cannot use is refused, naming the problem. */
static void test_fit_refuses(void) {
    double x[4] = {1, 2, 4, 8}, y[4] = {1, 2, 3, 4};
    fit_result r;
    ml_error e;
    CHECK(fit_power(x, y, 1, &r, &e) == -1 && strstr(e.msg, "at least 2"), "n 1: %s", e.msg);
    double x0[3] = {1, 0, 4}, ym[3] = {1, 0, -0.5}, xs[3] = {2, 2, 2}; /* ym = 2/x - 1 */
    CHECK(fit_power(x0, y, 3, &r, &e) == -1 && strstr(e.msg, "x[1]"), "x 0: %s", e.msg);
    CHECK(fit_power(x, ym, 3, &r, &e) == -1 && strstr(e.msg, "y[1]"), "y <= 0: %s", e.msg);
    CHECK(fit_power(xs, y, 3, &r, &e) == -1 && strstr(e.msg, "distinct"), "equal x: %s", e.msg);
    double yn[4] = {1, NAN, 3, 4};
    CHECK(fit_power(x, yn, 4, &r, &e) == -1 && strstr(e.msg, "y[1]"), "NaN: %s", e.msg);
    /* the offset model takes y <= 0 but needs 3 distinct x */
    CHECK(fit_power_offset(x, ym, 3, &r, &e) == 0 && fabs(r.b + 1) < 1e-8 && fabs(r.c + 1) < 1e-8,
          "offset, y <= 0: %s (b %g c %g)", e.msg, r.b, r.c);
    double x2[4] = {1, 2, 2, 1};
    CHECK(fit_power_offset(x2, y, 4, &r, &e) == -1 && strstr(e.msg, "distinct"),
          "offset, 2 distinct x: %s", e.msg);
    /* constant data: every exponent fits as well */
    double yc[4] = {5, 5, 5, 5};
    CHECK(fit_power_offset(x, yc, 4, &r, &e) == -1 && strstr(e.msg, "constant"), "constant: %s",
          e.msg);
    /* y = x^10 + 1: the exponent lies beyond the search range */
    double yb[4];
    for (int i = 0; i < 4; i++) yb[i] = pow(x[i], 10) + 1;
    CHECK(fit_power_offset(x, yb, 4, &r, &e) == -1 && strstr(e.msg, "bound +8"),
          "beyond the bound: %s", e.msg);
}

/* The command-line options: required ones, groups split on commas. */
static void test_fit_parse_args(void) {
    char a0[] = "--sweep", a1[] = "s", a2[] = "--x", a3[] = "model.slots", a4[] = "--y",
         a5[] = "test/loss", a6[] = "--group", a7[] = "model.mixer,task.seq_len", a8[] = "--offset",
         a9[] = "--no-store";
    char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9};
    fit_opts o;
    memset(&o, 0, sizeof o);
    ml_error e;
    CHECK(fit_parse_args(&o, 10, argv, &e) == 0, "parse: %s", e.msg);
    CHECK(o.n_group == 2 && !strcmp(o.group[0], "model.mixer") &&
              !strcmp(o.group[1], "task.seq_len"),
          "groups %d", o.n_group);
    CHECK(o.model == FIT_POWER_OFFSET && !o.store && !strcmp(o.x, "model.slots"),
          "model %d store %d", o.model, o.store);
    memset(&o, 0, sizeof o);
    CHECK(fit_parse_args(&o, 4, argv, &e) == -1 && strstr(e.msg, "required"), "missing --y: %s",
          e.msg);
    char bad[] = "--bogus";
    char *argv2[] = {bad};
    memset(&o, 0, sizeof o);
    CHECK(fit_parse_args(&o, 1, argv2, &e) == -1 && strstr(e.msg, "--bogus"), "unknown: %s",
          e.msg);
}

const test_case tests_fit[] = {
    {"fit: power law, exact data", test_fit_power_exact},
    {"fit: power law = normal equations", test_fit_power_matches_normal_equations},
    {"fit: power law recovers exponents, calibrated errors", test_fit_power_recovers_exponents},
    {"fit: power law with offset", test_fit_power_offset},
    {"fit: bad input refused", test_fit_refuses},
    {"fit: command-line options", test_fit_parse_args},
    {NULL, NULL},
};
