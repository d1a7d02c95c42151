/* Shared by the C bodies only (never given to cffi): access to a pool's pthreadpool. */
#ifndef OSN_INTERNAL_H
#define OSN_INTERNAL_H
#include <pthreadpool.h>

#include "osn_core.h"

pthreadpool_t osn_pool_handle(const osn_pool* pool);

#endif
