/* engine.c: the channel table, the sampler threads and the API that Python calls.
 *
 * Two pthreads read the channels, each on its own period against absolute CLOCK_MONOTONIC
 * deadlines (clock_nanosleep TIMER_ABSTIME), so that periods do not drift with the cost of
 * reads: the fast thread reads files, MSRs and perf counters (microseconds each), the library
 * thread the library calls that take up to milliseconds (NVML's energy counter ~4 ms, its
 * sample buffer ~0.6 ms on an H200), so that these never make a 1 kHz deadline late. Each
 * thread pushes into its own single-producer ring; a drain empties both. A channel whose
 * reading stops changing can be read less often until it moves again (aipm_set_backoff). A reading equal to the previous one is not recorded, except once per heartbeat, so
 * a quiet channel costs almost nothing in the ring and is still seen to be alive. What a
 * channel is (a file, a register, an NVML call) is its source's business: the engine only
 * calls the channel's operations (channel_ops in internal.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

int64_t clock_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t aipm_now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

/* realtime - monotonic, taken between two monotonic reads to halve the uncertainty. */
int64_t realtime_to_monotonic_offset_ns(void) {
    int64_t m0 = clock_ns(CLOCK_MONOTONIC);
    int64_t r = clock_ns(CLOCK_REALTIME);
    int64_t m1 = clock_ns(CLOCK_MONOTONIC);
    return r - (m0 + (m1 - m0) / 2);
}

int engine_fail(aipm_engine *e, int rc, int32_t err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->error, sizeof e->error, fmt, ap);
    va_end(ap);
    e->error_errno = err;
    return rc;
}

const char *aipm_last_error(aipm_engine *e) { return e->error; }

int32_t aipm_last_errno(aipm_engine *e) { return e->error_errno; }

void engine_emit(aipm_engine *e, uint32_t channel, int64_t t_ns, double value, uint32_t flags) {
    aipm_record rec = {t_ns, value, channel, flags};
    ring_push(&e->lanes[e->channels[channel].lane].ring, &rec);
}

aipm_engine *aipm_engine_new(uint32_t ring_capacity_log2) {
    aipm_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    for (int k = 0; k < SAMPLER_THREADS; k++) {
        e->lanes[k].engine = e;
        e->lanes[k].index = k;
        if (ring_init(&e->lanes[k].ring, ring_capacity_log2) != AIPM_OK) {
            for (int j = 0; j < k; j++) ring_free(&e->lanes[j].ring);
            free(e);
            return NULL;
        }
    }
    pthread_mutex_init(&e->stats_lock, NULL);
    e->lateness_channel = -1;
    e->first_pass_limit_ns = AIPM_FIRST_PASS_LIMIT_NS;
    return e;
}

void aipm_engine_free(aipm_engine *e) {
    if (!e) return;
    if (atomic_load(&e->running)) aipm_stop(e);
    for (uint32_t i = 0; i < e->n_channels; i++)
        if (e->channels[i].ops->release) e->channels[i].ops->release(&e->channels[i]);
    nvml_close(e);
    for (int k = 0; k < SAMPLER_THREADS; k++) ring_free(&e->lanes[k].ring);
    pthread_mutex_destroy(&e->stats_lock);
    free(e);
}

aipm_channel *engine_new_channel(aipm_engine *e, const channel_ops *ops, int64_t period_ns) {
    if (atomic_load(&e->running)) {
        engine_fail(e, AIPM_ESTATE, 0, "channels cannot be added while the sampler runs");
        return NULL;
    }
    if (e->n_channels >= AIPM_MAX_CHANNELS) {
        engine_fail(e, AIPM_ESTATE, 0, "no channel slot left: all %d are taken", AIPM_MAX_CHANNELS);
        return NULL;
    }
    if (period_ns <= 0) {
        engine_fail(e, AIPM_ESTATE, 0, "period must be positive, got %lld ns", (long long)period_ns);
        return NULL;
    }
    aipm_channel *c = &e->channels[e->n_channels];
    memset(c, 0, sizeof *c);
    c->ops = ops;
    c->fd = -1;
    c->period_ns = period_ns;
    c->interval_ns = period_ns;
    c->lane = ops->library ? SAMPLER_LIBRARY : SAMPLER_FAST;
    c->stats.interval_ns = period_ns;
    return c;
}

int engine_commit_channel(aipm_engine *e) { return (int)e->n_channels++; }

