/* tinyclap's log-mel front end in C99: see tinyclap_logmel.h. */
#include "tinyclap_logmel.h"

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#ifdef TINYCLAP_USE_CMSIS_DSP
#include "arm_math.h" /* before the short macro names below, which its headers use as field names */
#endif

#define N TINYCLAP_LOGMEL_N_FFT
#define M (TINYCLAP_LOGMEL_N_FFT / 2) /* complex points of the half-size FFT */
#define PAD (TINYCLAP_LOGMEL_N_FFT / 2)

#if N < 16 || (N & (N - 1)) != 0
#error "TINYCLAP_LOGMEL_N_FFT must be a power of two >= 16"
#endif

#define Q30 1073741824.0f /* the window and the twiddles are integers in units of 2^-30 */
/* FFT values stay below these before a radix-2 / radix-4 pass: (1 + sqrt 2) LIMIT2 and (1 + 3 sqrt 2) LIMIT4
 * stay below 2^31 */
#define LIMIT2 0x34000000u
#define LIMIT4 0x18000000u

/* the frame's samples in (float), the power spectrum out (float, layout in rfft_power); in between, the
 * own FFT's integers (q) */
static union {
    float f[N];
    int32_t q[N];
} work;

/* returns 0 when the frame holds NaN or infinity */
static int rfft_power(int *exp2);

#ifdef TINYCLAP_USE_CMSIS_DSP
static arm_rfft_fast_instance_f32 rfft;
static int rfft_ready;
static float spectrum[N];

/* float32 throughout; arm_rfft_fast_f32 packs X[0].re, X[N/2].re, then X[k].re, X[k].im at 2k, 2k + 1 */
static int rfft_power(int *exp2)
{
    int k;
    if (!rfft_ready) {
        arm_rfft_fast_init_f32(&rfft, N);
        rfft_ready = 1;
    }
    for (k = 0; k < N; k++)
        work.f[k] *= (float)tinyclap_logmel_window[k] * (1.0f / Q30);
    arm_rfft_fast_f32(&rfft, work.f, spectrum, 0);
    work.f[0] = spectrum[0] * spectrum[0];
    work.f[1] = spectrum[1] * spectrum[1];
    for (k = 1; k < M; k++)
        work.f[2 * k] = spectrum[2 * k] * spectrum[2 * k] + spectrum[2 * k + 1] * spectrum[2 * k + 1];
    *exp2 = 0;
    return 1;
}

#else /* our own FFT, in 32-bit block floating point */

/* Why integers: a float32 FFT adds rounding noise of about 1e-7 of the frame's whole energy to every bin,
 * which is a few percent of the weakest mel bands of a loud frame (0.05 dB). Here the samples share one
 * exponent, additions are exact and products are rounded to 2^-30 of the frame's peak. */

/* v / 2^30, rounded (arithmetic shifts, as gcc and clang do) */
static int32_t round30(int64_t v)
{
    return (int32_t)((v + ((int64_t)1 << 29)) >> 30);
}

/* cos and sin(2 pi k / N), 0 <= k < N / 2, in units of 2^-30: sin(a) = cos(pi / 2 - a) */
#define COS(k) (tinyclap_logmel_cos[k])
#define SIN(k) (tinyclap_logmel_cos[(k) <= N / 4 ? N / 4 - (k) : (k) - N / 4])

/* |v| or |v| - 1: enough to bound the largest |v| (the limits leave room for the one) */
#define ABS_BOUND(v) ((uint32_t)((v) ^ ((v) >> 31)))
#define RAISE(bound, v) ((bound) = ABS_BOUND(v) > (bound) ? ABS_BOUND(v) : (bound))

/* halvings that bring values bounded by `bound` below limit */
static int halvings_for(uint32_t bound, uint32_t limit)
{
    int bits = 0;
    while ((bound >> bits) >= limit)
        bits++;
    return bits;
}

