/*
 * The Lambda Cloud plugin for Capstan: the ABI table and the invoke machinery.
 *
 * Threading: invoke copies its method and request into a queue and returns at once. Up to
 * LAMBDA_WORKERS worker threads per instance, started as calls arrive, take calls from the queue;
 * each call's completion is called exactly once, and is the last thing that touches the host's
 * call. destroy (the host guarantees no call is in flight) stops and joins the workers, so no
 * plugin thread outlives its instance. Long-lived workers also keep libcurl's and OpenSSL's
 * per-thread state for the life of the instance instead of rebuilding it per call.
 * Nothing here is ever unloaded (the host opens plugins with RTLD_NODELETE), so curl_global_init
 * runs once per process and is never undone.
 */
#define _GNU_SOURCE
#include "lambda.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- helpers ---------------------------------------------------------------------------------- */

char *lambda_strdup(const char *s) { return s ? strdup(s) : NULL; }

char *lambda_sprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0) out = NULL;
    va_end(ap);
    return out;
}

void lambda_strv_free(char **v) {
    if (!v) return;
    for (char **i = v; *i; i++) free(*i);
    free(v);
}

int lambda_strv_contains(char *const *v, const char *s) {
    if (!v || !s) return 0;
    for (; *v; v++)
        if (strcmp(*v, s) == 0) return 1;
    return 0;
}

void lambda_error_clear(lambda_error *e) {
    free(e->message);
    free(e->hint);
    free(e->cloud_code);
    free(e->cloud_message);
    memset(e, 0, sizeof *e);
}

int lambda_fail(lambda_error *e, const char *code, const char *hint, const char *fmt, ...) {
    lambda_error_clear(e);
    snprintf(e->code, sizeof e->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&e->message, fmt, ap) < 0) e->message = NULL;
    va_end(ap);
    e->hint = lambda_strdup(hint);
    return -1;
}

char *lambda_error_json(const lambda_error *e) {
    json_t *doc = json_object();
    json_object_set_new(doc, "code", json_string(e->code[0] ? e->code : "internal"));
    json_object_set_new(doc, "message", json_string(e->message ? e->message : "Lambda Cloud plugin error."));
    if (e->hint) json_object_set_new(doc, "hint", json_string(e->hint));
    if (e->cloud_code) json_object_set_new(doc, "cloudCode", json_string(e->cloud_code));
    if (e->cloud_message) json_object_set_new(doc, "cloudMessage", json_string(e->cloud_message));
    if (e->retry_after > 0) json_object_set_new(doc, "retryAfterSeconds", json_real(e->retry_after));
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return text;
}

void lambda_log(const lambda_plugin *p, int level, const char *fmt, ...) {
    if (!p || !p->host || !p->host->log) return;
    va_list ap;
    va_start(ap, fmt);
    char *line = NULL;
    if (vasprintf(&line, fmt, ap) >= 0 && line) p->host->log(p->host->host_ctx, level, line);
    va_end(ap);
    free(line);
}

/* ---- manifest ----------------------------------------------------------------------------------- */

static const char manifest[] =
    "{\"name\":\"lambda\",\"version\":\"" LAMBDA_PLUGIN_VERSION "\","
    "\"description\":\"Lambda Cloud on-demand GPU instances (a C plugin: libcurl + jansson)\","
    "\"capabilities\":[\"compute\"],\"offerCacheSeconds\":60,"
    "\"configSchema\":{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"apiKeyFile\":{\"type\":\"string\",\"description\":\"File holding the API key (a bare key, or api_key = KEY). "
    "Default: LAMBDA_API_KEY, then ~/.lambda_cloud/lambda_keys\"},"
    "\"endpoint\":{\"type\":\"string\",\"description\":\"API base URL (default " LAMBDA_DEFAULT_ENDPOINT ")\"},"
    "\"regions\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"description\":\"Regions to offer (default: all)\"},"
    "\"instanceTypes\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"description\":\"Instance type patterns, e.g. gpu_8x_*\"},"
    "\"sshKeyName\":{\"type\":\"string\",\"description\":\"An SSH key registered with Lambda, used when Capstan sends none\"},"
    "\"sshUser\":{\"type\":\"string\",\"description\":\"Login user (default ubuntu)\"},"
    "\"imageFamily\":{\"type\":\"string\"},\"imageId\":{\"type\":\"string\"},"
    "\"fileSystemNames\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"caBundle\":{\"type\":\"string\",\"description\":\"CA certificates file for TLS\"},"
    "\"timeoutSeconds\":{\"type\":\"number\",\"description\":\"One HTTP request (default 20)\"},"
    "\"maxRateLimitWaitSeconds\":{\"type\":\"number\",\"description\":\"Waiting out HTTP 429 inside one call (default 12)\"},"
    "\"allowInsecureHTTP\":{\"type\":\"boolean\",\"description\":\"Allow a plain http:// endpoint on another machine "
    "(default false: loopback only); the API key then crosses the network unencrypted\"}"
    "}}}";

