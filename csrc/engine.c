/* engine.c: the channel table, the sampler thread and the API that Python calls.
 *
 * One pthread reads every channel on its own period against absolute CLOCK_MONOTONIC
 * deadlines (clock_nanosleep TIMER_ABSTIME), so that periods do not drift with the cost of
 * reads. A reading equal to the previous one is not recorded, except once per heartbeat, so
 * a quiet channel costs almost nothing in the ring and is still seen to be alive. What a
 * channel is (a file, a register, an NVML call) is its source's business: the engine only
 * calls the channel's operations (channel_ops in internal.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
    ring_push(&e->ring, &rec);
}

aipm_engine *aipm_engine_new(uint32_t ring_capacity_log2) {
    aipm_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    if (ring_init(&e->ring, ring_capacity_log2) != AIPM_OK) {
        free(e);
        return NULL;
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
    ring_free(&e->ring);
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
    return c;
}

int engine_commit_channel(aipm_engine *e) { return (int)e->n_channels++; }

/* Written by the loop itself, once per wake-up: never polled. */
static const channel_ops lateness_ops = {.read = NULL};

int aipm_add_lateness_channel(aipm_engine *e) {
    if (e->lateness_channel >= 0) return e->lateness_channel;
    if (!engine_new_channel(e, &lateness_ops, 1)) return AIPM_ESTATE;
    e->lateness_channel = (int)e->n_channels;
    return engine_commit_channel(e);
}

/* One poll of one channel, at time now. */
static void poll_channel(aipm_engine *e, uint32_t id, aipm_channel *c, int64_t now,
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
        return;
    }
    if (changed || heartbeat || atomic_load_explicit(&e->record_unchanged, memory_order_relaxed)) {
        /* the reading's time is the middle of the read call */
        engine_emit(e, id, t0 + (t1 - t0) / 2, value, (changed ? 0 : AIPM_FLAG_REPEAT) | extra_flags);
        c->last_emit_ns = now;
    }
}

/* Reads every channel that is due at now; returns the periods skipped because the loop fell
 * behind by whole periods (counted, not caught up). */