static void bit_reverse(int32_t *x) /* M complex values */
{
    int i, j = 0, bit;
    for (i = 1; i < M; i++) {
        for (bit = M >> 1; j & bit; bit >>= 1)
            j ^= bit;
        j ^= bit;
        if (i < j) {
            int32_t re = x[2 * i], im = x[2 * i + 1];
            x[2 * i] = x[2 * j];
            x[2 * i + 1] = x[2 * j + 1];
            x[2 * j] = re;
            x[2 * j + 1] = im;
        }
    }
}

/* the first two radix-2 passes at once (twiddles 1 and -i: no products, no rounding) on values below 2^29 */
static uint32_t first_passes(int32_t *x)
{
    int i;
    uint32_t peak = 0;
    for (i = 0; i < 2 * M; i += 8) {
        int32_t sr = x[i] + x[i + 2], si = x[i + 1] + x[i + 3], dr = x[i] - x[i + 2], di = x[i + 1] - x[i + 3];
        int32_t tr = x[i + 4] + x[i + 6], ti = x[i + 5] + x[i + 7], ur = x[i + 4] - x[i + 6], ui = x[i + 5] - x[i + 7];
        x[i] = sr + tr; /* sums of 4 values below 2^29: below 2^31 */
        x[i + 1] = si + ti;
        x[i + 4] = sr - tr;
        x[i + 5] = si - ti;
        x[i + 2] = dr + ui; /* d - i u */
        x[i + 3] = di - ur;
        x[i + 6] = dr - ui;
        x[i + 7] = di + ur;
        RAISE(peak, x[i]);
        RAISE(peak, x[i + 1]);
        RAISE(peak, x[i + 2]);
        RAISE(peak, x[i + 3]);
        RAISE(peak, x[i + 4]);
        RAISE(peak, x[i + 5]);
        RAISE(peak, x[i + 6]);
        RAISE(peak, x[i + 7]);
    }
    return peak;
}

/* W_N^k = c - i s for 0 <= k < 3N/4 */
static void twiddle(int k, int32_t *c, int32_t *s)
{
    int32_t sign = 1;
    if (k >= N / 2) { /* W_N^(k + N/2) = -W_N^k */
        k -= N / 2;
        sign = -1;
    }
    *c = sign * COS(k);
    *s = sign * SIN(k);
}

/* b W_N^k for b = (re, im), rounded, then halved `bits` times (r = 2^(bits-1) or 0) */
#define TWIDDLE_RE(re, im, c, s) ((round30((int64_t)(re) * (c) + (int64_t)(im) * (s)) + r) >> bits)
#define TWIDDLE_IM(re, im, c, s) ((round30((int64_t)(im) * (c) - (int64_t)(re) * (s)) + r) >> bits)

/* one radix-2 pass (butterflies of 2 len values) on values below LIMIT2 once halved `bits` times; returns
 * the new bound */
static uint32_t radix2_pass(int32_t *x, int len, int bits)
{
    int i, j, step = M / len; /* W_(2 len)^j = W_N^(j * step) */
    int32_t r = bits ? (int32_t)1 << (bits - 1) : 0;
    uint32_t peak = 0;
    for (j = 0; j < len; j++) {
        int32_t c, s;
        twiddle(j * step, &c, &s);
        for (i = 2 * j; i < 2 * M; i += 4 * len) {
            int32_t *b = x + i + 2 * len;
            int32_t br = TWIDDLE_RE(b[0], b[1], c, s), bi = TWIDDLE_IM(b[0], b[1], c, s);
            int32_t ar = (x[i] + r) >> bits, ai = (x[i + 1] + r) >> bits;
            int32_t o0 = ar + br, o1 = ai + bi, o2 = ar - br, o3 = ai - bi;
            x[i] = o0;
            x[i + 1] = o1;
            b[0] = o2;
            b[1] = o3;
            RAISE(peak, o0);
            RAISE(peak, o1);
            RAISE(peak, o2);
            RAISE(peak, o3);
        }
    }
    return peak;
}

