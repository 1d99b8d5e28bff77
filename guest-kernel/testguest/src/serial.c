#include "serial.h"
#include "io.h"
#include "layout.h"
#include "string.h"

void serial_write(const char *s, size_t n)
{
	if (n)
		outsb(COM1_PORT, s, n);
}

void serial_puts(const char *s)
{
	serial_write(s, strlen(s));
}

void line_init(struct line *l)
{
	l->len = 0;
}

void line_char(struct line *l, char c)
{
	if (l->len < LINE_CAP - 1) /* keep room for '\n' */
		l->buf[l->len++] = c;
}

void line_strn(struct line *l, const char *s, size_t n)
{
	while (n--)
		line_char(l, *s++);
}

void line_str(struct line *l, const char *s)
{
	while (*s)
		line_char(l, *s++);
}

void line_dec(struct line *l, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		line_char(l, tmp[--n]);
}

void line_hex(struct line *l, uint64_t v)
{
	int shift = 60;

	line_str(l, "0x");
	while (shift > 0 && !(v >> shift))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		line_char(l, "0123456789abcdef"[(v >> shift) & 0xf]);
}

void line_send(struct line *l)
{
	l->buf[l->len++] = '\n';
	serial_write(l->buf, l->len);
	l->len = 0;
}
