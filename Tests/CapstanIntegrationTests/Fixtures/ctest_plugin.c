/* A C plugin whose misbehaviour is chosen at compile time (-DMODE=n), for the host's tests.
 * MODE 0: well-behaved; 1: malformed JSON result; 2: never calls back; 3: calls back twice;
 * 4: create fails with an error document; 5: manifest is not JSON; 6: entry returns NULL;
 * 7: error status with a body that is not an error document; 8: answers from another thread
 * (and destroy appends a line to $CTEST_DESTROY_MARKER if it runs on such a thread, inside a
 * completion: the host must never do that). -DDESTROY_LOG: every destroy appends a line to
 * $CTEST_DESTROY_LOG (to count that instances are destroyed at all).
 * -DABI=n and -DSIZE=n forge the table's version and size; -DNO_ENTRY exports no entry symbol.
 * -DPLUGIN_NAME='"x"' names it x (default ctest). Whenever it is loaded (dlopen runs its
 * constructor, before any Capstan check) it appends a line to $CTEST_LOAD_MARKER, if set: the
 * proof that a plugin Capstan should not have loaded never ran. The line names the file loaded
 * (tests in one process load other copies side by side). */
#define _GNU_SOURCE
#include "capstan_plugin.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MODE
#define MODE 0
#endif
#ifndef ABI
#define ABI CAPSTAN_PLUGIN_ABI_VERSION
#endif
#ifndef SIZE
#define SIZE sizeof(capstan_plugin)
#endif
#ifndef PLUGIN_NAME
#define PLUGIN_NAME "ctest"
#endif

__attribute__((constructor)) static void loaded(void) {
    const char *marker = getenv("CTEST_LOAD_MARKER");
    if (!marker || !*marker) return;
    FILE *f = fopen(marker, "a");
    if (f) {
        Dl_info info;
        const char *file = dladdr((void *)loaded, &info) && info.dli_fname ? info.dli_fname : "?";
        fprintf(f, "%s loaded in pid %d from %s\n", PLUGIN_NAME, (int)getpid(), file);
        fclose(f);
    }
}

static const char *manifest(void) {
    if (MODE == 5) return "{not json";
    return "{\"name\":\"" PLUGIN_NAME "\",\"version\":\"0.0.1\",\"capabilities\":[\"compute\"]}";
}

static int32_t create(const char *config, const capstan_host *host, void **out, char **err) {
    (void)config;
    if (MODE == 4) {
        *err = strdup("{\"code\":\"auth\",\"message\":\"ctest: the API key was rejected\",\"cloudCode\":\"global/invalid-api-key\"}");
        return 1;
    }
    if (host && host->log) host->log(host->host_ctx, CAPSTAN_LOG_INFO, "ctest instance created");
    *out = malloc(16);
    return 0;
}

struct later { void *ctx; capstan_completion_fn done; };
static __thread int answering;
static void *answer_later(void *arg) {
    struct later *l = arg;
    usleep(1000);
    answering = 1;
    l->done(l->ctx, CAPSTAN_STATUS_OK, "{\"offers\":[]}");
    answering = 0;
    free(l);
    return NULL;
}

static void invoke(void *h, const char *method, const char *req, void *ctx,
                   capstan_completion_fn done, capstan_progress_fn progress) {
    (void)h; (void)method; (void)req; (void)progress;
    switch (MODE) {
    case 1: done(ctx, CAPSTAN_STATUS_OK, "{\"offers\": [ {\"provider\": 12 "); break;
    case 2: break;
    case 3:
        done(ctx, CAPSTAN_STATUS_OK, "{\"offers\":[]}");
        done(ctx, CAPSTAN_STATUS_OK, "{\"offers\":[]}");
        break;
    case 7: done(ctx, CAPSTAN_STATUS_ERROR, "segfault"); break;
    case 8: {
        struct later *l = malloc(sizeof *l);
        l->ctx = ctx; l->done = done;
        pthread_t t;
        pthread_create(&t, NULL, answer_later, l);
        pthread_detach(t);
        break;
    }
    default: done(ctx, CAPSTAN_STATUS_OK, "{\"offers\":[]}");
    }
}

static void destroy(void *h) {
#ifdef DESTROY_LOG
    const char *log = getenv("CTEST_DESTROY_LOG");
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            fputs("destroyed\n", f);
            fclose(f);
        }
    }
#endif
    const char *marker = getenv("CTEST_DESTROY_MARKER");
    if (answering && marker) {
        FILE *f = fopen(marker, "a");
        if (f) {
            fputs("destroy ran inside a completion, on the plugin's answering thread\n", f);
            fclose(f);
        }
    }
    free(h);
}
static void free_string(char *s) { free(s); }

static const capstan_plugin table = {
    ABI, SIZE, PLUGIN_NAME, manifest, create, invoke, destroy, free_string,
};

#ifdef NO_ENTRY
const capstan_plugin *some_other_symbol(void) { return &table; }
#else
const capstan_plugin *capstan_plugin_entry(void) { return MODE == 6 ? NULL : &table; }
#endif
