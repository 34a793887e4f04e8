/*
 * compute.* methods on the Lambda Cloud API (reference: docs/plugins/lambda.md).
 *
 *   compute.offers     GET  /instance-types (+ GET /images for the full region list): one offer
 *                      per instance type and region; a region listed in
 *                      regions_with_capacity_available is "available", any other region
 *                      "unavailable" (so `capstan offers --explain` can say why).
 *   compute.launch     POST /instance-operations/launch, after finding the request's intent tag
 *                      on a live instance (Lambda has no idempotency token) and registering the
 *                      SSH key (POST /ssh-keys) if Lambda does not have it yet.
 *   compute.describe   GET  /instances (+ GET /instances/{id} for ids the list no longer shows).
 *   compute.terminate  POST /instance-operations/terminate for the live ones; a gone id is not an
 *                      error. Then DELETE /ssh-keys/{id} for capstan-* keys no live instance uses.
 *
 * Lambda statuses map to Capstan's: booting → pending, active → running, unhealthy → failed,
 * terminating → terminating, terminated → terminated, preempted → preempted.
 */
#define _GNU_SOURCE
#include "lambda.h"

#include <ctype.h>
#include <fnmatch.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INTENT_TAG "capstan:intent"

/* ---- mapping ---------------------------------------------------------------------------------- */

static const char *capstan_state(const char *status) {
    static const char *const map[][2] = {
        {"booting", "pending"},         {"active", "running"},       {"unhealthy", "failed"},
        {"terminating", "terminating"}, {"terminated", "terminated"}, {"preempted", "preempted"},
    };
    if (status)
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcmp(status, map[i][0]) == 0) return map[i][1];
    return "unknown";
}

static int is_gone(const char *state) { return strcmp(state, "terminated") == 0 || strcmp(state, "preempted") == 0; }

static const char *str(json_t *obj, const char *key) { return json_string_value(json_object_get(obj, key)); }

/* Lambda's tags, `[{key, value}]` (or an object), as a Capstan tag object. */
static json_t *tags_of(json_t *instance) {
    json_t *out = json_object();
    json_t *tags = json_object_get(instance, "tags");
    size_t i;
    json_t *t;
    if (json_is_array(tags)) {
        json_array_foreach(tags, i, t) {
            const char *k = str(t, "key"), *v = str(t, "value");
            if (k) json_object_set_new(out, k, json_string(v ? v : ""));
        }
    } else if (json_is_object(tags)) {
        const char *k;
        json_object_foreach(tags, k, t) if (json_is_string(t)) json_object_set(out, k, t);
    }
    return out;
}

