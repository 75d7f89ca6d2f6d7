/* engine_driver.c: the C engine on its own, against fakes, for the sanitizer builds.
 *
 * Python cannot load an ASan or TSan runtime after start-up, so tests/test_sanitizers.py
 * compiles this file with the C files of csrc/ under -fsanitize=address,undefined and -fsanitize=thread
 * and runs it. It does what the Python front does, with the races made likely: a writer
 * thread advances a powercap-like energy_uj file while the sampler reads it, the main thread
 * drains the ring while the sampler fills it, and a third thread reads the statistics all the
 * while. Then it checks that a first pass slower than its limit is refused (AIPM_ETIMEOUT)
 * and that a failed setup carries its errno, and meets hostile input: counter files that are
 * no number (a sign, blanks, too long), a FIFO, and an NVML library that claims more samples
 * than the buffer holds, returns NULL error strings, unknown value types and unterminated
 * names (FAKE_NVML_FAULT).
 *
 * Usage: engine_driver WORK_DIR FAKE_NVML_SO. Exit status 0 when every check holds; a failed
 * check prints what was expected and exits 1 (a sanitizer report exits non-zero on its own). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aipm.h"

static atomic_int failures;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "engine_driver:%d: check failed: %s: ", __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- a powercap-like counter: 7 zero-padded digits and a newline, rewritten in place ---- */
struct writer {
    int fd;
    atomic_int stop;
    pthread_t thread;
};

static void write_counter(int fd, unsigned long uj) {
    char buf[16];
    snprintf(buf, sizeof buf, "%07lu\n", uj % 10000000UL);
    if (pwrite(fd, buf, 8, 0) != 8) perror("pwrite");
}

static void *writer_main(void *arg) {
    struct writer *w = arg;
    unsigned long uj = 1000000;
    while (!atomic_load(&w->stop)) {
        uj += 20000; /* 20 W at 1 ms */
        write_counter(w->fd, uj);
        sleep_ms(1);
    }
    return NULL;
}

/* ---- a reader of every statistic, as the coordinator's thread would be ---- */
struct stats_reader {
    aipm_engine *e;
    uint32_t n_channels;
    atomic_int stop;
    unsigned long rounds;
    pthread_t thread;
};

static void *stats_main(void *arg) {
    struct stats_reader *r = arg;
    uint64_t last_wakeups = 0;
    while (!atomic_load(&r->stop)) {
        aipm_sampler_stats s;
        aipm_sampler_stats_get(r->e, &s);
        CHECK(s.wakeups >= last_wakeups, "wakeups went back from %" PRIu64 " to %" PRIu64,
              last_wakeups, s.wakeups);
        last_wakeups = s.wakeups;
        for (uint32_t i = 0; i < r->n_channels; i++) {
            aipm_channel_stats c;
            CHECK(aipm_channel_stats_get(r->e, i, &c) == AIPM_OK, "channel %u", i);
        }
        r->rounds++;
        sleep_ms(1);
    }
    return NULL;
}

static int add(aipm_engine *e, int rc, const char *what) {
    CHECK(rc >= 0, "%s: %d (%s)", what, rc, aipm_last_error(e));
    return rc;
}

