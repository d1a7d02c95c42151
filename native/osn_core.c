/* Library set-up and thread pools. The pool wraps pthreadpool so that both XNNPACK
 * operators and our own kernels (pthreadpool_parallelize_*) share one set of threads. */
#include <stdlib.h>

#include <pthreadpool.h>
#include <xnnpack.h>

#include "osn_core.h"
#include "osn_internal.h"

#define OSN_API_VERSION 1

struct osn_pool {
    pthreadpool_t tp;
};

int osn_init(void) {
    static int status = -1000;   /* xnn_initialize is itself idempotent; cache its answer */
    if (status == -1000) status = (int)xnn_initialize(NULL);
    return status;
}

int osn_version(void) { return OSN_API_VERSION; }

osn_pool* osn_pool_create(size_t threads) {
    osn_pool* pool = (osn_pool*)malloc(sizeof(osn_pool));
    if (pool == NULL) return NULL;
    pool->tp = pthreadpool_create(threads);
    if (pool->tp == NULL) {
        free(pool);
        return NULL;
    }
    return pool;
}

size_t osn_pool_threads(const osn_pool* pool) {
    return pool ? pthreadpool_get_threads_count(pool->tp) : 1;
}

void osn_pool_destroy(osn_pool* pool) {
    if (pool == NULL) return;
    pthreadpool_destroy(pool->tp);
    free(pool);
}

pthreadpool_t osn_pool_handle(const osn_pool* pool) { return pool ? pool->tp : NULL; }
