/*
 * capstan_plugin.h — the Capstan plugin ABI, version 1.
 *
 * This header is a public, stable contract. A Capstan plugin is a shared library (.so / .dylib)
 * that exports ONE C symbol, `capstan_plugin_entry`, returning a pointer to a `capstan_plugin`
 * table. Everything else crosses the boundary as UTF-8 JSON: the host sends a method name and a
 * request document, the plugin answers through a completion callback. A plugin can be written in
 * C, Swift, Rust, Go or Zig; it needs this header and nothing else from Capstan.
 *
 * Versioning
 *   - The first two fields of every struct below (`abi_version`, `struct_size`) never move.
 *   - `CAPSTAN_PLUGIN_ABI_VERSION` changes only when a field's meaning or a signature changes.
 *     The host refuses a plugin whose `abi_version` it does not support, with a message naming
 *     both versions.
 *   - New fields are appended; `struct_size` tells the reader which ones the writer knows.
 *     A host accepts a larger `capstan_plugin` than it knows; a plugin must check
 *     `host->struct_size` before reading a field appended after version 1.
 *
 * Memory ownership
 *   - Strings passed INTO a plugin function (config, method, request) are owned by the host and
 *     valid only for the duration of that call. Copy what you keep.
 *   - The `response_json` passed to a completion callback is owned by the plugin and only needs
 *     to stay valid until the callback returns; the host copies it.
 *   - `manifest_json()` returns a string the plugin owns for its whole lifetime (static is ideal).
 *   - `create()` may return an error document through `*out_error_json`; the host releases it
 *     with the plugin's `free_string`.
 *
 * Threading
 *   - `create`, `invoke` and `destroy` may be called from any thread. `invoke` may be called
 *     concurrently for the same handle: a plugin must be thread-safe per handle.
 *   - `invoke` must not block for long: start the work and return. The completion callback may be
 *     called from any thread, before or after `invoke` returns, and EXACTLY ONCE per invoke.
 *     `progress` may be called zero or more times before `completion`, never after.
 *   - The host may give up on a call (timeout) and ignore a late completion; calling it late is
 *     still safe.
 *   - The host never calls `destroy` from inside a `completion` or `progress` callback (nor on
 *     the thread delivering one), so `destroy` may wait for and join the plugin's own threads.
 *   - The host never unloads a plugin (`dlclose` is never called: Swift images cannot be
 *     unloaded safely), so static state lives as long as the process.
 *
 * Status codes: `completion(ctx, CAPSTAN_STATUS_OK, result)` carries the method's result document;
 * `completion(ctx, CAPSTAN_STATUS_ERROR, error)` carries an error document:
 *   {"code": "capacity|quota|auth|rateLimited|invalidRequest|notFound|transient|unsupported|
 *            timeout|config|io|internal|pluginFailure",
 *    "message": "what happened, to what, and what to do",
 *    "hint": "what the user should do",  (optional)
 *    "retryAfterSeconds": 3.0,          (optional, with rateLimited/transient: the host waits this long)
 *    "cloudCode": "InsufficientInstanceCapacity", (optional: the cloud's own code)
 *    "cloudMessage": "..."}             (optional)
 *
 * The host retries rateLimited and transient answers of every method with backoff (launch with the
 * same idempotencyKey); capacity and quota move on to the next offer; auth, config and
 * pluginFailure stop using the provider for that search; the rest are reported. An unknown code
 * is read as pluginFailure. Meanings: docs/plugin-abi.md, "Status and errors".
 *
 * Methods and their JSON shapes are listed in docs/plugin-abi.md.
 */
#ifndef CAPSTAN_PLUGIN_H
#define CAPSTAN_PLUGIN_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version this header describes. */
#define CAPSTAN_PLUGIN_ABI_VERSION 1u

/** The one symbol a plugin exports. */
#define CAPSTAN_PLUGIN_ENTRY_SYMBOL "capstan_plugin_entry"

/** Status passed to a completion callback. */
#define CAPSTAN_STATUS_OK 0
#define CAPSTAN_STATUS_ERROR 1

/** Log levels for `capstan_host.log`. */
#define CAPSTAN_LOG_TRACE 0
#define CAPSTAN_LOG_DEBUG 1
#define CAPSTAN_LOG_INFO 2
#define CAPSTAN_LOG_NOTICE 3
#define CAPSTAN_LOG_WARNING 4
#define CAPSTAN_LOG_ERROR 5

/** Services the host offers a plugin instance; valid until `destroy` returns. */
typedef struct capstan_host {
    uint32_t abi_version;   /* the host's CAPSTAN_PLUGIN_ABI_VERSION */
    uint32_t struct_size;   /* sizeof(capstan_host) as the host compiled it */
    void *host_ctx;         /* pass back to every host function */
    /** Log a line through the host's logger. Never pass secrets. */
    void (*log)(void *host_ctx, int32_t level, const char *message);
} capstan_host;

/** Called exactly once per invoke with the result or error document. */
typedef void (*capstan_completion_fn)(void *call_ctx, int32_t status, const char *response_json);

/** Optional progress for long transfers: bytes done of total (total 0 when unknown). */
typedef void (*capstan_progress_fn)(void *call_ctx, uint64_t done, uint64_t total);

/** The table a plugin exports. */
typedef struct capstan_plugin {
    uint32_t abi_version;   /* CAPSTAN_PLUGIN_ABI_VERSION the plugin was compiled against */
    uint32_t struct_size;   /* sizeof(capstan_plugin) as the plugin compiled it */
    const char *name;       /* short provider name, e.g. "aws"; [a-z0-9-]+ */

    /** The manifest: {"name","version","description","capabilities":["compute","storage"],
     *  "configSchema":{JSON Schema}} ("autoEnable" is ignored). Owned by the plugin. */
    const char *(*manifest_json)(void);

    /** Create an instance from its configuration document (an object, "{}" when none).
     *  Returns 0 and sets *out_handle, or non-zero and may set *out_error_json (an error
     *  document, released by the host with free_string). `host` outlives the handle. */
    int32_t (*create)(const char *config_json, const capstan_host *host,
                      void **out_handle, char **out_error_json);

    /** Start `method` with `request_json`; answer through `completion(call_ctx, …)` exactly
     *  once. `progress` may be NULL. */
    void (*invoke)(void *handle, const char *method, const char *request_json,
                   void *call_ctx, capstan_completion_fn completion, capstan_progress_fn progress);

    /** Release an instance. No invoke on it is in flight or will follow. */
    void (*destroy)(void *handle);

    /** Release a string the plugin allocated and handed to the host. */
    void (*free_string)(char *string);
} capstan_plugin;

/** The entry point every plugin exports. Returns a table that lives as long as the process. */
typedef const capstan_plugin *(*capstan_plugin_entry_fn)(void);

/** Host side only (not exported by plugins): the ABI version the host was built with. */
uint32_t capstan_host_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* CAPSTAN_PLUGIN_H */