static uint64_t poll_due(aipm_engine *e, int64_t now) {
    uint64_t missed = 0;
    for (uint32_t i = 0; i < e->n_channels; i++) {
        aipm_channel *c = &e->channels[i];
        if (!c->ops->read || c->next_due_ns > now) continue;
        poll_channel(e, i, c, now, 0);
        c->next_due_ns += c->period_ns;
        if (c->next_due_ns <= now) {
            int64_t behind = (now - c->next_due_ns) / c->period_ns + 1;
            missed += (uint64_t)behind;
            c->next_due_ns += behind * c->period_ns;
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
    aipm_engine *e = arg;
    /* the default 50 µs timer slack would be most of our wake-up jitter at 1 kHz */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int64_t start = clock_ns(CLOCK_MONOTONIC);
    for (uint32_t i = 0; i < e->n_channels; i++) {
        e->channels[i].next_due_ns = start;
        e->channels[i].last_emit_ns = start - AIPM_HEARTBEAT_NS; /* first reading is recorded */
    }
    uint64_t wakeups = 0; /* the sampler's own copy of counts.wakeups */
    while (atomic_load_explicit(&e->running, memory_order_acquire)) {
        int64_t deadline = INT64_MAX;
        for (uint32_t i = 0; i < e->n_channels; i++)
            if (e->channels[i].ops->read && e->channels[i].next_due_ns < deadline)
                deadline = e->channels[i].next_due_ns;
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (deadline == INT64_MAX || deadline - now > AIPM_MAX_SLEEP_NS) {
            /* nothing due soon: nap and look at the stop flag again */
            if (deadline == INT64_MAX) /* nothing to read at all: the first pass is trivially done */
                atomic_store_explicit(&e->first_pass_done, 1, memory_order_release);
            sleep_until(now + AIPM_MAX_SLEEP_NS);
            continue;
        }
        sleep_until(deadline);
        now = clock_ns(CLOCK_MONOTONIC);
        int64_t late = now - deadline;
        if (e->lateness_channel >= 0) engine_emit(e, (uint32_t)e->lateness_channel, deadline, (double)late, 0);
        uint64_t missed = poll_due(e, now);
        wakeups++;
        int64_t cpu = (wakeups & 63) == 0 ? clock_ns(CLOCK_THREAD_CPUTIME_ID) : -1; /* a syscall: not every wake-up */
        pthread_mutex_lock(&e->stats_lock);
        e->counts.wakeups = wakeups;
        e->counts.missed += missed;
        e->counts.lateness_sum_ns += late;
        if (late > e->counts.lateness_max_ns) e->counts.lateness_max_ns = late;
        if (cpu >= 0) e->counts.cpu_ns = cpu;
        pthread_mutex_unlock(&e->stats_lock);
        atomic_store_explicit(&e->first_pass_done, 1, memory_order_release);
    }
    /* a last reading of every channel, so the recording covers up to the stop */
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    for (uint32_t i = 0; i < e->n_channels; i++) {
        aipm_channel *c = &e->channels[i];
        if (!c->ops->read || !(c->ops->buffered || c->have_value)) continue;
        c->last_emit_ns = now - AIPM_HEARTBEAT_NS; /* force a record */
        poll_channel(e, i, c, now, AIPM_FLAG_FINAL);
    }
    int64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    pthread_mutex_lock(&e->stats_lock);
    e->counts.cpu_ns = cpu;
    pthread_mutex_unlock(&e->stats_lock);
    return NULL;
}

void aipm_set_first_pass_limit(aipm_engine *e, int64_t limit_ns) {
    e->first_pass_limit_ns = limit_ns > 0 ? limit_ns : AIPM_FIRST_PASS_LIMIT_NS;
}

int aipm_start(aipm_engine *e) {
    if (atomic_load(&e->running)) return engine_fail(e, AIPM_ESTATE, 0, "the sampler is already running");
    for (uint32_t i = 0; i < e->n_channels; i++) e->channels[i].have_value = 0;
    atomic_store(&e->running, 1);
    atomic_store(&e->first_pass_done, 0);
    int rc = pthread_create(&e->thread, NULL, sampler_main, e);
    if (rc != 0) {
        atomic_store(&e->running, 0);
        return engine_fail(e, AIPM_ESTATE, rc, "pthread_create: %s", strerror(rc));
    }
    /* Return once every channel holds a first reading, so that whatever the caller measures
     * from now on lies inside the recording (thread start-up can take milliseconds). A first
     * pass that takes longer than the limit means a source hangs: say so rather than start a
     * recording whose beginning is missing. */
    int64_t give_up = clock_ns(CLOCK_MONOTONIC) + e->first_pass_limit_ns;
    struct timespec nap = {0, 50000};
    while (!atomic_load_explicit(&e->first_pass_done, memory_order_acquire)) {
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
    pthread_join(e->thread, NULL);
    return AIPM_OK;
}

void aipm_set_record_unchanged(aipm_engine *e, int on) {
    atomic_store_explicit(&e->record_unchanged, on, memory_order_relaxed);
}

int aipm_running(aipm_engine *e) { return atomic_load(&e->running); }

size_t aipm_drain(aipm_engine *e, aipm_record *out, size_t max) { return ring_drain(&e->ring, out, max); }

size_t aipm_pending(aipm_engine *e) { return ring_pending(&e->ring); }

int aipm_channel_stats_get(aipm_engine *e, uint32_t channel, aipm_channel_stats *out) {
    if (channel >= e->n_channels) return AIPM_EARG;
    pthread_mutex_lock(&e->stats_lock);
    *out = e->channels[channel].stats;
    pthread_mutex_unlock(&e->stats_lock);
    return AIPM_OK;
}

void aipm_sampler_stats_get(aipm_engine *e, aipm_sampler_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->stats_lock);
    out->wakeups = e->counts.wakeups;
    out->missed_deadlines = e->counts.missed;
    out->lateness_max_ns = e->counts.lateness_max_ns;
    out->lateness_sum_ns = e->counts.lateness_sum_ns;
    out->cpu_ns = e->counts.cpu_ns;
    pthread_mutex_unlock(&e->stats_lock);
    out->overflows = atomic_load(&e->ring.overflows);
    out->records_written = atomic_load(&e->ring.written);
    out->ring_capacity = (uint32_t)(e->ring.mask + 1);
    out->n_channels = e->n_channels;
}