int aipm_set_backoff(aipm_engine *e, uint32_t channel, int64_t quiet_ns, int64_t max_interval_ns) {
    if (atomic_load(&e->running)) return engine_fail(e, AIPM_ESTATE, 0, "backoff cannot be set while the sampler runs");
    if (channel >= e->n_channels) return engine_fail(e, AIPM_EARG, 0, "no channel %u", channel);
    if (quiet_ns < 0 || (quiet_ns > 0 && max_interval_ns <= 0))
        return engine_fail(e, AIPM_EARG, 0, "backoff: quiet %lld ns and longest interval %lld ns must be positive",
                           (long long)quiet_ns, (long long)max_interval_ns);
    aipm_channel *c = &e->channels[channel];
    c->backoff_quiet_ns = quiet_ns;
    c->backoff_max_ns = max_interval_ns;
    return AIPM_OK;
}

/* Written by the loop itself, once per wake-up: never polled. */
static const channel_ops lateness_ops = {.read = NULL};

int aipm_add_lateness_channel(aipm_engine *e) {
    if (e->lateness_channel >= 0) return e->lateness_channel;
    if (!engine_new_channel(e, &lateness_ops, 1)) return AIPM_ESTATE;
    e->lateness_channel = (int)e->n_channels;
    return engine_commit_channel(e);
}

/* One poll of one channel, at time now. Returns 1 when the reading moved (a new value, or new
 * buffered samples), 0 when it did not or the read failed. */
static int poll_channel(aipm_engine *e, uint32_t id, aipm_channel *c, int64_t now,
                        uint32_t extra_flags) {
    const channel_ops *ops = c->ops;
    int32_t err = 0;
    double value = 0;
    int64_t t0 = clock_ns(CLOCK_MONOTONIC);
    int rc = ops->read(e, c, id, &value, &err);
    int64_t t1 = clock_ns(CLOCK_MONOTONIC);
    int heartbeat = now - c->last_emit_ns >= AIPM_HEARTBEAT_NS;
    if (rc >= 0 && heartbeat && ops->gone) {
        int32_t why = ops->gone(c);
        if (why) {
            rc = AIPM_EGONE;
            err = why;
        }
    }
    uint64_t changed = 0;
    if (rc >= 0 && ops->buffered) {
        changed = (uint64_t)rc; /* the new samples it pushed */
    } else if (rc >= 0) {
        changed = !c->have_value || value != c->value;
        c->value = value;
        c->have_value = 1;
    }

    pthread_mutex_lock(&e->stats_lock);
    if (rc < 0) {
        c->stats.errors++;
        c->stats.last_error = err;
        c->stats.last_error_kind = rc;
    } else {
        c->stats.reads++;
        c->stats.read_ns_total += (uint64_t)(t1 - t0);
        c->stats.last_read_ns = t0;
        if (changed) {
            c->stats.changes += changed;
            c->stats.last_change_ns = t0;
        }
        c->stats.last_value = c->value;
    }
    pthread_mutex_unlock(&e->stats_lock);

    if (rc < 0 || ops->buffered) {
        if (changed) c->last_emit_ns = now;
        return changed > 0;
    }
    if (changed || heartbeat || atomic_load_explicit(&e->record_unchanged, memory_order_relaxed)) {
        /* the reading's time is the middle of the read call */
        engine_emit(e, id, t0 + (t1 - t0) / 2, value, (changed ? 0 : AIPM_FLAG_REPEAT) | extra_flags);
        c->last_emit_ns = now;
    }
    return changed > 0;
}

/* The interval to the next read: the period while the reading moves; once it has been quiet
 * (unchanged or failing) for backoff_quiet_ns, twice the last interval up to backoff_max_ns.
 * A counter loses no energy when read less often, only time resolution, and the first change
 * brings the period back. */
static void next_interval(aipm_engine *e, aipm_channel *c, int moved, int64_t now) {
    int64_t interval = c->period_ns;
    if (moved) {
        c->quiet_since_ns = now;
    } else if (c->backoff_quiet_ns > 0 && now - c->quiet_since_ns >= c->backoff_quiet_ns) {
        interval = c->interval_ns < c->backoff_max_ns / 2 ? c->interval_ns * 2 : c->backoff_max_ns;
        if (interval < c->period_ns) interval = c->period_ns;
    }
    if (interval != c->interval_ns) {
        c->interval_ns = interval;
        pthread_mutex_lock(&e->stats_lock);
        c->stats.interval_ns = interval;
        pthread_mutex_unlock(&e->stats_lock);
    }
}

static int polled_by(const aipm_channel *c, int lane) { return c->ops->read && c->lane == lane; }

/* Reads every channel of this lane that is due at now; returns the periods skipped because the
 * loop fell behind by whole intervals (counted, not caught up). */
static uint64_t poll_due(aipm_engine *e, int lane, int64_t now) {
    uint64_t missed = 0;
    for (uint32_t i = 0; i < e->n_channels; i++) {
        aipm_channel *c = &e->channels[i];
        if (!polled_by(c, lane) || c->next_due_ns > now) continue;
        int moved = poll_channel(e, i, c, now, 0);
        next_interval(e, c, moved, now);
        c->next_due_ns += c->interval_ns;
        if (c->next_due_ns <= now) {
            int64_t behind = (now - c->next_due_ns) / c->interval_ns + 1;
            missed += (uint64_t)behind;
            c->next_due_ns += behind * c->interval_ns;
        }
    }
    return missed;
}

