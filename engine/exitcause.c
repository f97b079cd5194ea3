/*
 * Why a VMM ended, as one line for a status "error". Pure functions: the
 * engine reads the facts (exit status, QEMU's shutdown reason, the tails of
 * the console and of the VMM's log) and this decides what they say.
 *
 * The verdict comes from the host's side first: a signal is a signal,
 * whatever the console shows; an exit status 0 comes with QEMU's SHUTDOWN
 * reason (with -no-reboot a guest's reset or power-off ends the VMM):
 * guest-shutdown is a power-off, guest-reset a reboot, a panic (panic=-1
 * resets at once) or a reset the guest did not explain, which the console's
 * last cause line tells apart. Only when QEMU gave no reason (its event
 * lost) does the console alone decide, and the sentence says so.
 *
 * Everything quoted from the console or the log is cleaned
 * (exit_text_clean), cut to bounded lines and bytes, and put between double
 * quotes with its own quotes and backslashes escaped: the guest's words can
 * never end the quote and pass for ours, nor carry a control byte into the
 * status, the events or the daemon's log.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcause.h"

/* ---- cleaning ---- */

#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* The code point at s (n > 0 bytes) and its length; an invalid sequence is UINT32_MAX over its valid prefix. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned c = s[0], lo = 0x80, hi = 0xBF;
	size_t len;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		v = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		v = c & 0x0F;
		lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
		hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		v = c & 0x07;
		lo = c == 0xF0 ? 0x90 : 0x80;
		hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
	} else {
		*cp = UINT32_MAX;
		return 1;
	}
	for (size_t i = 1; i < len; i++) {
		if (i >= n || s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) {
			*cp = UINT32_MAX;
			return i;
		}
		v = v << 6 | (s[i] & 0x3F);
	}
	*cp = v;
	return len;
}

/* Characters that control a terminal or change how the text around them displays. */
static bool invisible(uint32_t c)
{
	return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x061C || (c >= 0x200B && c <= 0x200F) ||
	       (c >= 0x2028 && c <= 0x202E) || (c >= 0x2060 && c <= 0x206F) || c == 0xFEFF ||
	       (c >= 0xFFF9 && c <= 0xFFFB);
}

/*
 * The bytes of the escape sequence at s (s[0] is ESC): a CSI sequence with
 * its parameters (digits and punctuation only: it can hide no words), or ESC
 * and the next byte. The text of a string sequence (OSC, DCS, ...) stays:
 * an unterminated one would otherwise hide everything after it.
 */
static size_t escape_len(const unsigned char *s, size_t n)
{
	size_t i = 2;

	if (n < 2)
		return n;
	if (s[1] != '[')
		return s[1] < 0x80 ? 2 : 1;
	while (i < n && s[i] >= 0x20 && s[i] <= 0x3F)
		i++;
	return i < n && s[i] >= 0x40 && s[i] <= 0x7E ? i + 1 : i;
}

size_t exit_text_clean(const char *in, size_t n, char *out, size_t size)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, o = 0;
	bool replaced = false; /* the last thing written is a U+FFFD: a run of bad bytes makes one */

	while (i < n) {
		uint32_t c;
		size_t k;

		if (s[i] == 0x1B) {
			i += escape_len(s + i, n - i);
			continue;
		}
		k = utf8_next(s + i, n - i, &c);
		if (c == UINT32_MAX) {
			if (!replaced) {
				if (o + 3 >= size)
					break;
				memcpy(out + o, REPLACEMENT, 3);
				o += 3;
				replaced = true;
			}
		} else if (c == '\t' || !invisible(c)) {
			if (o + k >= size)
				break;
			if (c == '\t') {
				out[o++] = ' ';
			} else {
				memcpy(out + o, s + i, k);
				o += k;
			}
			replaced = false;
		}
		i += k;
	}
	if (size)
		out[o] = '\0';
	return o;
}

/* ---- a growing string ---- */

struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->p, cap);

		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_addf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_addf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		sb_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* s (clean text), cut to max bytes on a character boundary (an ellipsis says so), quoted and escaped. */
static void sb_quote(struct sbuf *b, const char *s, size_t max)
{
	size_t n = strlen(s);
	bool cut = n > max;

	if (cut) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	sb_add(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\')
			sb_add(b, "\\", 1);
		sb_add(b, s + i, 1);
	}
	if (cut)
		sb_add(b, "\xE2\x80\xA6", 3); /* U+2026 */
	sb_add(b, "\"", 1);
}

/* ---- lines of a tail ---- */

struct lines {
	const char *text;
	size_t *start, *len; /* raw lines, oldest first */
	size_t n;
};

