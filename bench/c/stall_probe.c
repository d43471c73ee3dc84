/* Measures what the machine itself takes from a running program: a thread
 * per CPU (each pinned to its CPU) reads CLOCK_MONOTONIC in a tight loop
 * for SECONDS and counts the gaps of 10 us or more between two reads. Such
 * a gap is time the CPU spent elsewhere (timer ticks and other interrupts,
 * the hypervisor, other tenants), and a call that is in flight when it
 * happens is that much slower: this is what sets the tail of the
 * sequential latency figures.
 *
 * Usage: stall_probe SECONDS
 * Prints `stalls_per_s X` (gaps >= 10 us per second, per CPU) and
 * `stall_mean_ns X` (their mean length) over all CPUs of this process's
 * affinity mask; then `tick_hz H`, the kernel's tick rate (see tick_hz),
 * and `tick_share_pct S`, the share of stalls that start in the busiest
 * 200 us of the tick period (a uniform spread would put 200 us / period
 * there). A high share means the stalls are the kernel's own timer tick,
 * which no program avoids.
 */
#include "common.h"

#include <pthread.h>
#include <sched.h>

#define STALL_NS 10000u
#define MAX_STARTS 65536

struct probe {
    int cpu;
    uint64_t seconds_ns;
    uint64_t stalls;
    uint64_t stalled_ns;
    uint64_t *starts; /* CLOCK_MONOTONIC start of each stall (up to MAX_STARTS) */
};

static void *probe_cpu(void *arg) {
    struct probe *p = arg;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(p->cpu, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) {
        fprintf(stderr, "stall_probe: cannot pin to CPU %d\n", p->cpu);
        exit(1);
    }
    uint64_t last = now_ns(), end = last + p->seconds_ns;
    while (last < end) {
        uint64_t t = now_ns();
        if (t - last >= STALL_NS) {
            if (p->stalls < MAX_STARTS) p->starts[p->stalls] = last;
            p->stalls++;
            p->stalled_ns += t - last;
        }
        last = t;
    }
    return NULL;
}

#define BIN_NS 50000u   /* phase histogram bins of 50 us */
#define WINDOW_BINS 4    /* the busiest 200 us */

/* Share (0..1) of the stall starts that fall in the busiest WINDOW_BINS
 * bins of `period_ns`, the phase taken as CLOCK_MONOTONIC modulo the period
 * (the kernel's ticks fall on whole multiples of it). */
static double busiest_share(const struct probe *probes, int n, uint64_t period_ns) {
    size_t bins = (period_ns + BIN_NS - 1) / BIN_NS; /* the last may be partial */
    unsigned *hist = calloc(bins, sizeof *hist);
    if (!hist) die("calloc");
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t kept = probes[i].stalls < MAX_STARTS ? probes[i].stalls : MAX_STARTS;
        for (uint64_t k = 0; k < kept; k++) hist[(probes[i].starts[k] % period_ns) / BIN_NS]++;
        total += kept;
    }
    uint64_t best = 0;
    for (size_t b = 0; b < bins; b++) {
        uint64_t sum = 0;
        for (size_t w = 0; w < WINDOW_BINS; w++) sum += hist[(b + w) % bins];
        if (sum > best) best = sum;
    }
    free(hist);
    return total ? (double)best / (double)total : 0.0;
}

/* Local timer interrupts so far on the CPUs of `mask`, summed, from the
 * `LOC:` (x86) or `arch_timer` (arm64) line of /proc/interrupts; -1 when
 * there is none. Columns follow the header's CPU0 CPU1 ... names. */
static long long timer_irqs_now(const cpu_set_t *mask) {
    FILE *f = fopen("/proc/interrupts", "r");
    if (!f) return -1;
    char line[8192];
    int cpu_of_col[CPU_SETSIZE], cols = 0;
    long long sum = -1;
    if (fgets(line, sizeof line, f)) {
        for (char *tok = strtok(line, " \t\n"); tok && cols < CPU_SETSIZE; tok = strtok(NULL, " \t\n"))
            cpu_of_col[cols++] = strncmp(tok, "CPU", 3) == 0 ? atoi(tok + 3) : -1;
    }
    while (sum < 0 && fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ') p++;
        if (strncmp(p, "LOC:", 4) != 0 && !strstr(p, "arch_timer")) continue;
        p = strchr(p, ':') + 1;
        sum = 0;
        for (int c = 0; c < cols; c++) {
            char *end;
            long long v = strtoll(p, &end, 10);
            if (end == p) break;
            p = end;
            if (cpu_of_col[c] >= 0 && CPU_ISSET(cpu_of_col[c], mask)) sum += v;
        }
    }
    fclose(f);
    return sum;
}

/* The kernel's tick rate, from the standard ones. A spinning CPU takes one
 * tick per period plus whatever other timers fire, so the interrupts that
 * `n` CPUs counted over `seconds` bound it from above (a rate of period P
 * also matches every multiple of P, so the bound is what rules 1000 Hz out
 * on a 250 Hz kernel); among the rates under that bound, the tick is the
 * one whose period the stalls cluster in most, measured as the busiest
 * window's share above a uniform spread. 0 when nothing fits. */
static unsigned tick_hz(const struct probe *probes, int n, long long before, long long after, double seconds) {
    static const unsigned rates[] = {100, 250, 300, 1000};
    double bound = before >= 0 && after >= before && n > 0 ? 1.1 * (double)(after - before) / n / seconds : 1e9;
    unsigned best = 0;
    double best_excess = 0;
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        if (rates[r] > bound) continue;
        uint64_t period = 1000000000u / rates[r];
        double excess = busiest_share(probes, n, period) - (double)(WINDOW_BINS * BIN_NS) / (double)period;
        if (best == 0 || excess > best_excess) {
            best = rates[r];
            best_excess = excess;
        }
    }
    return best;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0;
    if (seconds <= 0 || seconds > 60) {
        fprintf(stderr, "usage: stall_probe SECONDS (0 < SECONDS <= 60)\n");
        return 2;
    }
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0) die("sched_getaffinity");
    struct probe probes[CPU_SETSIZE];
    pthread_t threads[CPU_SETSIZE];
    int n = 0;
    long long timer_irqs = timer_irqs_now(&mask);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &mask)) continue;
        probes[n] = (struct probe){.cpu = cpu, .seconds_ns = (uint64_t)(seconds * 1e9)};
        probes[n].starts = malloc(MAX_STARTS * sizeof *probes[n].starts);
        if (!probes[n].starts) die("malloc");
        /* Touched now, so that first-touch page faults do not count as stalls. */
        memset(probes[n].starts, 0, MAX_STARTS * sizeof *probes[n].starts);
        if (pthread_create(&threads[n], NULL, probe_cpu, &probes[n]) != 0) die("pthread_create");
        n++;
    }
    uint64_t stalls = 0, stalled = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        stalls += probes[i].stalls;
        stalled += probes[i].stalled_ns;
    }
    printf("stalls_per_s %.1f\n", (double)stalls / n / seconds);
    printf("stall_mean_ns %.0f\n", stalls ? (double)stalled / (double)stalls : 0.0);
    unsigned hz = tick_hz(probes, n, timer_irqs, timer_irqs_now(&mask), seconds);
    printf("tick_hz %u\n", hz);
    printf("tick_share_pct %.1f\n", hz ? 100.0 * busiest_share(probes, n, 1000000000u / hz) : 0.0);
    for (int i = 0; i < n; i++) free(probes[i].starts);
    return 0;
}
