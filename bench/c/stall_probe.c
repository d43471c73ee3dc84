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
 * affinity mask.
 *
 * Under a CPU quota (cgroup cpu.max) smaller than that mask, the spinning
 * threads throttle themselves and the probe reports stalls that clients
 * waiting on I/O never meet; this machine has no quota.
 */
#include "common.h"

#include <pthread.h>
#include <sched.h>

#define STALL_NS 10000u

struct probe {
    int cpu;
    uint64_t seconds_ns;
    uint64_t stalls;
    uint64_t stalled_ns;
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
            p->stalls++;
            p->stalled_ns += t - last;
        }
        last = t;
    }
    return NULL;
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
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &mask)) continue;
        probes[n] = (struct probe){.cpu = cpu, .seconds_ns = (uint64_t)(seconds * 1e9)};
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
    return 0;
}