/* two radix-2 passes at once (len and 2 len) as one radix-4 pass: for the values x0..x3 at j, j + len,
 * j + 2 len, j + 3 len and W = W_(4 len)^j, with b1 = W^2 x1, b2 = W x2, b3 = W^3 x3:
 * y0 = x0 + b1 + (b2 + b3), y2 = x0 + b1 - (b2 + b3), y1 = x0 - b1 - i (b2 - b3), y3 = x0 - b1 + i (b2 - b3).
 * Values below LIMIT4 once halved `bits` times; returns the new bound. */
static uint32_t radix4_pass(int32_t *x, int len, int bits)
{
    int i, j, step = M / (2 * len); /* W_(4 len)^j = W_N^(j * step) */
    int32_t r = bits ? (int32_t)1 << (bits - 1) : 0;
    uint32_t peak = 0;
    for (j = 0; j < len; j++) {
        int32_t c1, s1, c2, s2, c3, s3;
        twiddle(2 * j * step, &c1, &s1);
        twiddle(j * step, &c2, &s2);
        twiddle(3 * j * step, &c3, &s3);
        for (i = 2 * j; i < 2 * M; i += 8 * len) {
            int32_t *x1 = x + i + 2 * len, *x2 = x1 + 2 * len, *x3 = x2 + 2 * len;
            int32_t b1r = TWIDDLE_RE(x1[0], x1[1], c1, s1), b1i = TWIDDLE_IM(x1[0], x1[1], c1, s1);
            int32_t b2r = TWIDDLE_RE(x2[0], x2[1], c2, s2), b2i = TWIDDLE_IM(x2[0], x2[1], c2, s2);
            int32_t b3r = TWIDDLE_RE(x3[0], x3[1], c3, s3), b3i = TWIDDLE_IM(x3[0], x3[1], c3, s3);
            int32_t ar = (x[i] + r) >> bits, ai = (x[i + 1] + r) >> bits;
            int32_t pr = ar + b1r, pi = ai + b1i, er = ar - b1r, ei = ai - b1i;
            int32_t qr = b2r + b3r, qi = b2i + b3i, dr = b2r - b3r, di = b2i - b3i;
            int32_t y0r = pr + qr, y0i = pi + qi, y2r = pr - qr, y2i = pi - qi;
            int32_t y1r = er + di, y1i = ei - dr, y3r = er - di, y3i = ei + dr; /* e -/+ i d */
            x[i] = y0r;
            x[i + 1] = y0i;
            x1[0] = y1r;
            x1[1] = y1i;
            x2[0] = y2r;
            x2[1] = y2i;
            x3[0] = y3r;
            x3[1] = y3i;
            RAISE(peak, y0r);
            RAISE(peak, y0i);
            RAISE(peak, y1r);
            RAISE(peak, y1i);
            RAISE(peak, y2r);
            RAISE(peak, y2i);
            RAISE(peak, y3r);
            RAISE(peak, y3i);
        }
    }
    return peak;
}

/* x: M complex values (re, im interleaved), all below 2^29 -> their DFT, in place (decimation in time:
 * radix-4 passes, radix-2 for an odd last one), times 2^-halvings (returned); *bound then bounds the output.
 * Before a pass whose inputs could overflow it, they are halved (rounded). */
static int complex_fft(int32_t *x, uint32_t *bound)
{
    int len = 4, bits, halvings = 0;
    bit_reverse(x);
    *bound = first_passes(x);
    while (len < M) {
        if (4 * len <= M) {
            bits = halvings_for(*bound, LIMIT4);
            *bound = radix4_pass(x, len, bits);
            len <<= 2;
        } else {
            bits = halvings_for(*bound, LIMIT2);
            *bound = radix2_pass(x, len, bits);
            len <<= 1;
        }
        halvings += bits;
    }
    return halvings;
}

