/*
 * Why a VMM ended, in a sentence for a status "error" (engine/exitcause.c):
 * pure functions over what is known of the end, unit-tested apart from any
 * VMM. The guest's console and the VMM's log are untrusted input: what of
 * them reaches the sentence is bounded, cleaned of control characters and
 * invalid UTF-8, and quoted so it cannot pass for the sentence's own words.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The console's (and the VMM log's) tail that is read: its last bytes. */
#define EXIT_TAIL_BYTES 16384
/* The console lines quoted: at most this many, each cut at LINE_BYTES, all within BYTES (quoted). */
#define EXIT_EXCERPT_LINES 8
#define EXIT_EXCERPT_LINE_BYTES 160
#define EXIT_EXCERPT_BYTES 1024
/* A wait status no one knows: a VMM re-adopted after a restart is not our child. */
#define EXIT_STATUS_UNKNOWN 1000

/* What is known of a VMM's end. */
struct exit_facts {
	int status;		  /* exit code, 128 + signal, or EXIT_STATUS_UNKNOWN */
	const char *shutdown;	  /* the VMM's own reason (QEMU's SHUTDOWN event), NULL if none was seen */
	const char *console;	  /* the tail of the guest's console log (raw guest bytes) */
	size_t console_len;
	bool console_whole;	  /* that tail is the whole log: its first line is complete */
	const char *vmm_log;	  /* the tail of the VMM's own log */
	size_t vmm_log_len;
	bool vmm_log_whole;
};

/*
 * The cause as one line of valid UTF-8 without control characters (malloc'd;
 * NULL when out of memory): a signal's number and name; a guest that
 * panicked (with its panic line), powered off, rebooted or reset itself, as
 * the VMM's shutdown reason says and the console's last lines tell, those
 * lines quoted; a host signal QEMU reported; or an exit status with the VMM
 * log's last line.
 */
char *exit_cause_describe(const struct exit_facts *f);

/*
 * Cleans n bytes of untrusted text into out (size > 0; always terminated):
 * valid UTF-8 kept; an invalid sequence becomes one U+FFFD; control
 * characters (C0 but tab, which becomes a space; DEL; C1), terminal escape
 * sequences and the invisible characters that reorder or split displayed
 * text (bidi controls, zero-width ones, line and paragraph separators) are
 * dropped. Never cuts a character in two. Returns the length written.
 */
size_t exit_text_clean(const char *in, size_t n, char *out, size_t size);