/* Start, drain while running and while another thread reads the stats, stop, check. */
static void run_engine(const char *dir, const char *nvml) {
    char path[4096];
    snprintf(path, sizeof path, "%s/energy_uj", dir);
    struct writer w = {.fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644)};
    CHECK(w.fd >= 0, "open %s: %s", path, strerror(errno));
    if (w.fd < 0) return;
    write_counter(w.fd, 1000000);
    pthread_create(&w.thread, NULL, writer_main, &w);

    aipm_engine *e = aipm_engine_new(9); /* 512 slots: ~3000 records/s wrap it twice */
    int text = add(e, aipm_add_text_counter(e, path, 1e-6, 1000000), "text counter");
    int lateness = add(e, aipm_add_lateness_channel(e), "lateness channel");
    int gpus = add(e, aipm_nvml_open(e, nvml), "nvml open");
    CHECK(gpus == 1, "the fake has 1 GPU by default, got %d", gpus);
    int samples = add(e, aipm_add_nvml_channel(e, 0, AIPM_NVML_POWER_SAMPLES, 5000000), "power samples");
    for (int kind = AIPM_NVML_POWER_INSTANT; kind <= AIPM_NVML_POWER_AVERAGE; kind++)
        add(e, aipm_add_nvml_channel(e, 0, kind, 5000000), "nvml channel");
    CHECK(aipm_add_nvml_channel(e, 5, AIPM_NVML_ENERGY, 1000000) == AIPM_EARG, "GPU 5 is no device");

    aipm_sampler_stats s;
    aipm_sampler_stats_get(e, &s);
    struct stats_reader r = {.e = e, .n_channels = s.n_channels};
    pthread_create(&r.thread, NULL, stats_main, &r);

    CHECK(aipm_start(e) == AIPM_OK, "start: %s", aipm_last_error(e));
    CHECK(aipm_start(e) == AIPM_ESTATE, "a second start is refused");
    aipm_set_record_unchanged(e, 1); /* flipped while the sampler runs */
    aipm_record out[100];
    size_t drained = 0, n_text = 0, n_samples = 0, final_text = 0;
    int64_t last_lateness_t = 0;
    int64_t stop_at = aipm_now_ns() + 400000000LL;
    for (int stopped = 0;;) {
        size_t n = aipm_drain(e, out, 100);
        for (size_t i = 0; i < n; i++) {
            CHECK(out[i].channel < s.n_channels, "record of channel %u", out[i].channel);
            if ((int)out[i].channel == text) {
                n_text++;
                final_text += (out[i].flags & AIPM_FLAG_FINAL) != 0;
            }
            if ((int)out[i].channel == samples) n_samples++;
            if ((int)out[i].channel == lateness) {
                CHECK(out[i].t_ns > last_lateness_t, "lateness records out of order");
                last_lateness_t = out[i].t_ns;
            }
        }
        drained += n;
        if (stopped && n == 0) break;
        if (!stopped && aipm_now_ns() >= stop_at) {
            CHECK(aipm_stop(e) == AIPM_OK, "stop");
            stopped = 1;
        }
        if (n < 100) sleep_ms(2);
    }
    atomic_store(&r.stop, 1);
    pthread_join(r.thread, NULL);
    atomic_store(&w.stop, 1);
    pthread_join(w.thread, NULL);

    aipm_sampler_stats_get(e, &s);
    CHECK(s.wakeups > 100, "wakeups %" PRIu64, s.wakeups);
    CHECK(s.overflows == 0, "overflows %" PRIu64 " while draining every 2 ms", s.overflows);
    CHECK(drained == s.records_written, "drained %zu of %" PRIu64, drained, s.records_written);
    CHECK(s.cpu_ns > 0, "cpu_ns %" PRId64, s.cpu_ns);
    CHECK(r.rounds > 10, "the stats reader ran %lu rounds", r.rounds);
    CHECK(n_text > 100 && final_text == 1, "text records %zu, final %zu", n_text, final_text);
    CHECK(n_samples >= 10, "power samples %zu (50 Hz for 0.4 s)", n_samples);
    for (uint32_t i = 0; i < s.n_channels; i++) {
        aipm_channel_stats c;
        aipm_channel_stats_get(e, i, &c);
        if ((int)i == lateness) continue;
        CHECK(c.reads > 0 && c.errors == 0, "channel %u: %" PRIu64 " reads, %" PRIu64 " errors (last %d, %d)",
              i, c.reads, c.errors, c.last_error_kind, c.last_error);
    }
    aipm_engine_free(e);
    close(w.fd);
}

/* A setup failure keeps its errno; a first pass slower than the limit fails the start. */
static void run_failures(const char *dir, const char *nvml) {
    aipm_engine *e = aipm_engine_new(8);
    char path[4096];
    snprintf(path, sizeof path, "%s/no_such_file", dir);
    CHECK(aipm_add_text_counter(e, path, 1e-6, 1000000) == AIPM_EOPEN, "missing file");
    CHECK(aipm_last_errno(e) == ENOENT, "errno %d, want ENOENT", aipm_last_errno(e));
    aipm_engine_free(e);

    /* each energy read takes 150 ms; the start may wait 30 ms */
    setenv("FAKE_NVML_CALL_US", "nvmlDeviceGetTotalEnergyConsumption:150000", 1);
    e = aipm_engine_new(8);
    add(e, aipm_nvml_open(e, nvml), "nvml open");
    add(e, aipm_add_nvml_channel(e, 0, AIPM_NVML_ENERGY, 1000000), "energy");
    aipm_set_first_pass_limit(e, 30000000);
    int rc = aipm_start(e);
    CHECK(rc == AIPM_ETIMEOUT, "start gave %d (%s), want AIPM_ETIMEOUT", rc, aipm_last_error(e));
    CHECK(strstr(aipm_last_error(e), "first pass") != NULL, "message: %s", aipm_last_error(e));
    CHECK(!aipm_running(e), "the sampler was stopped again");
    aipm_engine_free(e);
    unsetenv("FAKE_NVML_CALL_US");
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    if (fd < 0) return;
    size_t len = strlen(text);
    CHECK(write(fd, text, len) == (ssize_t)len, "write %s", path);
    close(fd);
}

