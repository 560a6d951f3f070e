/*
 * sb_yaml.h -- internals shared by the two halves of `sibyl.yaml`: yaml.c
 * (the binding and the decoder) and yaml_emit.c (the core-schema scalar
 * rules and the encoder). Not for other modules: they require "sibyl.yaml".
 *
 * Named sb_yaml.h rather than yaml.h on purpose: runtime/src is on the
 * include path, so a local yaml.h would shadow libyaml's <yaml.h>.
 */
#ifndef SB_YAML_H
#define SB_YAML_H

#include <stddef.h>

#include "sb.h"

/* Result of resolving one plain scalar by the core schema. */
typedef enum { R_STRING, R_NULL, R_BOOL, R_INT, R_FLOAT } sb_yaml_res;

/*
 * Classify plain scalar s[0..len) by the YAML 1.2 core schema. Pure C: no
 * Lua, no conversion. Decimal ints and floats need sb_yaml_str_to_number for
 * their value.
 */
sb_yaml_res sb_yaml_classify_plain(const char *s, size_t len);

/*
 * The value of a numeric scalar already classified as R_INT or R_FLOAT.
 * Decimal text goes through LuaJIT's own string-to-number conversion, so the
 * C locale never matters. Leaves the stack as it found it; may raise only on
 * out-of-memory.
 */
double sb_yaml_str_to_number(lua_State *L, const char *s, size_t len);

/*
 * Encode the value at idx (absolute) as one YAML document, push the text and
 * return 1. indent (2..9) and max_depth (>= 1) are already checked by the
 * caller. Raises for values YAML cannot hold, cycles, nesting deeper than
 * max_depth and out-of-memory; libyaml state is freed before it raises.
 */
int sb_yaml_encode(lua_State *L, int idx, int indent, size_t max_depth);

#endif
