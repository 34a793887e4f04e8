/*
 * HTTP to the Lambda Cloud API with libcurl.
 *
 * Every answer is `{"data": …}` on success and `{"error": {"code", "message", "suggestion"}}` on
 * failure. Lambda's codes map to Capstan's error codes here, in one table, so the broker's
 * failover (capacity → next offer, auth → stop asking Lambda, rateLimited → wait) sees the
 * same meaning from every cloud.
 *
 * Retries: HTTP 429 (Lambda did not act on the request) is waited out and repeated, honouring
 * Retry-After when sent (else up to 1, 2, 4, 8 s), each wait drawn at random so that calls
 * refused together do not all come back together, for at most settings.max_rate_limit_wait seconds in
 * one call; then the call answers rateLimited with retryAfterSeconds. Network errors and 5xx are repeated (three
 * tries, backing off) only where repeating is safe: reads, or requests the caller marks safe.
 * A launch is never repeated after its bytes may have reached Lambda: the host finds what it
 * created by its intent tag instead.
 */
#define _GNU_SOURCE
#include "lambda.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BODY (32u << 20)

typedef struct buffer {
    char *data;
    size_t len;
    int overflow;
} buffer;

typedef struct answer {
    buffer body;
    double retry_after; /* from a Retry-After header, seconds; 0 when absent */
} answer;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
    buffer *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > MAX_BODY) {
        b->overflow = 1;
        return 0; /* aborts the transfer */
    }
    char *grown = realloc(b->data, b->len + n + 1);
    if (!grown) return 0;
    memcpy(grown + b->len, ptr, n);
    b->data = grown;
    b->len += n;
    b->data[b->len] = 0;
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata) {
    answer *a = userdata;
    size_t n = size * nmemb;
    if (n > 12 && strncasecmp(ptr, "Retry-After:", 12) == 0) {
        char value[64] = {0};
        size_t len = n - 12 < sizeof value - 1 ? n - 12 : sizeof value - 1;
        memcpy(value, ptr + 12, len);
        char *end = NULL;
        double seconds = strtod(value, &end);
        if (end != value && seconds >= 0) a->retry_after = seconds; /* an HTTP date is ignored: we back off instead */
    }
    return n;
}

static CURL *take_handle(lambda_plugin *p) {
    CURL *h = NULL;
    pthread_mutex_lock(&p->pool_lock);
    if (p->idle_count > 0) h = p->idle[--p->idle_count];
    pthread_mutex_unlock(&p->pool_lock);
    if (h) curl_easy_reset(h);
    else h = curl_easy_init();
    return h;
}

/* Keeps the handle (and its open connection) for the next call. */
static void give_handle(lambda_plugin *p, CURL *h) {
    pthread_mutex_lock(&p->pool_lock);
    if (p->idle_count < (int)(sizeof p->idle / sizeof p->idle[0])) {
        p->idle[p->idle_count++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&p->pool_lock);
    if (h) curl_easy_cleanup(h);
}

void lambda_http_release(lambda_plugin *p) {
    pthread_mutex_lock(&p->pool_lock);
    for (int i = 0; i < p->idle_count; i++) curl_easy_cleanup(p->idle[i]);
    p->idle_count = 0;
    pthread_mutex_unlock(&p->pool_lock);
}

static void sleep_seconds(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {}
}

/* A uniform number in [0, 1), per thread (rand_r on a seed from the clock and the thread). */
static double uniform(void) {
    static _Thread_local unsigned seed;
    static _Thread_local int seeded;
    if (!seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (unsigned)ts.tv_nsec ^ (unsigned)(uintptr_t)&seed;
        seeded = 1;
    }
    return (double)rand_r(&seed) / ((double)RAND_MAX + 1.0);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Lambda error code → Capstan code and what to do. */
static const char *map_code(const char *cloud_code, long status, const char **hint) {
    static const struct {
        const char *cloud, *code, *hint;
    } table[] = {
        {"global/invalid-api-key", "auth", "Check the Lambda Cloud API key (LAMBDA_API_KEY, ~/.lambda_cloud/lambda_keys or providers.lambda.apiKeyFile); create a new one at cloud.lambda.ai → API keys if it was deleted."},
        {"global/account-inactive", "auth", "The Lambda Cloud account is inactive: check billing at cloud.lambda.ai."},
        {"instance-operations/launch/insufficient-capacity", "capacity", "Capstan tries the next offer; `capstan offers --gpu …` shows where Lambda reports capacity."},
        {"global/quota-exceeded", "quota", "Raise the account's limit with Lambda support, or terminate instances (or SSH keys) you no longer need."},
        {"global/object-does-not-exist", "notFound", NULL},
        {"global/invalid-parameters", "invalidRequest", NULL},
        {"global/duplicate", "invalidRequest", NULL},
        {"instance-operations/launch/file-system-in-wrong-region", "invalidRequest", "Use a file system in the offer's region, or limit providers.lambda.regions to where the file system is."},
    };
    *hint = NULL;
    if (cloud_code)
        for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
            if (strcmp(cloud_code, table[i].cloud) == 0) {
                *hint = table[i].hint;
                return table[i].code;
            }
    if (status == 429) return "rateLimited";
    if (status == 401 || status == 403) {
        *hint = table[0].hint;
        return "auth";
    }
    if (status == 404) return "notFound";
    if (status >= 500) return "transient";
    return "invalidRequest";
}

/* Fills `err` from a non-2xx answer. */
static void map_error(long status, const answer *a, const char *what, lambda_error *err) {
    const char *cloud_code = NULL, *cloud_message = NULL, *suggestion = NULL;
    json_t *doc = a->body.data ? json_loads(a->body.data, 0, NULL) : NULL;
    json_t *e = doc ? json_object_get(doc, "error") : NULL;
    if (json_is_object(e)) {
        cloud_code = json_string_value(json_object_get(e, "code"));
        cloud_message = json_string_value(json_object_get(e, "message"));
        suggestion = json_string_value(json_object_get(e, "suggestion"));
    }
    const char *hint = NULL;
    const char *code = map_code(cloud_code, status, &hint);
    if (!hint) hint = suggestion;
    if (strcmp(code, "transient") == 0 && !hint) hint = "Lambda Cloud's API had a problem; try again in a minute.";
    if (cloud_message)
        lambda_fail(err, code, hint, "Lambda Cloud could not %s: %s", what, cloud_message);
    else
        lambda_fail(err, code, hint, "Lambda Cloud could not %s: HTTP %ld%s.", what, status,
                    a->body.len ? " with an answer that is not a Lambda error document" : "");
    err->cloud_code = lambda_strdup(cloud_code ? cloud_code : (status == 429 ? "HTTP 429" : NULL));
    err->cloud_message = lambda_strdup(cloud_message);
    if (status == 429) err->retry_after = a->retry_after > 0 ? a->retry_after : 1;
    json_decref(doc);
}

/* One HTTP exchange. Returns the status (0 on a network error, with `err` set). */
static long exchange(lambda_plugin *p, const char *method, const char *url, const char *body_text,
                     answer *a, int *maybe_sent, lambda_error *err) {
    CURL *h = take_handle(p);
    if (!h) {
        lambda_fail(err, "internal", NULL, "libcurl could not create a handle.");
        return 0;
    }
    struct curl_slist *headers = NULL;
    char *auth = lambda_sprintf("Authorization: Bearer %s", p->settings.api_key);
    headers = curl_slist_append(headers, auth);
    headers = curl_slist_append(headers, "Accept: application/json");
    if (body_text) headers = curl_slist_append(headers, "Content-Type: application/json");
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "capstan-lambda/" LAMBDA_PLUGIN_VERSION);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for timeouts */
    curl_easy_setopt(h, CURLOPT_TIMEOUT, p->settings.timeout_seconds);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, p->settings.timeout_seconds < 10 ? p->settings.timeout_seconds : 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* never send the key to another host */
    if (p->settings.ca_bundle) curl_easy_setopt(h, CURLOPT_CAINFO, p->settings.ca_bundle);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &a->body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
    if (strcmp(method, "GET") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body_text) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body_text);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body_text));
    }

    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    } else {
        /* Connection refused, DNS or TLS failures happen before anything is sent. */
        *maybe_sent = !(rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY ||
                        rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE);
        if (a->body.overflow)
            lambda_fail(err, "transient", NULL, "Lambda Cloud's answer was larger than %u MiB; it was refused.", MAX_BODY >> 20);
        else if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_CONNECT_ERROR)
            lambda_fail(err, "config", "Check providers.lambda.endpoint and caBundle.", "TLS to %s failed: %s.",
                        p->settings.endpoint, curl_easy_strerror(rc));
        else
            lambda_fail(err, "transient", "Check the network, or providers.lambda.endpoint.", "Cannot reach Lambda Cloud at %s: %s.",
                        p->settings.endpoint, curl_easy_strerror(rc));
    }
    curl_slist_free_all(headers);
    /* A handle whose transfer failed may hold a broken connection: do not pool it. */
    if (rc == CURLE_OK) give_handle(p, h);
    else curl_easy_cleanup(h);
    return status;
}

