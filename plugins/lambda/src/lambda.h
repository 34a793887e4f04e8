/*
 * The Lambda Cloud plugin's internal interface. Nothing here crosses the plugin boundary: the
 * host sees only capstan_plugin_entry() (plugin.c) and JSON.
 *
 * Files:
 *   plugin.c   the ABI table, manifest, create/destroy, one worker thread per invoke
 *   config.c   providers.lambda settings and the API key (never logged, never in an error)
 *   http.c     libcurl requests with auth, retries on 429/5xx, Lambda error → Capstan error
 *   compute.c  compute.offers / launch / describe / terminate, SSH key registration
 */
#ifndef CAPSTAN_LAMBDA_H
#define CAPSTAN_LAMBDA_H

#include "capstan_plugin.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>

#define LAMBDA_PLUGIN_VERSION "0.1.0"
#define LAMBDA_DEFAULT_ENDPOINT "https://cloud.lambda.ai/api/v1"

/* ---- errors ---------------------------------------------------------------------------------
 * A Capstan error document in the making. `code` is one of the ABI's codes (capacity, quota,
 * auth, rateLimited, invalidRequest, notFound, transient, unsupported, config, internal). */
typedef struct lambda_error {
    char code[32];
    char *message;       /* what happened, to what */
    char *hint;          /* what to do; may be NULL */
    char *cloud_code;    /* Lambda's own code, e.g. instance-operations/launch/insufficient-capacity */
    char *cloud_message; /* Lambda's own message */
    double retry_after;  /* seconds, with rateLimited; 0 when unknown */
} lambda_error;

/* Sets `e` (replacing what it held); printf-style message. Returns -1 for `return lambda_fail(…)`. */
int lambda_fail(lambda_error *e, const char *code, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void lambda_error_clear(lambda_error *e);
/* The error as the ABI's JSON document; the caller frees it with free(). */
char *lambda_error_json(const lambda_error *e);

/* ---- settings -------------------------------------------------------------------------------- */
typedef struct lambda_settings {
    char *endpoint;          /* base URL up to /api/v1, no trailing slash */
    char *api_key;           /* secret: only ever put into the Authorization header */
    char *api_key_source;    /* where it came from, for messages ("LAMBDA_API_KEY", a path) */
    char **regions;          /* NULL-terminated; NULL = every region the API reports */
    char **instance_types;   /* NULL-terminated fnmatch patterns; NULL = every GPU type */
    char *ssh_key_name;      /* a key already registered with Lambda, used when the host sends none */
    char *ssh_user;          /* login user on the images (default ubuntu) */
    char *image_family;      /* launch image; NULL = Lambda's default (Lambda Stack) */
    char *image_id;
    char **file_system_names;
    char *ca_bundle;         /* CA file for TLS (a private endpoint) */
    long timeout_seconds;    /* one HTTP request */
    double max_rate_limit_wait; /* seconds a call may spend waiting out 429s before it answers rateLimited */
    int allow_insecure_http; /* plain http:// to another machine allowed (default: loopback only) */
} lambda_settings;

/* Whether HOST (no port; brackets around an IPv6 address allowed) is this machine: localhost,
 * 127.0.0.0/8 or ::1. */
int lambda_host_is_loopback(const char *host);

int lambda_settings_parse(const char *config_json, lambda_settings *out, lambda_error *err);
void lambda_settings_free(lambda_settings *s);

/* ---- the instance (one per create) ------------------------------------------------------------ */
#define LAMBDA_WORKERS 8 /* calls served at once per instance; more wait in the queue */

struct lambda_call;

typedef struct lambda_plugin {
    lambda_settings settings;
    const capstan_host *host;
    /* The call queue and its workers, started on demand and joined by destroy. */
    pthread_mutex_t queue_lock;
    pthread_cond_t queue_ready;
    struct lambda_call *queue_head, *queue_tail;
    pthread_t workers[LAMBDA_WORKERS];
    int worker_count, idle_workers, queued, stopping;
    pthread_mutex_t pool_lock;  /* guards the idle curl handles (keep-alive connections) */
    CURL *idle[8];
    int idle_count;
    pthread_mutex_t key_lock;   /* one SSH key registration at a time */
} lambda_plugin;

void lambda_log(const lambda_plugin *p, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- HTTP ----------------------------------------------------------------------------------- */
/* Calls METHOD path (relative to the endpoint) with an optional JSON body; on a 2xx answer sets
 * *data to the envelope's "data" (a new reference) and returns 0. Otherwise fills `err` with the
 * mapped error and returns -1. `what` names the operation for messages ("launch gpu_1x_a10 in
 * us-east-1"). `retry_unsafe`: whether a request that may have reached Lambda (network error
 * after sending) may be repeated; 429 is always retried, as Lambda did not act on it. */
int lambda_request(lambda_plugin *p, const char *method, const char *path, json_t *body,
                   const char *what, int retry_unsafe, json_t **data, lambda_error *err);
void lambda_http_release(lambda_plugin *p);

/* ---- compute methods (compute.c) -----------------------------------------------------------
 * Each takes the parsed request and returns the result document (a new reference), or NULL with
 * `err` filled. */
json_t *lambda_offers(lambda_plugin *p, json_t *request, lambda_error *err);
json_t *lambda_launch(lambda_plugin *p, json_t *request, lambda_error *err);
json_t *lambda_describe(lambda_plugin *p, json_t *request, lambda_error *err);
json_t *lambda_terminate(lambda_plugin *p, json_t *request, lambda_error *err);

/* ---- small helpers ---------------------------------------------------------------------------- */
char *lambda_strdup(const char *s);                 /* NULL-safe strdup */
char *lambda_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void lambda_strv_free(char **v);
int lambda_strv_contains(char *const *v, const char *s);

#endif /* CAPSTAN_LAMBDA_H */