static const char *manifest_json(void) { return manifest; }

/* ---- create / destroy ------------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_OK;
static void init_curl(void) { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

static int32_t create(const char *config_json, const capstan_host *host, void **out_handle, char **out_error_json) {
    lambda_error err = {0};
    *out_handle = NULL;
    pthread_once(&curl_once, init_curl);
    if (curl_init_result != CURLE_OK) {
        lambda_fail(&err, "internal", "Check the libcurl installation (libcurl4).", "libcurl failed to initialise: %s.",
                    curl_easy_strerror(curl_init_result));
        goto fail;
    }
    /* A newer host may append fields to capstan_host; it never shrinks the version-1 part. */
    if (host && host->struct_size < sizeof(capstan_host)) {
        lambda_fail(&err, "internal", "Rebuild the plugin against this Capstan's capstan_plugin.h.",
                    "The host's capstan_host is %u bytes, smaller than the %zu bytes of plugin ABI %u.",
                    host->struct_size, sizeof(capstan_host), CAPSTAN_PLUGIN_ABI_VERSION);
        goto fail;
    }
    lambda_plugin *p = calloc(1, sizeof *p);
    if (!p) {
        lambda_fail(&err, "internal", NULL, "Out of memory.");
        goto fail;
    }
    if (lambda_settings_parse(config_json, &p->settings, &err) != 0) {
        lambda_settings_free(&p->settings);
        free(p);
        goto fail;
    }
    p->host = host;
    pthread_mutex_init(&p->queue_lock, NULL);
    pthread_cond_init(&p->queue_ready, NULL);
    pthread_mutex_init(&p->pool_lock, NULL);
    pthread_mutex_init(&p->key_lock, NULL);
    lambda_log(p, CAPSTAN_LOG_DEBUG, "lambda: endpoint %s, API key from %s", p->settings.endpoint, p->settings.api_key_source);
    *out_handle = p;
    return 0;
fail:
    if (out_error_json) *out_error_json = lambda_error_json(&err);
    lambda_error_clear(&err);
    return 1;
}

static void destroy(void *handle) {
    lambda_plugin *p = handle;
    if (!p) return;
    pthread_mutex_lock(&p->queue_lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->queue_ready);
    pthread_mutex_unlock(&p->queue_lock);
    for (int i = 0; i < p->worker_count; i++) pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->queue_ready);
    pthread_mutex_destroy(&p->queue_lock);
    lambda_http_release(p);
    pthread_mutex_destroy(&p->pool_lock);
    pthread_mutex_destroy(&p->key_lock);
    lambda_settings_free(&p->settings);
    free(p);
}

static void free_string(char *s) { free(s); }

/* ---- invoke ------------------------------------------------------------------------------------- */

typedef struct lambda_call {
    lambda_plugin *plugin;
    char *method;
    char *request;
    void *ctx;
    capstan_completion_fn completion;
    struct lambda_call *next;
} call;

static void call_free(call *c) {
    free(c->method);
    free(c->request);
    free(c);
}