static void sleep_until(int64_t t_ns) {
    struct timespec ts = {t_ns / 1000000000LL, t_ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void *sampler_main(void *arg) {
    sampler_lane *L = arg;
    aipm_engine *e = L->engine;
    const int lane = L->index;
    /* the default 50 µs timer slack would be most of our wake-up jitter at 1 kHz */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    prctl(PR_SET_NAME, lane == SAMPLER_FAST ? "aipm-sampler" : "aipm-library", 0, 0, 0);
    /* the library thread yields the CPU to the fast one: where cores are few, a 4 ms library call
     * must not hold the core the next 1 kHz deadline wakes on (nice is per thread on Linux) */
    if (lane == SAMPLER_LIBRARY) {
        id_t tid = (id_t)syscall(SYS_gettid);
        setpriority(PRIO_PROCESS, tid, getpriority(PRIO_PROCESS, tid) + AIPM_LIBRARY_NICE);
    }
    int64_t start = clock_ns(CLOCK_MONOTONIC);
    for (uint32_t i = 0; i < e->n_channels; i++) {
        aipm_channel *c = &e->channels[i];
        if (c->lane != lane) continue;
        c->next_due_ns = start;
        c->last_emit_ns = start - AIPM_HEARTBEAT_NS; /* first reading is recorded */
        c->quiet_since_ns = start;
        c->interval_ns = c->period_ns;
    }
    const int lateness_here = e->lateness_channel >= 0 && e->channels[e->lateness_channel].lane == lane;
    uint64_t wakeups = 0; /* the thread's own copy of counts.wakeups */
    while (atomic_load_explicit(&e->running, memory_order_acquire)) {
        int64_t deadline = INT64_MAX;
        for (uint32_t i = 0; i < e->n_channels; i++)
            if (polled_by(&e->channels[i], lane) && e->channels[i].next_due_ns < deadline)
                deadline = e->channels[i].next_due_ns;
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (deadline == INT64_MAX || deadline - now > AIPM_MAX_SLEEP_NS) {
            /* nothing due soon: nap and look at the stop flag again */
            if (deadline == INT64_MAX) /* nothing to read at all: the first pass is trivially done */
                atomic_store_explicit(&L->first_pass_done, 1, memory_order_release);
            sleep_until(now + AIPM_MAX_SLEEP_NS);
            continue;
        }
        sleep_until(deadline);
        now = clock_ns(CLOCK_MONOTONIC);
        int64_t late = now - deadline;
        if (lateness_here) engine_emit(e, (uint32_t)e->lateness_channel, deadline, (double)late, 0);
        uint64_t missed = poll_due(e, lane, now);
        wakeups++;
        int64_t cpu = (wakeups & 63) == 0 ? clock_ns(CLOCK_THREAD_CPUTIME_ID) : -1; /* a syscall: not every wake-up */
        pthread_mutex_lock(&e->stats_lock);
        L->counts.wakeups = wakeups;
        L->counts.missed += missed;
        L->counts.lateness_sum_ns += late;
        if (late > L->counts.lateness_max_ns) L->counts.lateness_max_ns = late;
        if (cpu >= 0) L->counts.cpu_ns = cpu;
        pthread_mutex_unlock(&e->stats_lock);
        atomic_store_explicit(&L->first_pass_done, 1, memory_order_release);
    }
    /* a last reading of every channel, so the recording covers up to the stop */
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    for (uint32_t i = 0; i < e->n_channels; i++) {
        aipm_channel *c = &e->channels[i];
        if (!polled_by(c, lane) || !(c->ops->buffered || c->have_value)) continue;
        c->last_emit_ns = now - AIPM_HEARTBEAT_NS; /* force a record */
        poll_channel(e, i, c, now, AIPM_FLAG_FINAL);
    }
    int64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    pthread_mutex_lock(&e->stats_lock);
    L->counts.cpu_ns = cpu;
    pthread_mutex_unlock(&e->stats_lock);
    return NULL;
}

/* Whether lane k has any channel to read (else its thread is not started). */
static int lane_used(aipm_engine *e, int k) {
    for (uint32_t i = 0; i < e->n_channels; i++)
        if (polled_by(&e->channels[i], k)) return 1;
    return 0;
}

static void join_lanes(aipm_engine *e) {
    for (int k = 0; k < SAMPLER_THREADS; k++) {
        if (e->lanes[k].started) pthread_join(e->lanes[k].thread, NULL);
        e->lanes[k].started = 0;
    }
}

static int first_pass_done(aipm_engine *e) {
    for (int k = 0; k < SAMPLER_THREADS; k++)
        if (e->lanes[k].started && !atomic_load_explicit(&e->lanes[k].first_pass_done, memory_order_acquire))
            return 0;
    return 1;
}

void aipm_set_first_pass_limit(aipm_engine *e, int64_t limit_ns) {
    e->first_pass_limit_ns = limit_ns > 0 ? limit_ns : AIPM_FIRST_PASS_LIMIT_NS;
}

int aipm_start(aipm_engine *e) {
    if (atomic_load(&e->running)) return engine_fail(e, AIPM_ESTATE, 0, "the sampler is already running");
    for (uint32_t i = 0; i < e->n_channels; i++) e->channels[i].have_value = 0;
    atomic_store(&e->running, 1);
    for (int k = 0; k < SAMPLER_THREADS; k++) {
        sampler_lane *L = &e->lanes[k];
        atomic_store(&L->first_pass_done, 0);
        if (!lane_used(e, k)) continue;
        int rc = pthread_create(&L->thread, NULL, sampler_main, L);
        if (rc != 0) {
            atomic_store(&e->running, 0);
            join_lanes(e);
            return engine_fail(e, AIPM_ESTATE, rc, "pthread_create: %s", strerror(rc));
        }
        L->started = 1;
    }
    /* Return once every channel holds a first reading, so that whatever the caller measures
     * from now on lies inside the recording (thread start-up can take milliseconds). A first
     * pass that takes longer than the limit means a source hangs: say so rather than start a
     * recording whose beginning is missing. */
    int64_t give_up = clock_ns(CLOCK_MONOTONIC) + e->first_pass_limit_ns;
    struct timespec nap = {0, 50000};
    while (!first_pass_done(e)) {
        if (clock_ns(CLOCK_MONOTONIC) >= give_up) {
            aipm_stop(e);
            return engine_fail(e, AIPM_ETIMEOUT, 0,
                               "the first pass of readings did not finish within %.3f s: a source "
                               "takes too long to read (see the channel stats)",
                               (double)e->first_pass_limit_ns / 1e9);
        }
        nanosleep(&nap, NULL);
    }
    return AIPM_OK;
}

int aipm_stop(aipm_engine *e) {
    if (!atomic_load(&e->running)) return AIPM_ESTATE;
    atomic_store_explicit(&e->running, 0, memory_order_release);
    join_lanes(e);
    return AIPM_OK;
}

void aipm_set_record_unchanged(aipm_engine *e, int on) {
    atomic_store_explicit(&e->record_unchanged, on, memory_order_relaxed);
}

int aipm_running(aipm_engine *e) { return atomic_load(&e->running); }

/* The library thread's ring first: it holds few records, so the fast ring cannot starve it. */
size_t aipm_drain(aipm_engine *e, aipm_record *out, size_t max) {
    size_t n = 0;
    for (int k = SAMPLER_THREADS - 1; k >= 0 && n < max; k--) n += ring_drain(&e->lanes[k].ring, out + n, max - n);
    return n;
}

size_t aipm_pending(aipm_engine *e) {
    size_t n = 0;
    for (int k = 0; k < SAMPLER_THREADS; k++) n += ring_pending(&e->lanes[k].ring);
    return n;
}

int aipm_channel_stats_get(aipm_engine *e, uint32_t channel, aipm_channel_stats *out) {
    if (channel >= e->n_channels) return AIPM_EARG;
    pthread_mutex_lock(&e->stats_lock);
    *out = e->channels[channel].stats;
    pthread_mutex_unlock(&e->stats_lock);
    return AIPM_OK;
}

void aipm_sampler_stats_get(aipm_engine *e, aipm_sampler_stats *out) {
    memset(out, 0, sizeof *out);
    const sampler_counts *fast = &e->lanes[SAMPLER_FAST].counts, *library = &e->lanes[SAMPLER_LIBRARY].counts;
    pthread_mutex_lock(&e->stats_lock);
    out->wakeups = fast->wakeups;
    out->missed_deadlines = fast->missed + library->missed;
    out->lateness_max_ns = fast->lateness_max_ns;
    out->lateness_sum_ns = fast->lateness_sum_ns;
    out->cpu_ns = fast->cpu_ns + library->cpu_ns;
    out->library_wakeups = library->wakeups;
    out->library_lateness_max_ns = library->lateness_max_ns;
    out->library_cpu_ns = library->cpu_ns;
    pthread_mutex_unlock(&e->stats_lock);
    for (int k = 0; k < SAMPLER_THREADS; k++) {
        out->overflows += atomic_load(&e->lanes[k].ring.overflows);
        out->records_written += atomic_load(&e->lanes[k].ring.written);
    }
    out->ring_capacity = (uint32_t)(e->lanes[SAMPLER_FAST].ring.mask + 1);
    out->n_channels = e->n_channels;
}
