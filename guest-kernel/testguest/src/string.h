/* The few libc string functions the guest needs (GCC may also emit calls
 * to memcpy/memset for aggregate copies). */
#ifndef TG_STRING_H
#define TG_STRING_H

#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif
