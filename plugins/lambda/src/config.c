/*
 * providers.lambda settings, and the API key.
 *
 * The key is looked up in this order: the file named by apiKeyFile, the LAMBDA_API_KEY
 * environment variable, ~/.lambda_cloud/lambda_keys (the file Lambda's own tools write). A key
 * file holds the bare key, or a line `api_key = KEY`. The key itself never appears in a log line
 * or an error message: messages name where it came from, never what it is.
 */
#define _GNU_SOURCE
#include "lambda.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static const char *const known_keys[] = {
    "apiKeyFile", "endpoint", "regions", "instanceTypes", "sshKeyName", "sshUser", "imageFamily", "imageId",
    "fileSystemNames", "caBundle", "timeoutSeconds", "maxRateLimitWaitSeconds", "allowInsecureHTTP", NULL,
};

static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40) return 99;
    int d[41][41];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
            int best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best) best = d[i - 1][j - 1] + cost;
            d[i][j] = best;
        }
    return d[la][lb];
}

static int string_setting(json_t *cfg, const char *key, char **out, lambda_error *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return lambda_fail(err, "config", "See `capstan plugins inspect lambda` for the settings.",
                           "providers.lambda.%s must be a non-empty string.", key);
    *out = strdup(json_string_value(v));
    return 0;
}

/* A path setting: a leading ~/ is the home folder, as in the rest of config.yaml. */
static int path_setting(json_t *cfg, const char *key, char **out, lambda_error *err) {
    if (string_setting(cfg, key, out, err) != 0 || !*out) return err->message ? -1 : 0;
    const char *home = getenv("HOME");
    if (strncmp(*out, "~/", 2) == 0 && home) {
        char *full = lambda_sprintf("%s/%s", home, *out + 2);
        free(*out);
        *out = full;
    }
    return 0;
}

static int list_setting(json_t *cfg, const char *key, char ***out, lambda_error *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v))
        return lambda_fail(err, "config", "Write it as a YAML list, e.g. [a, b].", "providers.lambda.%s must be a list of strings.", key);
    size_t n = json_array_size(v);
    char **list = calloc(n + 1, sizeof *list);
    if (!list) return lambda_fail(err, "internal", NULL, "Out of memory.");
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);
        if (!json_is_string(item) || json_string_length(item) == 0) {
            lambda_strv_free(list);
            return lambda_fail(err, "config", "Write it as a YAML list of names.", "providers.lambda.%s[%zu] must be a non-empty string.", key, i);
        }
        list[i] = strdup(json_string_value(item));
    }
    *out = list;
    return 0;
}

static int bool_setting(json_t *cfg, const char *key, int *out, lambda_error *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return lambda_fail(err, "config", NULL, "providers.lambda.%s must be true or false.", key);
    *out = json_is_true(v);
    return 0;
}

int lambda_host_is_loopback(const char *host) {
    char h[256];
    size_t n = strlen(host);
    if (n == 0 || n >= sizeof h) return 0;
    memcpy(h, host, n + 1);
    if (h[0] == '[' && h[n - 1] == ']') {
        memmove(h, h + 1, n - 2);
        h[n -= 2] = 0;
    }
    if (n > 1 && h[n - 1] == '.') h[--n] = 0;
    if (strcasecmp(h, "localhost") == 0 || strcmp(h, "::1") == 0 || strcmp(h, "0:0:0:0:0:0:0:1") == 0) return 1;
    /* 127.a.b.c, four decimal octets */
    int octets = 0, first = -1;
    const char *p = h;
    while (*p) {
        int value = 0, digits = 0;
        while (isdigit((unsigned char)*p) && digits < 4) value = value * 10 + (*p++ - '0'), digits++;
        if (digits == 0 || digits > 3 || value > 255) return 0;
        if (octets == 0) first = value;
        octets++;
        if (*p == '.') p++;
        else if (*p) return 0;
    }
    return octets == 4 && h[n - 1] != '.' && first == 127;
}

/* The host of an http(s) URL (no userinfo, no port), into OUT; 0 when there is none. */
static int url_host(const char *url, char *out, size_t size) {
    const char *start = strstr(url, "://");
    if (!start) return 0;
    start += 3;
    size_t len = strcspn(start, "/?#");
    const char *at = memchr(start, '@', len);
    if (at) {
        len -= (size_t)(at + 1 - start);
        start = at + 1;
    }
    if (len > 0 && start[0] == '[') {
        const char *close = memchr(start, ']', len);
        if (!close) return 0;
        len = (size_t)(close + 1 - start);
    } else {
        const char *colon = memchr(start, ':', len);
        if (colon) len = (size_t)(colon - start);
    }
    if (len == 0 || len >= size) return 0;
    memcpy(out, start, len);
    out[len] = 0;
    return 1;
}