/* the frame's largest |sample| (0 if it holds NaN or infinity, with *finite = 0) */
static float frame_peak(int *finite)
{
    int i;
    float peak = 0.0f;
    *finite = 1;
    for (i = 0; i < N; i++) {
        float a = work.f[i] < 0.0f ? -work.f[i] : work.f[i];
        if (!(a <= FLT_MAX))
            *finite = 0;
        else if (a > peak)
            peak = a;
    }
    return peak;
}

/* work.f: N samples -> power spectrum in place: f[0] = |X[0]|^2, f[1] = |X[N/2]|^2, f[2k] = |X[k]|^2, each
 * times 2^-exp2. The N reals are read as M complex values z[n] = x[2n] + i x[2n+1]; with Z = DFT(z),
 * 2 X[k] = E[k] + W_N^k O[k] and 2 X[M-k] = conj(E[k] - W_N^k O[k]), where E[k] = Z[k] + conj Z[M-k] and
 * O[k] = (Z[k] - conj Z[M-k]) / i are twice the DFTs of the even and the odd samples. */
static int rfft_power(int *exp2)
{
    union {
        float f;
        uint32_t u;
    } v;
    int k, finite, shift, bits;
    int32_t r;
    uint32_t bound = 0;
    float peak = frame_peak(&finite), scale;
    if (!finite)
        return 0;
    v.f = peak; /* 2^shift brings the peak to [2^28, 2^29) (less for a near-silent frame) */
    shift = 28 - ((int)(v.u >> 23) - 127);
    shift = shift > 126 ? 126 : shift;
    v.u = (uint32_t)(shift + 127) << 23;
    scale = v.f;
    for (k = 0; k < N; k++) /* |window| <= 1: below 2^29 */
        work.q[k] = round30((int64_t)(int32_t)(work.f[k] * scale) * tinyclap_logmel_window[k]);
    shift -= complex_fft(work.q, &bound);
    bits = halvings_for(bound, LIMIT2 / 2); /* every value <= LIMIT2 / 2: no sum below leaves int32 */
    r = bits ? (int32_t)1 << (bits - 1) : 0;
    shift -= bits;
    {
        int32_t r0 = (work.q[0] + r) >> bits, i0 = (work.q[1] + r) >> bits;
        work.f[0] = (float)(2 * (r0 + i0)) * (float)(2 * (r0 + i0));
        work.f[1] = (float)(2 * (r0 - i0)) * (float)(2 * (r0 - i0));
    }
    for (k = 1; k <= M / 2; k++) {
        int32_t ar = (work.q[2 * k] + r) >> bits, ai = (work.q[2 * k + 1] + r) >> bits;
        int32_t br = (work.q[2 * (M - k)] + r) >> bits, bi = (work.q[2 * (M - k) + 1] + r) >> bits;
        int32_t er = ar + br, ei = ai - bi, or_ = ai + bi, oi = br - ar, c = COS(k), s = SIN(k);
        int32_t tr = round30((int64_t)or_ * c + (int64_t)oi * s);
        int32_t ti = round30((int64_t)oi * c - (int64_t)or_ * s);
        float pr = (float)(er + tr), pi = (float)(ei + ti), mr = (float)(er - tr), mi = (float)(ei - ti);
        work.f[2 * k] = pr * pr + pi * pi;
        work.f[2 * (M - k)] = mr * mr + mi * mi;
    }
    *exp2 = 2 * shift + 2; /* X = 2^-shift X_int / 2 */
    return 1;
}

#endif /* TINYCLAP_USE_CMSIS_DSP */

/* 10 log10(max(x 2^-exp2, amin)) - db_offset, with a series of our own (no libm: the host and the device
 * builds print the same bits): x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s),
 * s = (m-1)/(m+1), |s| <= 0.172, so five terms leave a relative error below 1e-9. */
