/*
 * sb_keys.h -- internals shared by the two halves of `sibyl.keys.core`:
 * keys.c (key rings, the helpers below and luaopen_sibyl_keys_core) and
 * bucket.c (token buckets). Not for other modules: they require
 * "sibyl.keys".
 */
#ifndef SB_KEYS_H
#define SB_KEYS_H

#include "sb.h"

/*
 * Raise a programmer error at the caller's position (level 1: the Lua code
 * that called the C function), like error(msg, 2) in Lua, with a full
 * printf format (the message is cut at 511 bytes). Never returns; typed
 * int so a binding can `return sb_keys_raise(...)`.
 */
int sb_keys_raise(lua_State *L, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/*
 * Raise unless every key of the options table at idx (absolute) is a
 * string from `known`, a NULL-terminated list; `list` is the same names
 * for the message and `what` the function's name ("keys.ring"). A
 * misspelt option is a bug, not a default. Leaves the stack as it found it.
 */
void sb_keys_check_options(lua_State *L, int idx, const char *what, const char *const *known,
                           const char *list);

/*
 * opts[field] of the options table at idx (absolute) as a finite number
 * > min (strict) or >= min, or def when nil; raises otherwise, naming
 * `what` and the field. Leaves the stack as it found it.
 */
double sb_keys_opt_number(lua_State *L, int idx, const char *what, const char *field, double def,
                          double min, int strict);

/*
 * bucket.c: add `bucket`, `_bucket_mt` and DEFAULT_BURST_SECONDS to the
 * module table at the top of the stack. Called once by
 * luaopen_sibyl_keys_core; leaves the stack as it found it.
 */
void sb_bucket_register(lua_State *L);

#endif
