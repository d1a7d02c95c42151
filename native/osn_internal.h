/* Shared by the C bodies only (never given to cffi): access to a pool's pthreadpool. */
#ifndef OSN_INTERNAL_H
#define OSN_INTERNAL_H
#include <pthreadpool.h>
#include <xnnpack.h>

#include "osn_core.h"

pthreadpool_t osn_pool_handle(const osn_pool* pool);

/* Workers sleep as soon as a parallel call ends instead of spinning: numpy's OpenBLAS has
 * its own threads, and on a 2-core machine spinning workers of one pool starve the other
 * (measured on the SD UNet: 11.4 s with spinning workers, 8.7 s without). Every
 * pthreadpool_parallelize_* call passes OSN_PARALLEL_FLAGS; every XNNPACK operator is
 * created with OSN_XNN_FLAGS. */
#define OSN_PARALLEL_FLAGS PTHREADPOOL_FLAG_YIELD_WORKERS
#define OSN_XNN_FLAGS XNN_FLAG_YIELD_WORKERS

#endif
