/* Driver for tinyclap_logmel on the host and under qemu (bench/mcu_frontend.py, tests/test_mcu_frontend.py).
 *
 * Built with -DTINYCLAP_CLIP_HEADER (a generated clip.h defining `const float clip[CLIP_SAMPLES]`): prints
 * the features of that clip as the hexadecimal bits of each float (exact, no float printf), one frame a
 * line, then the instructions the front end took when built for qemu (TINYCLAP_QEMU, see startup.c).
 * Without it (host only): reads float32 samples from stdin, writes the float32 features to stdout.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tinyclap_logmel.h"

#ifdef TINYCLAP_CLIP_HEADER
#include "clip.h"
#define MAX_SAMPLES CLIP_SAMPLES
#else
#define MAX_SAMPLES (44100 * 60)
static float wave[MAX_SAMPLES];
#endif

#define MAX_FRAMES (MAX_SAMPLES / TINYCLAP_LOGMEL_HOP + 1)
static float features[MAX_FRAMES * TINYCLAP_LOGMEL_N_MELS];

#ifdef TINYCLAP_QEMU
unsigned long long qemu_ticks(void); /* startup.c */
#endif

#ifdef TINYCLAP_CLIP_HEADER
int main(void)
{
    int frames, t, m;
#ifdef TINYCLAP_QEMU
    unsigned long long ticks = qemu_ticks();
#endif
    frames = tinyclap_logmel_compute(clip, CLIP_SAMPLES, features, MAX_FRAMES);
#ifdef TINYCLAP_QEMU
    ticks = qemu_ticks() - ticks;
#endif
    printf("frames %d\n", frames);
    for (t = 0; t < frames; t++) {
        for (m = 0; m < TINYCLAP_LOGMEL_N_MELS; m++) {
            uint32_t bits;
            memcpy(&bits, &features[t * TINYCLAP_LOGMEL_N_MELS + m], sizeof bits);
            printf(m ? " %08lx" : "%08lx", (unsigned long)bits);
        }
        printf("\n");
    }
#ifdef TINYCLAP_QEMU
    printf("ticks %llu\n", ticks);
#endif
    return frames < 0;
}
#else
int main(void)
{
    size_t n = fread(wave, sizeof(float), MAX_SAMPLES, stdin);
    int frames = tinyclap_logmel_compute(wave, (int)n, features, MAX_FRAMES);
    if (frames < 0) {
        fprintf(stderr, "tinyclap_logmel_compute: error %d for %lu samples\n", frames, (unsigned long)n);
        return 1;
    }
    fwrite(features, sizeof(float), (size_t)frames * TINYCLAP_LOGMEL_N_MELS, stdout);
    return 0;
}
#endif
