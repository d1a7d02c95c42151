/* onnxstream_py native core: library set-up, thread pools, and the status convention.
 *
 * Every function Python may call is declared between the CDEF markers of a header in
 * native/; build_ffi.py feeds exactly those declarations to cffi (API mode), so a mismatch
 * between a declaration and its C body is a compile error, not a crash. Functions return
 * an int status: 0 is success; positive values are XNNPACK's enum xnn_status; negative
 * values are our own (OSN_E_*). Python turns every non-zero status into an exception that
 * names the op (onnxstream_py/native.py: _check).
 */
#ifndef OSN_CORE_H
#define OSN_CORE_H
#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
#define OSN_E_INVALID_ARGUMENT -1
#define OSN_E_OUT_OF_MEMORY -2

typedef struct osn_pool osn_pool;   /* a pthreadpool owned by one Model */

/* Initialise XNNPACK once per process (idempotent). */
int osn_init(void);

/* Version of this shim's API (bumped when a declaration changes). */
int osn_version(void);

/* A pool of `threads` threads (0: one per core). Returns NULL on failure. */
osn_pool* osn_pool_create(size_t threads);
size_t osn_pool_threads(const osn_pool* pool);
void osn_pool_destroy(osn_pool* pool);
/* CDEF END */

#endif