static float to_db(float x, int exp2)
{
    union {
        float f;
        uint32_t u;
    } v;
    int e;
    float m, s, s2, ln, db;
    if (!(x <= FLT_MAX))
        return x; /* NaN and +inf pass through, as log10 does */
    if (x < FLT_MIN) { /* subnormal: scale up exactly */
        x *= 16777216.0f;
        exp2 += 24;
    }
    if (x <= 0.0f)
        return TINYCLAP_LOGMEL_FLOOR_DB - TINYCLAP_LOGMEL_DB_OFFSET;
    v.f = x;
    e = (int)(v.u >> 23) - 127 - exp2;
    v.u = (v.u & 0x007fffffu) | 0x3f800000u; /* m in [1, 2) */
    m = v.f;
    if (m > 1.41421356f) {
        m *= 0.5f;
        e += 1;
    }
    s = (m - 1.0f) / (m + 1.0f);
    s2 = s * s;
    ln = 2.0f * s * (1.0f + s2 * (1.0f / 3.0f + s2 * (1.0f / 5.0f + s2 * (1.0f / 7.0f + s2 * (1.0f / 9.0f)))));
    db = 4.34294482f * (ln + (float)e * 0.693147181f);
    return (db > TINYCLAP_LOGMEL_FLOOR_DB ? db : TINYCLAP_LOGMEL_FLOOR_DB) - TINYCLAP_LOGMEL_DB_OFFSET;
}

/* work.f holds a frame's samples -> out: n_mels values in dB */
static void frame_to_mel(float *out)
{
    const float *w = tinyclap_logmel_weights;
    int band, j, exp2;
    if (!rfft_power(&exp2)) { /* NaN or infinity in the frame: NaN out */
        union {
            uint32_t u;
            float f;
        } nan = {0x7fc00000u};
        for (band = 0; band < TINYCLAP_LOGMEL_N_MELS; band++)
            out[band] = nan.f;
        return;
    }
    for (band = 0; band < TINYCLAP_LOGMEL_N_MELS; band++) {
        int k = tinyclap_logmel_band_start[band], size = tinyclap_logmel_band_size[band];
        float acc = 0.0f;
        for (j = 0; j < size; j++, k++)
            acc += w[j] * (k == M ? work.f[1] : work.f[2 * k]);
        w += size;
        out[band] = to_db(acc, exp2);
    }
}

int tinyclap_logmel_n_frames(int n)
{
    return n > PAD ? n / TINYCLAP_LOGMEL_HOP + 1 : 0;
}

void tinyclap_logmel_frame(const float *frame, float *out)
{
    int j;
    for (j = 0; j < N; j++)
        work.f[j] = frame[j];
    frame_to_mel(out);
}

int tinyclap_logmel_compute(const float *wave, int n, float *out, int max_frames)
{
    int t, j, frames = tinyclap_logmel_n_frames(n);
    if (wave == NULL || out == NULL || frames == 0)
        return TINYCLAP_LOGMEL_ERR_ARGS;
    if (frames > max_frames)
        return TINYCLAP_LOGMEL_ERR_SPACE;
    for (t = 0; t < frames; t++) {
        long start = (long)t * TINYCLAP_LOGMEL_HOP - PAD;
        if (start >= 0 && start + N <= n) {
            tinyclap_logmel_frame(wave + start, out + (long)t * TINYCLAP_LOGMEL_N_MELS);
            continue;
        }
        for (j = 0; j < N; j++) { /* reflect padding (n > PAD: one reflection reaches every index) */
            long i = start + j;
            if (i < 0)
                i = -i;
            else if (i >= n)
                i = 2 * ((long)n - 1) - i;
            work.f[j] = wave[i];
        }
        frame_to_mel(out + (long)t * TINYCLAP_LOGMEL_N_MELS);
    }
    return frames;
}
