/* ring.c: the single-producer/single-consumer ring of records.
 *
 * The producer owns head, the consumer owns tail; each reads the other's index with acquire
 * and publishes its own with release, so no lock is needed and neither side ever waits.
 * When the ring is full the newest record is dropped and counted: the sampler must never
 * block on a slow consumer, and a count of what was lost is better than a stalled clock. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int ring_init(aipm_ring *r, uint32_t capacity_log2) {
    if (capacity_log2 < 4 || capacity_log2 > 28) return AIPM_EARG;
    uint64_t cap = 1ULL << capacity_log2;
    r->slots = calloc(cap, sizeof(aipm_record));
    if (!r->slots) return AIPM_ENOMEM;
    r->mask = cap - 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->overflows, 0);
    atomic_init(&r->written, 0);
    return AIPM_OK;
}

void ring_free(aipm_ring *r) {
    free(r->slots);
    r->slots = NULL;
}

void ring_push(aipm_ring *r, const aipm_record *rec) {
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail > r->mask) {
        atomic_fetch_add_explicit(&r->overflows, 1, memory_order_relaxed);
        return;
    }
    r->slots[head & r->mask] = *rec;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    atomic_fetch_add_explicit(&r->written, 1, memory_order_relaxed);
}

size_t ring_pending(aipm_ring *r) {
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    return (size_t)(head - tail);
}

size_t ring_drain(aipm_ring *r, aipm_record *out, size_t max) {
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t n = (size_t)(head - tail);
    if (n > max) n = max;
    if (n == 0) return 0;
    /* at most two contiguous pieces: up to the end of the array, then from its start */
    size_t start = (size_t)(tail & r->mask);
    size_t first = (size_t)(r->mask + 1) - start;
    if (first > n) first = n;
    memcpy(out, r->slots + start, first * sizeof(aipm_record));
    if (n > first) memcpy(out + first, r->slots, (n - first) * sizeof(aipm_record));
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
    return n;
}