/* Runs one method and answers exactly once. */
static void run_call(call *c) {
    lambda_error err = {0};
    json_t *result = NULL;
    json_error_t jerr;
    json_t *request = json_loads(c->request, 0, &jerr);
    if (!request || !json_is_object(request)) {
        lambda_fail(&err, "invalidRequest", "This is a bug in the host; report it.",
                    "The request for '%s' is not a JSON object (%s at line %d).", c->method,
                    request ? "not an object" : jerr.text, jerr.line);
    } else if (strcmp(c->method, "plugin.ping") == 0) {
        result = json_object();
    } else if (strcmp(c->method, "compute.offers") == 0) {
        result = lambda_offers(c->plugin, request, &err);
    } else if (strcmp(c->method, "compute.launch") == 0) {
        result = lambda_launch(c->plugin, request, &err);
    } else if (strcmp(c->method, "compute.describe") == 0) {
        result = lambda_describe(c->plugin, request, &err);
    } else if (strcmp(c->method, "compute.terminate") == 0) {
        result = lambda_terminate(c->plugin, request, &err);
    } else {
        lambda_fail(&err, "unsupported", "The Lambda plugin provides compute only.",
                    "The Lambda Cloud plugin does not implement '%s'.", c->method);
    }
    json_decref(request);

    char *text = NULL;
    int32_t status = CAPSTAN_STATUS_OK;
    if (result) {
        text = json_dumps(result, JSON_COMPACT);
        json_decref(result);
    }
    if (!text) {
        if (!err.message) lambda_fail(&err, "internal", NULL, "The Lambda plugin could not encode its answer to '%s'.", c->method);
        status = CAPSTAN_STATUS_ERROR;
        text = lambda_error_json(&err);
    }
    lambda_error_clear(&err);
    /* The host copies `text` before the completion returns. */
    c->completion(c->ctx, status, text ? text : "{\"code\":\"internal\",\"message\":\"out of memory\"}");
    free(text);
}

static void *worker(void *arg) {
    lambda_plugin *p = arg;
    pthread_mutex_lock(&p->queue_lock);
    for (;;) {
        while (!p->queue_head && !p->stopping) pthread_cond_wait(&p->queue_ready, &p->queue_lock);
        if (!p->queue_head) break; /* stopping, and nothing left */
        call *c = p->queue_head;
        p->queue_head = c->next;
        if (!p->queue_head) p->queue_tail = NULL;
        p->queued--;
        p->idle_workers--;
        pthread_mutex_unlock(&p->queue_lock);
        run_call(c);
        call_free(c);
        pthread_mutex_lock(&p->queue_lock);
        p->idle_workers++;
    }
    p->idle_workers--;
    pthread_mutex_unlock(&p->queue_lock);
    return NULL;
}

static void invoke(void *handle, const char *method, const char *request_json, void *call_ctx,
                   capstan_completion_fn completion, capstan_progress_fn progress) {
    (void)progress;
    lambda_plugin *p = handle;
    call *c = calloc(1, sizeof *c);
    if (c) {
        c->plugin = p;
        c->method = lambda_strdup(method ? method : "");
        c->request = lambda_strdup(request_json ? request_json : "{}");
        c->ctx = call_ctx;
        c->completion = completion;
    }
    if (!p || !c || !c->method || !c->request) {
        if (c) call_free(c);
        completion(call_ctx, CAPSTAN_STATUS_ERROR, p ? "{\"code\":\"internal\",\"message\":\"Lambda plugin: out of memory.\"}"
                                                     : "{\"code\":\"internal\",\"message\":\"Lambda plugin: invoke without an instance.\"}");
        return;
    }
    /* HTTP calls block: queue the call for a worker, starting one if all are busy. */
    pthread_mutex_lock(&p->queue_lock);
    if (p->queue_tail) p->queue_tail->next = c;
    else p->queue_head = c;
    p->queue_tail = c;
    p->queued++;
    if (p->queued > p->idle_workers && p->worker_count < LAMBDA_WORKERS) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 512 * 1024);
        if (pthread_create(&p->workers[p->worker_count], &attr, worker, p) == 0) {
            p->worker_count++;
            p->idle_workers++;
        }
        pthread_attr_destroy(&attr);
    }
    int served = p->worker_count > 0;
    if (!served) {
        /* No thread could be started: answer on the caller's thread rather than not at all. */
        p->queue_head = p->queue_tail = NULL;
        p->queued = 0;
    } else {
        pthread_cond_signal(&p->queue_ready);
    }
    pthread_mutex_unlock(&p->queue_lock);
    if (!served) {
        run_call(c);
        call_free(c);
    }
}

/* ---- the table -------------------------------------------------------------------------------- */

static const capstan_plugin table = {
    .abi_version = CAPSTAN_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(capstan_plugin),
    .name = "lambda",
    .manifest_json = manifest_json,
    .create = create,
    .invoke = invoke,
    .destroy = destroy,
    .free_string = free_string,
};

/* The one exported symbol (see CAPSTAN_PLUGIN_ENTRY_SYMBOL). */
EXPORT const capstan_plugin *capstan_plugin_entry(void);
const capstan_plugin *capstan_plugin_entry(void) { return &table; }
