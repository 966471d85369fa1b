/* tinyclap's log-mel front end in C99: see tinyclap_logmel.h. */
#include "tinyclap_logmel.h"

#include <float.h>
#include <stddef.h>
#include <stdint.h>

#define N TINYCLAP_LOGMEL_N_FFT
#define M (TINYCLAP_LOGMEL_N_FFT / 2) /* complex points of the half-size FFT */
#define PAD (TINYCLAP_LOGMEL_N_FFT / 2)

#if N < 16 || (N & (N - 1)) != 0
#error "TINYCLAP_LOGMEL_N_FFT must be a power of two >= 16"
#endif

/* the windowed frame in, the power spectrum out (layout in rfft_power) */
static float work[N];

#ifdef TINYCLAP_USE_CMSIS_DSP
#include "arm_math.h"

static arm_rfft_fast_instance_f32 rfft;
static int rfft_ready;
static float spectrum[N];

/* arm_rfft_fast_f32 packs X[0].re, X[N/2].re, then X[k].re, X[k].im at 2k, 2k + 1 */
static void rfft_power(float *x)
{
    int k;
    if (!rfft_ready) {
        arm_rfft_fast_init_f32(&rfft, N);
        rfft_ready = 1;
    }
    arm_rfft_fast_f32(&rfft, x, spectrum, 0);
    x[0] = spectrum[0] * spectrum[0];
    x[1] = spectrum[1] * spectrum[1];
    for (k = 1; k < M; k++)
        x[2 * k] = spectrum[2 * k] * spectrum[2 * k] + spectrum[2 * k + 1] * spectrum[2 * k + 1];
}

#else /* our own FFT */

/* sin(2 pi k / N) for 0 <= k < N / 2, from the cosine table: sin(a) = cos(pi / 2 - a) */
static float sin_at(int k)
{
    int d = N / 4 - k;
    return tinyclap_logmel_cos[d < 0 ? -d : d];
}

/* x: M complex values (re, im interleaved) -> their DFT, in place (radix-2, decimation in time) */
static void complex_fft(float *x)
{
    int i, j = 0, bit, len, half, step, a, b;
    for (i = 1; i < M; i++) { /* bit-reversed order */
        for (bit = M >> 1; j & bit; bit >>= 1)
            j ^= bit;
        j ^= bit;
        if (i < j) {
            float re = x[2 * i], im = x[2 * i + 1];
            x[2 * i] = x[2 * j];
            x[2 * i + 1] = x[2 * j + 1];
            x[2 * j] = re;
            x[2 * j + 1] = im;
        }
    }
    for (len = 2; len <= M; len <<= 1) {
        half = len >> 1;
        step = N / len; /* W_len^j = W_N^(j * step) */
        for (i = 0; i < M; i += len) {
            for (j = 0; j < half; j++) {
                float c = tinyclap_logmel_cos[j * step], s = sin_at(j * step);
                a = 2 * (i + j);
                b = a + 2 * half;
                {
                    float br = x[b] * c + x[b + 1] * s, bi = x[b + 1] * c - x[b] * s;
                    x[b] = x[a] - br;
                    x[b + 1] = x[a + 1] - bi;
                    x[a] += br;
                    x[a + 1] += bi;
                }
            }
        }
    }
}

/* x: N real samples -> power spectrum in place: x[0] = |X[0]|^2, x[1] = |X[N/2]|^2, x[2k] = |X[k]|^2.
 * The N reals are read as M complex values z[n] = x[2n] + i x[2n+1]; with Z = DFT(z),
 * X[k] = E[k] + W_N^k O[k] and X[M-k] = conj(E[k] - W_N^k O[k]), where E[k] = (Z[k] + conj Z[M-k]) / 2
 * and O[k] = (Z[k] - conj Z[M-k]) / 2i are the DFTs of the even and the odd samples. */
static void rfft_power(float *x)
{
    int k;
    float r0, i0;
    complex_fft(x);
    r0 = x[0];
    i0 = x[1];
    x[0] = (r0 + i0) * (r0 + i0);
    x[1] = (r0 - i0) * (r0 - i0);
    for (k = 1; k <= M / 2; k++) {
        float ar = x[2 * k], ai = x[2 * k + 1], br = x[2 * (M - k)], bi = x[2 * (M - k) + 1];
        float er = 0.5f * (ar + br), ei = 0.5f * (ai - bi);
        float or_ = 0.5f * (ai + bi), oi = 0.5f * (br - ar);
        float c = tinyclap_logmel_cos[k], s = sin_at(k);
        float tr = or_ * c + oi * s, ti = oi * c - or_ * s;
        x[2 * k] = (er + tr) * (er + tr) + (ei + ti) * (ei + ti);
        x[2 * (M - k)] = (er - tr) * (er - tr) + (ei - ti) * (ei - ti);
    }
}

#endif /* TINYCLAP_USE_CMSIS_DSP */

/* 10 log10(max(x, amin)) - db_offset with a series of our own (no libm: the host and the device builds
 * then print the same bits): x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m-1)/(m+1),
 * |s| <= 0.172, so five terms leave a relative error below 1e-9. */
static float to_db(float x)
{
    union {
        float f;
        uint32_t u;
    } v;
    int e;
    float m, s, s2, ln;
    if (!(x <= FLT_MAX))
        return x; /* NaN and +inf pass through, as log10 does */
    if (x < TINYCLAP_LOGMEL_AMIN)
        x = TINYCLAP_LOGMEL_AMIN;
    v.f = x;
    e = (int)(v.u >> 23) - 127;
    v.u = (v.u & 0x007fffffu) | 0x3f800000u; /* m in [1, 2) */
    m = v.f;
    if (m > 1.41421356f) {
        m *= 0.5f;
        e += 1;
    }
    s = (m - 1.0f) / (m + 1.0f);
    s2 = s * s;
    ln = 2.0f * s * (1.0f + s2 * (1.0f / 3.0f + s2 * (1.0f / 5.0f + s2 * (1.0f / 7.0f + s2 * (1.0f / 9.0f)))));
    return 4.34294482f * (ln + (float)e * 0.693147181f) - TINYCLAP_LOGMEL_DB_OFFSET;
}

/* work holds a windowed frame -> out: n_mels values in dB */
static void frame_to_mel(float *out)
{
    const float *w = tinyclap_logmel_weights;
    int band, j;
    rfft_power(work);
    for (band = 0; band < TINYCLAP_LOGMEL_N_MELS; band++) {
        int k = tinyclap_logmel_band_start[band], size = tinyclap_logmel_band_size[band];
        float acc = 0.0f;
        for (j = 0; j < size; j++, k++)
            acc += w[j] * (k == M ? work[1] : work[2 * k]);
        w += size;
        out[band] = to_db(acc);
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
        work[j] = tinyclap_logmel_window[j] * frame[j];
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
            work[j] = tinyclap_logmel_window[j] * wave[i];
        }
        frame_to_mel(out + (long)t * TINYCLAP_LOGMEL_N_MELS);
    }
    return frames;
}