/* Splits a tail into lines; unless whole, the first (cut) one is left out. */
static int lines_split(struct lines *l, const char *text, size_t len, bool whole)
{
	size_t cap = 1, at = 0;

	for (size_t i = 0; i < len; i++)
		cap += text[i] == '\n';
	l->text = text;
	l->n = 0;
	l->start = malloc(cap * sizeof(size_t));
	l->len = malloc(cap * sizeof(size_t));
	if (!l->start || !l->len)
		return -1;
	while (at <= len && len) {
		const char *nl = memchr(text + at, '\n', len - at);
		size_t end = nl ? (size_t)(nl - text) : len;

		if (whole || at > 0) {
			l->start[l->n] = at;
			l->len[l->n++] = end - at;
		}
		if (!nl)
			break;
		at = end + 1;
	}
	return 0;
}

static void lines_free(struct lines *l)
{
	free(l->start);
	free(l->len);
}

/*
 * Line i cleaned into out (3 bytes per input byte at most), without the
 * kernel's "[   12.345678] " time stamp and surrounding blanks; "" if nothing
 * visible is left.
 */
static const char *line_clean(const struct lines *l, size_t i, char *out, size_t size)
{
	char *p = out, *end;

	exit_text_clean(l->text + l->start[i], l->len[i], out, size);
	while (*p == ' ')
		p++;
	if (*p == '[') {
		char *q = p + 1;

		while (*q == ' ')
			q++;
		if (*q >= '0' && *q <= '9') {
			while ((*q >= '0' && *q <= '9') || *q == '.')
				q++;
			if (*q == ']')
				p = q + 1;
		}
	}
	while (*p == ' ')
		p++;
	end = p + strlen(p);
	while (end > p && end[-1] == ' ')
		*--end = '\0';
	return p;
}

/* What a console line says of the guest's end. */
enum guest_end { END_NONE = 0, END_PANIC, END_POWEROFF, END_RESTART };

static enum guest_end line_says(const char *line, const char **panic_at)
{
	const char *p = strstr(line, "Kernel panic - not syncing");

	if (p) {
		*panic_at = p;
		return END_PANIC;
	}
	if (strstr(line, "reboot: Power down"))
		return END_POWEROFF;
	if (strstr(line, "reboot: Restarting system"))
		return END_RESTART;
	return END_NONE;
}

/* ---- the sentence ---- */

struct console_view {
	struct lines l;
	char *scratch; /* one cleaned line */
	size_t scratch_size;
	enum guest_end end;   /* the last line that says how the guest ended */
	size_t end_line;      /* its index; l.n if none */
	char *panic_line;     /* the panic message from "Kernel panic" on, cleaned */
};

static int console_view_init(struct console_view *c, const struct exit_facts *f)
{
	size_t maxlen = 0;

	memset(c, 0, sizeof(*c));
	if (lines_split(&c->l, f->console ? f->console : "", f->console ? f->console_len : 0, f->console_whole) < 0)
		return -1;
	for (size_t i = 0; i < c->l.n; i++)
		if (c->l.len[i] > maxlen)
			maxlen = c->l.len[i];
	c->scratch_size = 3 * maxlen + 1;
	if (!(c->scratch = malloc(c->scratch_size)))
		return -1;
	c->end_line = c->l.n;
	for (size_t i = c->l.n; i-- > 0;) {
		const char *panic_at = NULL;
		enum guest_end e = line_says(line_clean(&c->l, i, c->scratch, c->scratch_size), &panic_at);

		if (e == END_NONE)
			continue;
		c->end = e;
		c->end_line = i;
		if (panic_at && !(c->panic_line = strdup(panic_at)))
			return -1;
		break;
	}
	return 0;
}

static void console_view_free(struct console_view *c)
{
	lines_free(&c->l);
	free(c->scratch);
	free(c->panic_line);
}

/*
 * The console's last lines up to the one that said how the guest ended (or
 * up to its end): at most EXIT_EXCERPT_LINES non-empty ones, each cut at
 * EXIT_EXCERPT_LINE_BYTES, EXIT_EXCERPT_BYTES quoted in all.
 */
static void add_excerpt(struct sbuf *b, struct console_view *c)
{
	size_t last = c->end_line < c->l.n ? c->end_line : c->l.n ? c->l.n - 1 : 0;
	struct sbuf q[EXIT_EXCERPT_LINES] = { 0 };
	size_t n = 0, total = 0;

	for (size_t i = last + 1; c->l.n && i-- > 0 && n < EXIT_EXCERPT_LINES;) {
		const char *s = line_clean(&c->l, i, c->scratch, c->scratch_size);

		if (!*s)
			continue;
		sb_quote(&q[n], s, EXIT_EXCERPT_LINE_BYTES);
		if (q[n].oom || total + q[n].len + 1 > EXIT_EXCERPT_BYTES) {
			free(q[n].p);
			break;
		}
		total += q[n].len + 1;
		n++;
	}
	if (!n) {
		sb_addf(b, "; the console has nothing to show");
	} else {
		static const char *const what[] = { "", " up to the panic", " up to the power-off", " up to the reboot" };

		if (n == 1)
			sb_addf(b, "; console, last line%s:", c->end_line < c->l.n ? what[c->end] : "");
		else
			sb_addf(b, "; console, last %zu lines%s:", n, c->end_line < c->l.n ? what[c->end] : "");
		for (size_t k = n; k-- > 0;) {
			sb_add(b, " ", 1);
			sb_add(b, q[k].p, q[k].len);
		}
	}
	for (size_t k = 0; k < n; k++)
		free(q[k].p);
}

