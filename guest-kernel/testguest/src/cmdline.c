#include "cmdline.h"
#include "string.h"

/* First ' ' or NUL in [p, end), or end. Uses repne scasb: on PVM a rep
 * iteration is cheaper than the several instructions of a C loop. */
static const char *token_end(const char *p, const char *end)
{
	const char *q = p;
	size_t n = (size_t)(end - p);

	if (!n)
		return p;
	__asm__ volatile("repne scasb" : "+D"(q), "+c"(n) : "a"(' ') : "memory", "cc");
	return q[-1] == ' ' ? q - 1 : q;
}

const char *cmdline_get(const char *key, size_t *len)
{
	return cmdline_find(key, NULL, len);
}

const char *cmdline_find(const char *key, const char *from, size_t *len)
{
	size_t klen = strlen(key);
	const char *p = from ? from : tg_cmdline;
	size_t n = tg_cmdline_len;

	if (n && !tg_cmdline[n - 1])
		n--; /* the NUL (absent if the command line was truncated) */
	const char *end = tg_cmdline + n;

	while (p < end) {
		if (*p == ' ') {
			p++;
			continue;
		}
		const char *tok_end = token_end(p, end);
		size_t tlen = (size_t)(tok_end - p);
		if (tlen > klen && p[klen] == '=' && !memcmp(p, key, klen)) {
			*len = tlen - klen - 1;
			return p + klen + 1;
		}
		p = tok_end;
	}
	*len = 0;
	return NULL;
}

const char *parse_u64(const char *s, const char *end, uint64_t *out)
{
	uint64_t n = 0, base = 10;
	const char *start;

	if (end - s > 2 && s[0] == '0' && (s[1] | 0x20) == 'x') {
		base = 16;
		s += 2;
	}
	for (start = s; s < end; s++) {
		unsigned d = (unsigned char)*s - '0';
		if (d > 9) {
			d = ((unsigned char)*s | 0x20) - 'a' + 10;
			if (d < 10 || d >= base)
				break;
		}
		n = n * base + d;
	}
	*out = n;
	return s == start ? NULL : s;
}

uint64_t cmdline_get_u64(const char *key, uint64_t dflt)
{
	size_t len;
	const char *v = cmdline_get(key, &len);
	uint64_t n;

	if (!v || parse_u64(v, v + len, &n) != v + len)
		return dflt;
	return n;
}