/* A Lambda Instance object → a Capstan Instance. */
static json_t *instance_json(lambda_plugin *p, json_t *li) {
    const char *status = str(li, "status");
    const char *state = capstan_state(status);
    json_t *type = json_object_get(li, "instance_type");
    json_t *region = json_object_get(li, "region");
    json_t *out = json_object();
    json_object_set_new(out, "id", json_string(str(li, "id") ? str(li, "id") : "?"));
    json_object_set_new(out, "provider", json_string("lambda"));
    json_object_set_new(out, "instanceType", json_string(str(type, "name") ? str(type, "name") : "?"));
    json_object_set_new(out, "region", json_string(str(region, "name") ? str(region, "name") : "?"));
    json_object_set_new(out, "state", json_string(state));
    if (status) json_object_set_new(out, "providerState", json_string(status));
    if (str(li, "private_ip")) json_object_set_new(out, "privateAddress", json_string(str(li, "private_ip")));
    if (str(li, "ip")) json_object_set_new(out, "publicAddress", json_string(str(li, "ip")));
    json_object_set_new(out, "sshPort", json_integer(22));
    json_object_set_new(out, "sshUser", json_string(p->settings.ssh_user));
    json_object_set_new(out, "spot", json_false());
    json_t *cents = json_object_get(type, "price_cents_per_hour");
    if (json_is_number(cents)) json_object_set_new(out, "pricePerHour", json_real(json_number_value(cents) / 100.0));
    json_object_set_new(out, "tags", tags_of(li));
    if (status && strcmp(status, "unhealthy") == 0)
        json_object_set_new(out, "stateReason", json_string("Lambda reports the instance unhealthy"));
    json_t *details = json_object();
    const char *keys[][2] = {{"name", "name"}, {"hostname", "hostname"}, {"jupyter_url", "jupyterURL"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (str(li, keys[i][0])) json_object_set_new(details, keys[i][1], json_string(str(li, keys[i][0])));
    json_object_set_new(out, "details", details);
    return out;
}

/* An instance Lambda no longer knows: terminate and describe report it gone. */
static json_t *gone_instance(lambda_plugin *p, const char *id) {
    json_t *out = json_object();
    json_object_set_new(out, "id", json_string(id));
    json_object_set_new(out, "provider", json_string("lambda"));
    json_object_set_new(out, "instanceType", json_string("?"));
    json_object_set_new(out, "region", json_string("?"));
    json_object_set_new(out, "state", json_string("terminated"));
    json_object_set_new(out, "providerState", json_string("not-found"));
    json_object_set_new(out, "sshUser", json_string(p->settings.ssh_user));
    json_object_set_new(out, "spot", json_false());
    json_object_set_new(out, "tags", json_object());
    json_object_set_new(out, "details", json_object());
    return out;
}

static int list_instances(lambda_plugin *p, json_t **out, lambda_error *err) {
    json_t *data = NULL;
    if (lambda_request(p, "GET", "/instances", NULL, "list instances", 1, &data, err) != 0) return -1;
    if (!json_is_array(data)) {
        json_decref(data);
        return lambda_fail(err, "transient", "Report it to the plugin's authors if it persists.", "Lambda Cloud's instance list is not a list.");
    }
    *out = data;
    return 0;
}

static json_t *find_by_id(json_t *list, const char *id) {
    size_t i;
    json_t *li;
    json_array_foreach(list, i, li) {
        const char *lid = str(li, "id");
        if (lid && strcmp(lid, id) == 0) return li;
    }
    return NULL;
}

/* Where `s` is in an array of JSON strings, or -1. */
static long string_index(json_t *strings, const char *s) {
    size_t i;
    json_t *v;
    if (s) json_array_foreach(strings, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return (long)i;
    return -1;
}

static void append_unique(json_t *strings, const char *s) {
    if (s && string_index(strings, s) < 0) json_array_append_new(strings, json_string(s));
}

/* Capstan's tag object as Lambda's `[{key, value}]` (string values only). */
static json_t *tag_list(json_t *tags) {
    json_t *list = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(tags, k, v) {
        if (!json_is_string(v)) continue;
        json_t *t = json_object();
        json_object_set_new(t, "key", json_string(k));
        json_object_set(t, "value", v);
        json_array_append_new(list, t);
    }
    return list;
}

/* `prefix/<id>` with the id URL-escaped. */
static char *resource_path(const char *prefix, const char *id) {
    char *escaped = curl_easy_escape(NULL, id, 0);
    char *path = lambda_sprintf("%s/%s", prefix, escaped ? escaped : "");
    curl_free(escaped);
    return path;
}

static int tags_match(json_t *tags, json_t *wanted) {
    const char *k;
    json_t *v;
    json_object_foreach(wanted, k, v) {
        const char *have = str(tags, k);
        if (!have || !json_is_string(v) || strcmp(have, json_string_value(v)) != 0) return 0;
    }
    return 1;
}

static int region_wanted(lambda_plugin *p, json_t *request_regions, const char *region) {
    if (p->settings.regions && !lambda_strv_contains(p->settings.regions, region)) return 0;
    if (!json_is_array(request_regions) || json_array_size(request_regions) == 0) return 1;
    size_t i;
    json_t *r;
    json_array_foreach(request_regions, i, r) {
        const char *want = json_string_value(r);
        if (!want) continue;
        size_t n = strlen(want), m = strlen(region);
        if (strncmp(region, want, n < m ? n : m) == 0) return 1; /* equal, or one names the other's prefix */
    }
    return 0;
}

static int type_wanted(lambda_plugin *p, const char *name) {
    if (!p->settings.instance_types) return 1;
    for (char **pat = p->settings.instance_types; *pat; pat++)
        if (fnmatch(*pat, name, 0) == 0) return 1;
    return 0;
}

/* "H100 (80 GB SXM5)" → 81920. */
static long memory_mib(const char *description) {
    if (!description) return 0;
    const char *open = strchr(description, '(');
    if (!open) return 0;
    char *end = NULL;
    double gb = strtod(open + 1, &end);
    while (end && *end == ' ') end++;
    if (!end || gb <= 0 || (strncasecmp(end, "GB", 2) != 0)) return 0;
    return (long)(gb * 1024);
}

/* ---- compute.offers ------------------------------------------------------------------------------ */

json_t *lambda_offers(lambda_plugin *p, json_t *request, lambda_error *err) {
    json_t *data = NULL;
    if (lambda_request(p, "GET", "/instance-types", NULL, "list instance types", 1, &data, err) != 0) return NULL;
    if (!json_is_object(data)) {
        json_decref(data);
        lambda_fail(err, "transient", NULL, "Lambda Cloud's instance-type list is not a mapping.");
        return NULL;
    }
    /* Every region Lambda mentions, plus the configured ones, in first-seen order. */
    json_t *regions = json_array();
    const char *key;
    json_t *entry, *r;
    size_t i;
    if (p->settings.regions)
        for (char **c = p->settings.regions; *c; c++) json_array_append_new(regions, json_string(*c));
    json_object_foreach(data, key, entry) {
        json_array_foreach(json_object_get(entry, "regions_with_capacity_available"), i, r) append_unique(regions, str(r, "name"));
    }
    /* Regions with no capacity for any type appear in no list above: the images list names
     * every region (as gpuhunt reads it), so an empty cloud still shows what it lacks. */
    json_t *images = NULL;
    lambda_error ignored = {0};
    if (!p->settings.regions && lambda_request(p, "GET", "/images", NULL, "list images", 1, &images, &ignored) == 0) {
        json_t *img;
        json_array_foreach(images, i, img) append_unique(regions, str(json_object_get(img, "region"), "name"));
    }
    json_decref(images);
    lambda_error_clear(&ignored);
    json_t *request_regions = json_object_get(request, "regions");
    json_t *offers = json_array();
    json_object_foreach(data, key, entry) {
        json_t *type = json_object_get(entry, "instance_type");
        json_t *specs = json_object_get(type, "specs");
        const char *name = str(type, "name") ? str(type, "name") : key;
        json_int_t gpus = json_integer_value(json_object_get(specs, "gpus"));
        if (gpus <= 0 || !type_wanted(p, name)) continue;
        json_t *capacity = json_object_get(entry, "regions_with_capacity_available");
        const char *description = str(type, "gpu_description");
        json_t *cents = json_object_get(type, "price_cents_per_hour");
        size_t j;
        json_t *region;
        json_array_foreach(regions, j, region) {
            const char *rn = json_string_value(region);
            if (!region_wanted(p, request_regions, rn)) continue;
            int available = 0;
            json_array_foreach(capacity, i, r) available |= str(r, "name") && strcmp(str(r, "name"), rn) == 0;
            json_t *o = json_object();
            json_object_set_new(o, "provider", json_string("lambda"));
            json_object_set_new(o, "instanceType", json_string(name));
            json_object_set_new(o, "region", json_string(rn));
            json_object_set_new(o, "gpuName", json_string(description ? description : name));
            json_object_set_new(o, "gpusPerNode", json_integer(gpus));
            json_t *vcpus = json_object_get(specs, "vcpus"), *mem = json_object_get(specs, "memory_gib");
            if (json_is_integer(vcpus)) json_object_set(o, "vcpus", vcpus);
            if (json_is_number(mem)) json_object_set_new(o, "memoryGiB", json_real(json_number_value(mem)));
            if (json_is_number(cents)) json_object_set_new(o, "onDemandPricePerHour", json_real(json_number_value(cents) / 100.0));
            json_object_set_new(o, "availability", json_string(available ? "available" : "unavailable"));
            json_t *details = json_object();
            if (str(type, "description")) json_object_set_new(details, "description", json_string(str(type, "description")));
            long mib = memory_mib(description);
            if (mib > 0) {
                char buf[32];
                snprintf(buf, sizeof buf, "%ld", mib);
                json_object_set_new(details, "gpuMemoryMiB", json_string(buf));
            }
            json_t *storage = json_object_get(specs, "storage_gib");
            if (json_is_integer(storage)) {
                char buf[32];
                snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(storage));
                json_object_set_new(details, "storageGiB", json_string(buf));
            }
            json_object_set_new(o, "details", details);
            json_array_append_new(offers, o);
        }
    }
    json_decref(regions);
    json_decref(data);
    json_t *result = json_object();
    json_object_set_new(result, "offers", offers);
    return result;
}

/* ---- SSH keys ---------------------------------------------------------------------------------- */

/* "ssh-ed25519 AAAA… comment" → the first two fields, for comparing keys. */
static char *key_material(const char *line) {
    while (line && isspace((unsigned char)*line)) line++;
    if (!line || !*line) return NULL;
    const char *a = line;
    while (*a && !isspace((unsigned char)*a)) a++;
    while (*a && isspace((unsigned char)*a)) a++;
    const char *b = a;
    while (*b && !isspace((unsigned char)*b)) b++;
    if (b == a) return NULL;
    return strndup(line, (size_t)(b - line));
}

static char *find_key(json_t *keys, const char *material, const char *name) {
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) {
        const char *n = str(k, "name");
        if (!n) continue;
        if (name && strcmp(n, name) == 0) return strdup(n);
        char *m = key_material(str(k, "public_key"));
        int same = m && material && strcmp(m, material) == 0;
        free(m);
        if (same) return strdup(n);
    }
    return NULL;
}

/* The name under which Lambda knows `public_key`, registering it as capstan-<hash> if needed. */
static char *ensure_ssh_key(lambda_plugin *p, const char *public_key, lambda_error *err) {
    char *material = key_material(public_key);
    if (!material) {
        lambda_fail(err, "invalidRequest", "This is a bug in the host; report it.", "The SSH public key Capstan sent is not an OpenSSH key line.");
        return NULL;
    }
    /* FNV-1a of the key material: a stable, short name per key. */
    uint64_t h = 1469598103934665603ull;
    for (const char *c = material; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    char name[40];
    snprintf(name, sizeof name, "capstan-%016llx", (unsigned long long)h);

    char *found = NULL;
    json_t *keys = NULL;
    pthread_mutex_lock(&p->key_lock);
    if (lambda_request(p, "GET", "/ssh-keys", NULL, "list SSH keys", 1, &keys, err) != 0) goto out;
    found = find_key(keys, material, NULL);
    if (found) goto out;
    json_t *body = json_object();
    json_object_set_new(body, "name", json_string(name));
    json_object_set_new(body, "public_key", json_string(material));
    json_t *created = NULL;
    char *what = lambda_sprintf("register SSH key %s", name);
    int rc = lambda_request(p, "POST", "/ssh-keys", body, what, 0, &created, err);
    free(what);
    json_decref(body);
    if (rc == 0) {
        found = strdup(str(created, "name") ? str(created, "name") : name);
        lambda_log(p, CAPSTAN_LOG_INFO, "lambda: registered SSH key %s", found);
    } else if (err->cloud_code && strcmp(err->cloud_code, "global/duplicate") == 0) {
        /* Registered meanwhile by another capstan process. */
        json_decref(keys);
        keys = NULL;
        if (lambda_request(p, "GET", "/ssh-keys", NULL, "list SSH keys", 1, &keys, err) == 0) found = find_key(keys, material, name);
        if (found) lambda_error_clear(err);
    }
    json_decref(created);
out:
    pthread_mutex_unlock(&p->key_lock);
    json_decref(keys);
    free(material);
    return found;
}

/* ---- compute.launch ---------------------------------------------------------------------------- */

static int launch_once(lambda_plugin *p, json_t *body, json_int_t quantity, const char *what, json_t *ids, lambda_error *err) {
    if (quantity > 1) json_object_set_new(body, "quantity", json_integer(quantity));
    else json_object_del(body, "quantity");
    json_t *data = NULL;
    if (lambda_request(p, "POST", "/instance-operations/launch", body, what, 0, &data, err) != 0) return -1;
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(data, "instance_ids"), i, id) if (json_is_string(id)) json_array_append(ids, id);
    json_decref(data);
    return 0;
}

static json_t *terminate_ids(lambda_plugin *p, json_t *ids, lambda_error *err);

json_t *lambda_launch(lambda_plugin *p, json_t *request, lambda_error *err) {
    json_t *offer = json_object_get(request, "offer");
    const char *type = str(offer, "instanceType"), *region = str(offer, "region");
    const char *intent = str(request, "idempotencyKey");
    json_int_t count = json_integer_value(json_object_get(request, "count"));
    json_t *tags = json_object_get(request, "tags");
    const char *user_data = str(request, "userData");
    if (!type || !region || !intent || count < 1) {
        lambda_fail(err, "invalidRequest", "This is a bug in the host; report it.",
                    "A launch request needs offer.instanceType, offer.region, idempotencyKey and a count of at least 1.");
        return NULL;
    }
    if (json_is_true(json_object_get(request, "spot"))) {
        lambda_fail(err, "unsupported", "Lambda has on-demand capacity only; run without --spot-only.", "Lambda Cloud has no spot instances.");
        return NULL;
    }
    if (user_data && strlen(user_data) > 1024 * 1024) {
        lambda_fail(err, "invalidRequest", "Shorten the node's startup script.", "The user data is %zu bytes; Lambda accepts at most 1 MiB.", strlen(user_data));
        return NULL;
    }
    char *what = lambda_sprintf("launch %lld × %s in %s", (long long)count, type, region);
    json_t *result = NULL, *list = NULL, *ids = json_array(), *body = NULL;
    char *key_name = NULL;

    /* Lambda has no idempotency token: a repeated request (a retry, a crash between the call and
     * the state store) finds what the first one started by its intent tag. */
    if (list_instances(p, &list, err) != 0) goto out;
    size_t i;
    json_t *li;
    json_array_foreach(list, i, li) {
        json_t *t = tags_of(li);
        const char *have = str(t, INTENT_TAG);
        const char *state = capstan_state(str(li, "status"));
        if (have && strcmp(have, intent) == 0 && !is_gone(state) && strcmp(state, "terminating") != 0)
            json_array_append(ids, json_object_get(li, "id"));
        json_decref(t);
    }
    json_int_t missing = count - (json_int_t)json_array_size(ids);
    if (missing > 0) {
        const char *public_key = str(request, "sshPublicKey");
        if (public_key) key_name = ensure_ssh_key(p, public_key, err);
        else if (p->settings.ssh_key_name) key_name = strdup(p->settings.ssh_key_name);
        else lambda_fail(err, "config", "Set providers.lambda.sshKeyName to a key registered with Lambda, or let Capstan make one per cluster.",
                         "Lambda Cloud needs exactly one SSH key per launch, and none was given.");
        if (!key_name) goto out;

        body = json_object();
        json_object_set_new(body, "region_name", json_string(region));
        json_object_set_new(body, "instance_type_name", json_string(type));
        json_t *keys = json_array();
        json_array_append_new(keys, json_string(key_name));
        json_object_set_new(body, "ssh_key_names", keys);
        const char *name = str(request, "name");
        if (name) json_object_set_new(body, "name", json_stringn(name, strlen(name) > 64 ? 64 : strlen(name)));
        if (user_data) json_object_set_new(body, "user_data", json_string(user_data));
        if (p->settings.image_family || p->settings.image_id) {
            json_t *image = json_object();
            if (p->settings.image_family) json_object_set_new(image, "family", json_string(p->settings.image_family));
            else json_object_set_new(image, "id", json_string(p->settings.image_id));
            json_object_set_new(body, "image", image);
        }
        if (p->settings.file_system_names) {
            json_t *fs = json_array();
            for (char **f = p->settings.file_system_names; *f; f++) json_array_append_new(fs, json_string(*f));
            json_object_set_new(body, "file_system_names", fs);
        }
        json_object_set_new(body, "tags", tag_list(tags));

        json_t *started = json_array();
        /* One request for all nodes; where Lambda starts fewer (it may not honour quantity),
         * the rest are launched one at a time. */
        int rc = launch_once(p, body, missing, what, started, err);
        while (rc == 0 && (json_int_t)json_array_size(started) < missing) {
            size_t before = json_array_size(started);
            rc = launch_once(p, body, 1, what, started, err);
            if (rc == 0 && json_array_size(started) == before) {
                rc = lambda_fail(err, "transient", NULL, "Lambda Cloud accepted a launch of %s in %s but returned no instance id.", type, region);
            }
        }
        if (rc != 0 && json_array_size(started) > 0) {
            /* Part of a gang is no gang: stop what did start before answering. */
            lambda_error ignored = {0};
            json_t *stopped = terminate_ids(p, started, &ignored);
            json_decref(stopped);
            lambda_error_clear(&ignored);
            char *more = lambda_sprintf("%s (%zu of %lld instance(s) had started and were terminated)", err->message, json_array_size(started), (long long)missing);
            free(err->message);
            err->message = more;
        }
        json_array_extend(ids, started);
        json_decref(started);
        if (rc != 0) goto out;
        lambda_log(p, CAPSTAN_LOG_INFO, "lambda: launched %lld × %s in %s", (long long)missing, type, region);
    }

    /* Describe what runs now; an id the list does not show yet is reported booting. */
    json_decref(list);
    list = NULL;
    if (list_instances(p, &list, err) != 0) {
        lambda_error_clear(err);
        list = json_array();
    }
    json_t *instances = json_array();
    json_t *id;
    json_array_foreach(ids, i, id) {
        json_t *found = find_by_id(list, json_string_value(id));
        if (found) {
            json_array_append_new(instances, instance_json(p, found));
            continue;
        }
        json_t *booting = json_object();
        json_object_set(booting, "id", id);
        json_object_set_new(booting, "status", json_string("booting"));
        json_t *t = json_object(), *r = json_object();
        json_object_set_new(t, "name", json_string(type));
        json_object_set_new(booting, "instance_type", t);
        json_object_set_new(r, "name", json_string(region));
        json_object_set_new(booting, "region", r);
        json_object_set_new(booting, "tags", tag_list(tags));
        json_array_append_new(instances, instance_json(p, booting));
        json_decref(booting);
    }
    result = json_object();
    json_object_set_new(result, "instances", instances);
out:
    json_decref(body);
    json_decref(list);
    json_decref(ids);
    free(key_name);
    free(what);
    return result;
}

/* ---- compute.describe --------------------------------------------------------------------------- */

json_t *lambda_describe(lambda_plugin *p, json_t *request, lambda_error *err) {
    json_t *ids = json_object_get(request, "ids");
    json_t *wanted = json_object_get(request, "tags");
    int include_gone = json_is_true(json_object_get(request, "includeTerminated"));
    if (!json_is_object(wanted)) wanted = NULL;
    json_t *list = NULL;
    if (list_instances(p, &list, err) != 0) return NULL;
    json_t *instances = json_array();
    size_t i;
    json_t *li;
    json_array_foreach(list, i, li) {
        const char *id = str(li, "id");
        if (!id) continue;
        if (json_is_array(ids) && string_index(ids, id) < 0) continue;
        json_t *inst = instance_json(p, li);
        if ((!include_gone && is_gone(str(inst, "state"))) || (wanted && !tags_match(json_object_get(inst, "tags"), wanted))) {
            json_decref(inst);
            continue;
        }
        json_array_append_new(instances, inst);
    }
    /* Asked-for ids the list no longer shows: ask for each; Lambda forgets terminated ones. */
    if (json_is_array(ids) && include_gone) {
        json_t *w;
        json_array_foreach(ids, i, w) {
            const char *id = json_string_value(w);
            if (!id || find_by_id(list, id)) continue;
            char *path = resource_path("/instances", id);
            char *what = lambda_sprintf("describe instance %s", id);
            json_t *data = NULL;
            lambda_error e = {0};
            json_t *inst = NULL;
            if (lambda_request(p, "GET", path, NULL, what, 1, &data, &e) == 0) inst = instance_json(p, data);
            else if (strcmp(e.code, "notFound") == 0) inst = gone_instance(p, id);
            json_decref(data);
            free(path);
            free(what);
            if (!inst && e.message) {
                *err = e; /* hands over the strings */
                json_decref(instances);
                json_decref(list);
                return NULL;
            }
            lambda_error_clear(&e);
            if (wanted && !tags_match(json_object_get(inst, "tags"), wanted)) json_decref(inst);
            else json_array_append_new(instances, inst);
        }
    }
    json_decref(list);
    json_t *result = json_object();
    json_object_set_new(result, "instances", instances);
    return result;
}

/* ---- compute.terminate ------------------------------------------------------------------------- */

/* Deletes the capstan-* SSH keys of the instances just terminated that no other live instance
 * uses: one key per cluster would otherwise pile up against Lambda's 1,024-key limit. A key the
 * user registered (any other name) is never touched. Failures are only logged: the instances
 * are what matters. */
static void release_keys(lambda_plugin *p, json_t *list, json_t *terminated_ids) {
    json_t *candidates = json_array();
    size_t i, j;
    json_t *li, *k;
    json_array_foreach(list, i, li) {
        if (string_index(terminated_ids, str(li, "id")) < 0) continue;
        json_array_foreach(json_object_get(li, "ssh_key_names"), j, k) {
            const char *name = json_string_value(k);
            if (name && strncmp(name, "capstan-", 8) == 0) append_unique(candidates, name);
        }
    }
    if (json_array_size(candidates) == 0) {
        json_decref(candidates);
        return;
    }
    json_array_foreach(list, i, li) {
        const char *status = str(li, "status");
        if (string_index(terminated_ids, str(li, "id")) >= 0 || (status && (strcmp(status, "terminating") == 0 || strcmp(status, "terminated") == 0))) continue;
        json_array_foreach(json_object_get(li, "ssh_key_names"), j, k) {
            long c = string_index(candidates, json_string_value(k));
            if (c >= 0) json_array_remove(candidates, (size_t)c);
        }
    }
    json_t *keys = NULL;
    lambda_error e = {0};
    pthread_mutex_lock(&p->key_lock);
    if (json_array_size(candidates) > 0 && lambda_request(p, "GET", "/ssh-keys", NULL, "list SSH keys", 1, &keys, &e) == 0) {
        json_array_foreach(keys, i, k) {
            const char *name = str(k, "name"), *id = str(k, "id");
            if (string_index(candidates, name) < 0 || !id) continue;
            char *path = resource_path("/ssh-keys", id);
            char *what = lambda_sprintf("delete SSH key %s", name);
            json_t *data = NULL;
            lambda_error_clear(&e);
            if (lambda_request(p, "DELETE", path, NULL, what, 1, &data, &e) == 0) lambda_log(p, CAPSTAN_LOG_INFO, "lambda: deleted SSH key %s, no longer used", name);
            else lambda_log(p, CAPSTAN_LOG_DEBUG, "lambda: could not delete SSH key %s: %s", name, e.message ? e.message : "?");
            json_decref(data);
            free(path);
            free(what);
        }
    }
    pthread_mutex_unlock(&p->key_lock);
    lambda_error_clear(&e);
    json_decref(keys);
    json_decref(candidates);
}

static json_t *terminate_ids(lambda_plugin *p, json_t *ids, lambda_error *err) {
    json_t *list = NULL;
    if (list_instances(p, &list, err) != 0) return NULL;
    json_t *instances = json_array(), *send = json_array();
    size_t i;
    json_t *w;
    json_array_foreach(ids, i, w) {
        const char *id = json_string_value(w);
        if (!id) continue;
        json_t *li = find_by_id(list, id);
        const char *status = li ? str(li, "status") : NULL;
        if (!li) json_array_append_new(instances, gone_instance(p, id));
        else if (status && (strcmp(status, "terminating") == 0 || strcmp(status, "terminated") == 0))
            json_array_append_new(instances, instance_json(p, li));
        else json_array_append_new(send, json_string(id));
    }
    if (json_array_size(send) > 0) {
        json_t *body = json_object(), *data = NULL;
        json_object_set(body, "instance_ids", send);
        char *what = lambda_sprintf("terminate %zu instance(s)", json_array_size(send));
        /* Terminating twice is harmless: safe to repeat after a network error. */
        int rc = lambda_request(p, "POST", "/instance-operations/terminate", body, what, 1, &data, err);
        if (rc != 0 && strcmp(err->code, "notFound") == 0 && json_array_size(send) > 1) {
            /* One of them went away meanwhile: one at a time, a gone one is not an error. */
            lambda_error_clear(err);
            rc = 0;
            json_array_foreach(send, i, w) {
                json_t *one = json_object(), *ids1 = json_array(), *d1 = NULL;
                json_array_append(ids1, w);
                json_object_set_new(one, "instance_ids", ids1);
                lambda_error e = {0};
                if (lambda_request(p, "POST", "/instance-operations/terminate", one, what, 1, &d1, &e) == 0) {
                    json_t *t;
                    size_t j;
                    json_array_foreach(json_object_get(d1, "terminated_instances"), j, t) json_array_append_new(instances, instance_json(p, t));
                } else if (strcmp(e.code, "notFound") == 0) {
                    json_array_append_new(instances, gone_instance(p, json_string_value(w)));
                } else if (rc == 0) {
                    *err = e;
                    memset(&e, 0, sizeof e);
                    rc = -1;
                }
                lambda_error_clear(&e);
                json_decref(d1);
                json_decref(one);
            }
        } else if (rc != 0 && strcmp(err->code, "notFound") == 0) {
            lambda_error_clear(err);
            rc = 0;
            json_array_append_new(instances, gone_instance(p, json_string_value(json_array_get(send, 0))));
        } else if (rc == 0) {
            json_t *t;
            json_array_foreach(json_object_get(data, "terminated_instances"), i, t) json_array_append_new(instances, instance_json(p, t));
        }
        json_decref(data);
        json_decref(body);
        free(what);
        if (rc != 0) {
            json_decref(instances);
            json_decref(send);
            json_decref(list);
            return NULL;
        }
        release_keys(p, list, send);
    }
    json_decref(send);
    json_decref(list);
    return instances;
}

json_t *lambda_terminate(lambda_plugin *p, json_t *request, lambda_error *err) {
    json_t *ids = json_object_get(request, "ids");
    if (!json_is_array(ids)) {
        lambda_fail(err, "invalidRequest", "This is a bug in the host; report it.", "compute.terminate needs \"ids\": [String].");
        return NULL;
    }
    json_t *instances = json_array_size(ids) ? terminate_ids(p, ids, err) : json_array();
    if (!instances) return NULL;
    json_t *result = json_object();
    json_object_set_new(result, "instances", instances);
    return result;
}