/* The last non-empty line of the VMM's log, cleaned; and the signal of its "terminating on signal N", or 0. */
static void vmm_log_facts(const struct exit_facts *f, char *last, size_t size, int *term_sig)
{
	struct lines l;
	char *scratch;
	size_t maxlen = 0;

	*last = '\0';
	*term_sig = 0;
	if (!f->vmm_log || lines_split(&l, f->vmm_log, f->vmm_log_len, f->vmm_log_whole) < 0)
		return;
	for (size_t i = 0; i < l.n; i++)
		if (l.len[i] > maxlen)
			maxlen = l.len[i];
	scratch = malloc(3 * maxlen + 1);
	for (size_t i = l.n; scratch && i-- > 0;) {
		const char *s = line_clean(&l, i, scratch, 3 * maxlen + 1), *t;

		if (!*s)
			continue;
		if (!*last)
			snprintf(last, size, "%s", s);
		if (!*term_sig && (t = strstr(s, "terminating on signal ")))
			*term_sig = atoi(t + strlen("terminating on signal "));
		if (*term_sig)
			break;
	}
	free(scratch);
	lines_free(&l);
}

static void add_signal(struct sbuf *b, int sig)
{
	const char *name = sig > 0 && sig < 65 ? sigabbrev_np(sig) : NULL;

	if (name)
		sb_addf(b, "signal %d, SIG%s", sig, name);
	else
		sb_addf(b, "signal %d", sig);
}

char *exit_cause_describe(const struct exit_facts *f)
{
	struct sbuf b = { 0 };
	struct console_view c;
	char last[EXIT_EXCERPT_LINE_BYTES * 3 + 1];
	const char *why = f->shutdown;
	enum guest_end end;
	int term_sig;

	if (f->status >= 128 && f->status != EXIT_STATUS_UNKNOWN) {
		sb_add(&b, "VMM exited unexpectedly (", strlen("VMM exited unexpectedly ("));
		add_signal(&b, f->status - 128);
		sb_add(&b, ")", 1);
		goto out;
	}
	vmm_log_facts(f, last, sizeof(last), &term_sig);
	if (f->status > 0 && f->status != EXIT_STATUS_UNKNOWN) {
		sb_addf(&b, "VMM exited unexpectedly (status %d)", f->status);
		if (*last) {
			sb_addf(&b, "; its log ends: ");
			sb_quote(&b, last, EXIT_EXCERPT_LINE_BYTES);
		}
		goto out;
	}
	if ((why && strcmp(why, "host-signal") == 0) || (!why && term_sig)) {
		/* QEMU ends with status 0 on SIGTERM, SIGINT or SIGHUP: someone on the host sent it */
		sb_addf(&b, "the VMM ended on ");
		if (term_sig)
			add_signal(&b, term_sig);
		else
			sb_addf(&b, "a signal");
		sb_addf(&b, ", sent from the host");
		goto out;
	}
	if (why && strcmp(why, "guest-shutdown") && strcmp(why, "guest-reset") && strcmp(why, "guest-panic")) {
		sb_addf(&b, "the VMM shut down (QEMU's reason: %s)", why);
		goto out;
	}
	if (console_view_init(&c, f) < 0) {
		console_view_free(&c);
		free(b.p);
		return NULL;
	}
	/* QEMU's word decides between power-off and reset; the console tells a panic from a reboot */
	end = !why ? c.end : strcmp(why, "guest-shutdown") == 0 ? END_POWEROFF :
	      strcmp(why, "guest-panic") == 0 ? END_PANIC : c.end == END_POWEROFF ? END_NONE : c.end;
	if (end == END_PANIC) {
		sb_addf(&b, "the guest kernel panicked");
		if (c.end == END_PANIC && c.panic_line) {
			sb_add(&b, ": ", 2);
			sb_quote(&b, c.panic_line, EXIT_EXCERPT_LINE_BYTES);
		}
	} else if (end == END_POWEROFF) {
		sb_addf(&b, "the guest powered off");
	} else if (end == END_RESTART) {
		sb_addf(&b, "the guest rebooted");
	} else if (why) {
		sb_addf(&b, "the guest reset itself, with no panic or reboot on its console");
	} else if (f->status == EXIT_STATUS_UNKNOWN) {
		sb_addf(&b, "VMM exited unexpectedly (status unknown: a VMM re-adopted after a daemon restart)");
	} else {
		sb_addf(&b, "VMM exited unexpectedly (status %d)", f->status);
	}
	if (why)
		sb_addf(&b, " (QEMU: %s)", why);
	else if (end != END_NONE)
		sb_addf(&b, " (by its console; the VMM gave no reason)");
	if (c.end != end)
		c.end_line = c.l.n; /* a line that was not the cause: quote the console's end */
	add_excerpt(&b, &c);
	console_view_free(&c);
out:
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