/* Only digits and a trailing newline are a number; a FIFO is refused without blocking. */
static void run_hostile_files(const char *dir) {
    static const char *const bad[] = {"-5\n", "+5\n", " 5\n", "5 \n", "", "\n", "18446744073709551616\n",
                                      "000000000000000000001\n", "5\n5\n5\n5\n5\n5\n5\n5\n5\n5\n5\n5\n"};
    char path[4096];
    snprintf(path, sizeof path, "%s/hostile_uj", dir);
    aipm_engine *e = aipm_engine_new(8);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i]);
        int rc = aipm_add_text_counter(e, path, 1.0, 1000000);
        CHECK(rc == AIPM_EPARSE, "text %zu (\"%s\") gave %d, want AIPM_EPARSE", i, bad[i], rc);
    }
    write_file(path, "18446744073709551615\n");
    add(e, aipm_add_text_counter(e, path, 1.0, 1000000), "the largest counter value");
    snprintf(path, sizeof path, "%s/fifo_uj", dir);
    CHECK(mkfifo(path, 0644) == 0, "mkfifo %s: %s", path, strerror(errno));
    int rc = aipm_add_text_counter(e, path, 1.0, 1000000);
    CHECK(rc == AIPM_EOPEN && strstr(aipm_last_error(e), "a FIFO"), "FIFO gave %d (%s)", rc, aipm_last_error(e));
    aipm_engine_free(e);
}

/* A library's counts, strings and types are checked, never trusted. */
static void run_hostile_nvml(const char *nvml) {
    setenv("FAKE_NVML_FAULT", "oversized_samples,null_error_string,unterminated_name", 1);
    aipm_engine *e = aipm_engine_new(12);
    add(e, aipm_nvml_open(e, nvml), "nvml open");
    int samples = add(e, aipm_add_nvml_channel(e, 0, AIPM_NVML_POWER_SAMPLES, 5000000), "power samples");
    char name[16];
    CHECK(aipm_nvml_device_name(e, 0, name, sizeof name) == AIPM_OK && strlen(name) == sizeof name - 1,
          "an unterminated name is cut to the buffer");
    CHECK(strcmp(aipm_nvml_error_string(e, 15), "unknown NVML error") == 0, "NULL error string");
    CHECK(aipm_start(e) == AIPM_OK, "start: %s", aipm_last_error(e));
    sleep_ms(150);
    aipm_stop(e);
    aipm_record out[1024];
    size_t n = aipm_drain(e, out, 1024), mine = 0;
    for (size_t i = 0; i < n; i++) {
        if ((int)out[i].channel != samples) continue;
        mine++;
        CHECK(out[i].value == 100.0, "sample %zu is %g W, want the fake's 100 W", i, out[i].value);
    }
    CHECK(mine >= 3 && mine <= 512, "%zu samples", mine);
    aipm_engine_free(e);

    setenv("FAKE_NVML_FAULT", "bad_value_type", 1);
    e = aipm_engine_new(8);
    add(e, aipm_nvml_open(e, nvml), "nvml open");
    CHECK(aipm_add_nvml_channel(e, 0, AIPM_NVML_POWER_INSTANT, 5000000) == AIPM_ENVML, "an unknown field type");
    aipm_engine_free(e);
    unsetenv("FAKE_NVML_FAULT");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s WORK_DIR FAKE_NVML_SO\n", argv[0]);
        return 2;
    }
    run_engine(argv[1], argv[2]);
    run_failures(argv[1], argv[2]);
    run_hostile_files(argv[1]);
    run_hostile_nvml(argv[2]);
    if (failures) fprintf(stderr, "engine_driver: %d check(s) failed\n", failures);
    else printf("engine_driver: all checks passed\n");
    return failures ? 1 : 0;
}
