/* The kernel command line, copied by entry.S into tg_cmdline before
 * anything else. Space-separated key=value tokens; the first match wins. */
#ifndef TG_CMDLINE_H
#define TG_CMDLINE_H

#include <stddef.h>
#include <stdint.h>

extern char tg_cmdline[];
extern uint32_t tg_cmdline_len; /* including the NUL */

/* Value of `key=` (not NUL-terminated; *len bytes), or NULL if absent. */
const char *cmdline_get(const char *key, size_t *len);

/* Like cmdline_get, but the search starts at `from` (NULL: the start), which
 * must be a token boundary, e.g. the end of a value returned before: loop
 * with from = value + *len to visit every `key=` token in order. */
const char *cmdline_find(const char *key, const char *from, size_t *len);

/* Parses a decimal or 0x-prefixed hex number at [s, end); returns the first
 * character after it, or NULL if there is no digit. */
const char *parse_u64(const char *s, const char *end, uint64_t *out);

/* Decimal (or 0x hex) value of `key=`, or dflt if absent or not a number. */
uint64_t cmdline_get_u64(const char *key, uint64_t dflt);

#endif
