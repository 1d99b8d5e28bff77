/* COM1 output. The VMM's UART is always ready: no LSR polling. Lines are
 * built in a buffer and sent with one `rep outsb`. */
#ifndef TG_SERIAL_H
#define TG_SERIAL_H

#include <stddef.h>
#include <stdint.h>

void serial_write(const char *s, size_t n);
void serial_puts(const char *s);

#define LINE_CAP 512

struct line {
	size_t len;
	char buf[LINE_CAP];
};

void line_init(struct line *l);
void line_str(struct line *l, const char *s);
void line_strn(struct line *l, const char *s, size_t n);
void line_char(struct line *l, char c);
void line_dec(struct line *l, uint64_t v);
void line_hex(struct line *l, uint64_t v); /* "0x..." */
void line_send(struct line *l);            /* appends '\n', writes */

#endif