static int number_setting(json_t *cfg, const char *key, double min, double max, double *out, lambda_error *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v) || json_number_value(v) < min || json_number_value(v) > max)
        return lambda_fail(err, "config", NULL, "providers.lambda.%s must be a number from %g to %g.", key, min, max);
    *out = json_number_value(v);
    return 0;
}

/* Reads a key file: a bare key, or `api_key = KEY` / `api_key: KEY`. Returns a new string or NULL
 * with `err` set. Never quotes the file's content. */
static char *read_key_file(const char *path, lambda_error *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        lambda_fail(err, "auth", "Point providers.lambda.apiKeyFile at a readable file holding the key, or set LAMBDA_API_KEY.",
                    "Cannot read the Lambda Cloud API key file %s: %s.", path, strerror(errno));
        return NULL;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *key = NULL;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (isspace((unsigned char)*line)) line++;
        if (*line == '#' || *line == 0) continue;
        char *value = line;
        if (strncmp(line, "api_key", 7) == 0) {
            value = line + 7;
            while (isspace((unsigned char)*value)) value++;
            if (*value != '=' && *value != ':') continue;
            value++;
            while (isspace((unsigned char)*value)) value++;
        } else if (strchr(line, '=') || strchr(line, ':')) {
            continue; /* another setting */
        }
        char *end = value + strlen(value);
        while (end > value && isspace((unsigned char)end[-1])) *--end = 0;
        if (*value) {
            key = strdup(value);
            break;
        }
    }
    if (!key) {
        lambda_fail(err, "auth", "Write the key into the file, alone or as `api_key = KEY`.",
                    "The Lambda Cloud API key file %s holds no key.", path);
        return NULL;
    }
    return key;
}

static int valid_key(const char *key) {
    if (strlen(key) < 8) return 0;
    for (const char *c = key; *c; c++)
        if (!isgraph((unsigned char)*c)) return 0;
    return 1;
}