int lambda_request(lambda_plugin *p, const char *method, const char *path, json_t *body,
                   const char *what, int retry_unsafe, json_t **data, lambda_error *err) {
    *data = NULL;
    char *url = lambda_sprintf("%s%s", p->settings.endpoint, path);
    char *body_text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    int safe = strcmp(method, "GET") == 0 || retry_unsafe;
    double started = now_seconds();
    int failures = 0, limited = 0, rc = -1;
    for (;;) {
        answer a = {0};
        int maybe_sent = 0;
        long status = exchange(p, method, url, body_text, &a, &maybe_sent, err);
        if (status >= 200 && status < 300) {
            json_error_t jerr;
            json_t *doc = a.body.data ? json_loads(a.body.data, 0, &jerr) : NULL;
            json_t *d = doc ? json_object_get(doc, "data") : NULL;
            if (!d && !doc && a.body.len == 0 && (status == 204 || strcmp(method, "DELETE") == 0)) d = json_null(); /* no content */
            if (d) {
                *data = json_incref(d);
                lambda_error_clear(err); /* what an earlier try said no longer applies */
                rc = 0;
            } else {
                lambda_fail(err, "transient", "Try again; if it persists, Lambda's API may have changed: report it to the plugin's authors.",
                            "Lambda Cloud answered %s %s with HTTP %ld but no \"data\" document.", method, path, status);
            }
            json_decref(doc);
            free(a.body.data);
            break;
        }
        if (status == 429) {
            map_error(status, &a, what, err);
            /* Without Retry-After, back off: 1, 2, 4, 8 s (Lambda allows ~1 request/s, 1 launch/10 s).
             * Jitter: calls refused in the same instant (a burst of describes) would otherwise
             * retry in the same instant again, and only the bucket's burst would get through each
             * round. Retry-After is a minimum: up to a quarter more; a backoff is "full jitter",
             * anywhere up to its step (simulated against a token bucket: 6 concurrent callers
             * over a 12 s budget failed 1.9% of runs with half-to-full jitter, 0.09% with full). */
            double step = a.retry_after > 0 ? a.retry_after : (double)(1 << (limited < 3 ? limited : 3));
            double wait = a.retry_after > 0 ? step * (1.0 + 0.25 * uniform()) : 0.1 + step * uniform();
            err->retry_after = step; /* what the host is told if this call gives up: the whole step */
            limited++;
            free(a.body.data);
            double spent = now_seconds() - started;
            if (spent + wait > p->settings.max_rate_limit_wait) break; /* the host retries later */
            lambda_log(p, CAPSTAN_LOG_INFO, "lambda: %s %s rate-limited (HTTP 429); retrying in %.1f s", method, path, wait);
            sleep_seconds(wait);
            continue;
        }
        int retryable = status == 0 ? (safe || !maybe_sent) && strcmp(err->code, "transient") == 0 : (status >= 500 && safe);
        if (status != 0) map_error(status, &a, what, err);
        free(a.body.data);
        if (!retryable || ++failures >= 3) break;
        double backoff = 0.25 * (double)(1 << failures);
        lambda_log(p, CAPSTAN_LOG_DEBUG, "lambda: %s %s failed (%s); retry %d in %.2f s", method, path, err->message, failures, backoff);
        sleep_seconds(backoff);
    }
    free(url);
    free(body_text);
    return rc;
}
