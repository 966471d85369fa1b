/* Minimal Cortex-M4 start-up for qemu-system-arm -M mps2-an386 (bench/mcu_frontend.py): the vector table,
 * .data copied from flash and .bss zeroed, the FPU enabled, newlib's semihosting (rdimon) set up for printf,
 * main, and exit through semihosting. SysTick counts ticks of the 25 MHz CPU clock for qemu_ticks(); with
 * qemu's -icount shift=0 (1 ns of virtual time per instruction) one tick is 40 instructions. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_top;
extern int main(void);
extern void initialise_monitor_handles(void);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SYST_RELOAD 0x00FFFFFFu

static volatile uint32_t systick_wraps;

void SysTick_Handler(void);
unsigned long long qemu_ticks(void);
void Reset_Handler(void);

void SysTick_Handler(void)
{
    systick_wraps++;
}

unsigned long long qemu_ticks(void)
{
    uint32_t wraps, value;
    do { /* a wrap between the two reads would pair the new count with the old number of wraps */
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (wraps != systick_wraps);
    return (unsigned long long)wraps * (SYST_RELOAD + 1u) + (SYST_RELOAD - value);
}

/* newlib's exit() runs __libc_fini_array, which calls _fini (normally from crti.o, left out by -nostartfiles) */
void _init(void);
void _fini(void);
void _init(void) {}
void _fini(void) {}

static void fault(void)
{
    exit(3);
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;)
        *dst++ = 0;
    CPACR |= 0xFu << 20; /* CP10, CP11: full access to the FPU */
    __asm volatile("dsb\n isb" ::: "memory");
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7; /* processor clock, interrupt on wrap, enabled */
    initialise_monitor_handles();
    exit(main());
}

/* the initial stack pointer, then the handlers from Reset to SysTick */
static const struct {
    uint32_t *stack;
    void (*handler[15])(void);
} vectors __attribute__((section(".vectors"), used)) = {
    &_stack_top,
    {Reset_Handler, fault, fault, fault, fault, fault, 0, 0, 0, 0, fault, fault, 0, fault, SysTick_Handler},
};
