/* fake_cudart.c: the few CUDA runtime event functions that aipm_fast.timing.RuntimeEvents calls,
 * for testing that path without a GPU. An event is recorded at the host's CLOCK_MONOTONIC time
 * plus FAKE_CUDART_LAG_US (the GPU running behind the host) and is complete once that time has
 * passed; elapsed times are the difference of those times, in ms, as cudaEventElapsedTime gives.
 * The stream argument is ignored (one queue). fake_cudart_records() counts records, so a test can
 * tell which events recorded what. Plain C11: gcc -shared -fPIC. */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    long long t_ns; /* 0: never recorded */
} fake_event;

static atomic_ulong records;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long lag_ns(void) {
    const char *s = getenv("FAKE_CUDART_LAG_US");
    return s ? atoll(s) * 1000LL : 0;
}

int cudaEventCreate(void **event) {
    fake_event *e = calloc(1, sizeof *e);
    if (!e) return 2; /* cudaErrorMemoryAllocation */
    *event = e;
    return 0;
}

int cudaEventDestroy(void *event) {
    free(event);
    return 0;
}

int cudaEventRecord(void *event, void *stream) {
    (void)stream;
    ((fake_event *)event)->t_ns = now_ns() + lag_ns();
    atomic_fetch_add(&records, 1);
    return 0;
}

/* static, so that the library's own calls never bind to another loaded library's cudaEventQuery
 * (a process with torch may hold one) */
static int query(const fake_event *e) { return now_ns() >= e->t_ns ? 0 : 600; /* cudaErrorNotReady */ }

int cudaEventQuery(void *event) { return query(event); }

int cudaEventSynchronize(void *event) {
    long long give_up = now_ns() + 10000000000LL; /* a test must fail, never hang */
    while (query(event) != 0) {
        if (now_ns() > give_up) return 6; /* cudaErrorLaunchTimeout */
        struct timespec nap = {0, 100000};
        nanosleep(&nap, NULL);
    }
    return 0;
}

int cudaEventElapsedTime(float *ms, void *start, void *end) {
    const fake_event *a = start, *b = end;
    if (!a->t_ns || !b->t_ns) return 400; /* cudaErrorInvalidResourceHandle */
    *ms = (float)((double)(b->t_ns - a->t_ns) / 1e6);
    return 0;
}

unsigned long fake_cudart_records(void) { return atomic_load(&records); }
