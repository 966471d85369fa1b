/* tinyclap's log-mel front end in C99 for microcontrollers: static buffers, no malloc, float32.
 *
 * Computes what tinyclap.audio.frontend.LogMel computes (MS CLAP 2022's front end):
 *   centred frames (reflect padding of n_fft / 2 on both sides), periodic Hann window,
 *   power spectrum |rfft|^2, Slaney mel filterbank, 10 * log10(max(mel, amin)) - db_offset.
 * The settings and tables (window, twiddles, mel bands) come from tinyclap_logmel_tables.h/.c, written by
 * `tinyclap.deploy.mcu.frontend.write_frontend_sources` (or `tinyclap export --target tflm`).
 *
 * The FFT is our own: a complex FFT of n_fft / 2 points (radix 4; radix 2 for the first two passes and an
 * odd last one) plus the real split, in 32-bit block floating point (integers sharing one exponent per
 * frame; 64-bit products), which keeps the weakest bands of a loud frame within 0.03 dB of LogMel where a
 * float32 FFT's rounding noise reaches 0.05 dB. Build with -DTINYCLAP_USE_CMSIS_DSP to use CMSIS-DSP's
 * float32 arm_rfft_fast_f32 instead (2.2x fewer instructions on a Cortex-M4F, less exact). No libm: the log
 * is a series of our own, so a host build and a device build compiled with -ffp-contract=off give
 * bit-identical features.
 * Not reentrant: one static work buffer (TINYCLAP_LOGMEL_N_FFT 32-bit words) is shared by the calls.
 */
#ifndef TINYCLAP_LOGMEL_H
#define TINYCLAP_LOGMEL_H

#include "tinyclap_logmel_tables.h"

#ifdef __cplusplus
extern "C" {
#endif

/* negative results of tinyclap_logmel_compute */
#define TINYCLAP_LOGMEL_ERR_ARGS (-1)  /* NULL pointer, or too few samples for the reflect padding */
#define TINYCLAP_LOGMEL_ERR_SPACE (-2) /* max_frames is smaller than tinyclap_logmel_n_frames(n) */

/* Frames of a centred STFT of n samples: n / hop + 1 (0 when n <= n_fft / 2, too short to pad). */
int tinyclap_logmel_n_frames(int n);

/* One frame: n_fft consecutive samples (already padded; e.g. the last n_fft samples of a stream,
 * called every hop samples) -> n_mels log-mel values in dB. */
void tinyclap_logmel_frame(const float *frame, float *out);

/* A whole waveform of n samples -> tinyclap_logmel_n_frames(n) frames of n_mels values, row-major
 * (frame by frame), exactly as LogMel(wave). Returns the number of frames written, or a negative
 * TINYCLAP_LOGMEL_ERR_* code (nothing written). */
int tinyclap_logmel_compute(const float *wave, int n, float *out, int max_frames);

#ifdef __cplusplus
}
#endif

#endif /* TINYCLAP_LOGMEL_H */