int lambda_settings_parse(const char *config_json, lambda_settings *s, lambda_error *err) {
    memset(s, 0, sizeof *s);
    s->timeout_seconds = 20;
    s->max_rate_limit_wait = 12;
    json_error_t jerr;
    json_t *cfg = json_loads(config_json && *config_json ? config_json : "{}", 0, &jerr);
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return lambda_fail(err, "config", "Make providers.lambda a mapping of settings.", "providers.lambda is not a mapping.");
    }
    int rc = -1;
    const char *key;
    json_t *value;
    json_object_foreach(cfg, key, value) {
        if (lambda_strv_contains((char *const *)known_keys, key)) continue;
        const char *best = NULL;
        int best_d = 3;
        for (const char *const *k = known_keys; *k; k++) {
            int d = edit_distance(key, *k);
            if (d < best_d) best_d = d, best = *k;
        }
        char *hint = best ? lambda_sprintf("Did you mean providers.lambda.%s?", best)
                          : lambda_strdup("Settings: apiKeyFile, endpoint, regions, instanceTypes, sshKeyName, sshUser, imageFamily, "
                                          "imageId, fileSystemNames, caBundle, timeoutSeconds, maxRateLimitWaitSeconds, "
                                          "allowInsecureHTTP.");
        lambda_fail(err, "config", hint, "providers.lambda.%s is not a setting of the Lambda Cloud plugin.", key);
        free(hint);
        goto out;
    }
    char *key_file = NULL;
    double timeout = (double)s->timeout_seconds;
    if (string_setting(cfg, "endpoint", &s->endpoint, err) || string_setting(cfg, "sshKeyName", &s->ssh_key_name, err) ||
        string_setting(cfg, "sshUser", &s->ssh_user, err) || string_setting(cfg, "imageFamily", &s->image_family, err) ||
        string_setting(cfg, "imageId", &s->image_id, err) || path_setting(cfg, "caBundle", &s->ca_bundle, err) ||
        path_setting(cfg, "apiKeyFile", &key_file, err) || list_setting(cfg, "regions", &s->regions, err) ||
        list_setting(cfg, "instanceTypes", &s->instance_types, err) ||
        list_setting(cfg, "fileSystemNames", &s->file_system_names, err) ||
        number_setting(cfg, "timeoutSeconds", 1, 600, &timeout, err) ||
        number_setting(cfg, "maxRateLimitWaitSeconds", 0, 600, &s->max_rate_limit_wait, err) ||
        bool_setting(cfg, "allowInsecureHTTP", &s->allow_insecure_http, err)) {
        free(key_file);
        goto out;
    }
    s->timeout_seconds = (long)timeout;
    if (s->image_family && s->image_id) {
        free(key_file);
        lambda_fail(err, "config", "Keep one of them.", "providers.lambda.imageFamily and imageId exclude each other.");
        goto out;
    }
    if (!s->endpoint) s->endpoint = strdup(LAMBDA_DEFAULT_ENDPOINT);
    size_t len = strlen(s->endpoint);
    while (len > 0 && s->endpoint[len - 1] == '/') s->endpoint[--len] = 0;
    if (strncmp(s->endpoint, "https://", 8) != 0 && strncmp(s->endpoint, "http://", 7) != 0) {
        free(key_file);
        lambda_fail(err, "config", "Use the API's base URL, e.g. " LAMBDA_DEFAULT_ENDPOINT ".",
                    "providers.lambda.endpoint '%s' is not an http(s) URL.", s->endpoint);
        goto out;
    }
    /* Every request carries the API key in its Authorization header: plain HTTP only where the
     * traffic never leaves this machine, unless the user says otherwise. */
    if (strncmp(s->endpoint, "http://", 7) == 0 && !s->allow_insecure_http) {
        char host[256];
        if (!url_host(s->endpoint, host, sizeof host)) {
            free(key_file);
            lambda_fail(err, "config", "Use the API's base URL, e.g. " LAMBDA_DEFAULT_ENDPOINT ".",
                        "providers.lambda.endpoint has no host name.");
            goto out;
        }
        if (!lambda_host_is_loopback(host)) {
            free(key_file);
            lambda_fail(err, "config",
                        "Use https:// (e.g. " LAMBDA_DEFAULT_ENDPOINT "), or, only on a network you trust, set "
                        "providers.lambda.allowInsecureHTTP: true.",
                        "providers.lambda.endpoint is plain HTTP to %s, another machine: every request would send the "
                        "Lambda Cloud API key unencrypted (in its Authorization header).",
                        host);
            goto out;
        }
    }
    if (!s->ssh_user) s->ssh_user = strdup("ubuntu");

    /* The API key. */
    const char *env = getenv("LAMBDA_API_KEY");
    if (key_file) {
        s->api_key = read_key_file(key_file, err);
        s->api_key_source = key_file;
        key_file = NULL;
        if (!s->api_key) goto out;
    } else if (env && *env) {
        s->api_key = strdup(env);
        s->api_key_source = strdup("LAMBDA_API_KEY");
    } else {
        const char *home = getenv("HOME");
        char *path = lambda_sprintf("%s/.lambda_cloud/lambda_keys", home ? home : "");
        struct stat st;
        if (home && path && stat(path, &st) == 0) {
            s->api_key = read_key_file(path, err);
            s->api_key_source = path;
            if (!s->api_key) goto out;
        } else {
            free(path);
            lambda_fail(err, "auth",
                        "Set LAMBDA_API_KEY, write `api_key = KEY` into ~/.lambda_cloud/lambda_keys, or point "
                        "providers.lambda.apiKeyFile at a file holding it (create keys at cloud.lambda.ai → API keys). "
                        "To stop using Lambda, set providers.lambda.enabled: false.",
                        "No Lambda Cloud API key found.");
            goto out;
        }
    }
    if (!valid_key(s->api_key)) {
        lambda_fail(err, "auth", "Copy the key again from cloud.lambda.ai → API keys.",
                    "The Lambda Cloud API key from %s is malformed (too short, or it contains spaces or control characters).",
                    s->api_key_source);
        goto out;
    }
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

void lambda_settings_free(lambda_settings *s) {
    free(s->endpoint);
    if (s->api_key) {
        /* Do not leave the secret in freed memory. */
        volatile char *k = s->api_key;
        while (*k) *k++ = 0;
        free(s->api_key);
    }
    free(s->api_key_source);
    lambda_strv_free(s->regions);
    lambda_strv_free(s->instance_types);
    free(s->ssh_key_name);
    free(s->ssh_user);
    free(s->image_family);
    free(s->image_id);
    lambda_strv_free(s->file_system_names);
    free(s->ca_bundle);
    memset(s, 0, sizeof *s);
}
