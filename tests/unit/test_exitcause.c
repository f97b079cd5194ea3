/* Why a VMM ended (engine/exitcause.c): the verdict and what of the guest's text reaches it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "exitcause.h"

static const char panic_console[] =
	"emberfs: pan restored, snapshot of template default (identity c5d9a8a03dde2847)\r\n"
	"[    2.842979] sysrq: Trigger a crash\r\n"
	"[    2.847833] Kernel panic - not syncing: sysrq triggered crash\r\n"
	"[    2.848470] CPU: 0 PID: 82 Comm: sh Tainted: G            E      6.1.0-57-cloud-amd64 #1\r\n"
	"[    2.849415] Call Trace:\r\n"
	"[    2.852860]  <TASK>\r\n"
	"[    2.861284]  </TASK>\r\n"
	"[    2.862199] Kernel Offset: disabled\r\n";

static char *describe(int status, const char *shutdown, const char *console, const char *log)
{
	struct exit_facts f = { .status = status, .shutdown = shutdown, .console = console,
				.console_len = console ? strlen(console) : 0, .console_whole = true,
				.vmm_log = log, .vmm_log_len = log ? strlen(log) : 0, .vmm_log_whole = true };
	char *m = exit_cause_describe(&f);

	assert_non_null(m);
	return m;
}

/* One line of valid UTF-8, no control character. */
static void assert_clean(const char *m)
{
	for (const unsigned char *p = (const unsigned char *)m; *p; p++)
		assert_true(*p >= 0x20 && *p != 0x7f);
	assert_true(strlen(m) < 2048);
}

static void signal_wins(void **state)
{
	char *m;

	(void)state;
	/* a fake panic on the console changes nothing about a SIGKILL */
	m = describe(128 + 9, NULL, panic_console, NULL);
	assert_string_equal(m, "VMM exited unexpectedly (signal 9, SIGKILL)");
	free(m);
	m = describe(128 + 11, "guest-reset", panic_console, NULL);
	assert_string_equal(m, "VMM exited unexpectedly (signal 11, SIGSEGV)");
	free(m);
}

static void panic_reset(void **state)
{
	char *m;

	(void)state;
	m = describe(0, "guest-reset", panic_console, "");
	assert_clean(m);
	assert_non_null(strstr(m, "the guest kernel panicked: \"Kernel panic - not syncing: sysrq triggered crash\" "
				  "(QEMU: guest-reset); console, last 3 lines up to the panic: \"emberfs: pan restored"));
	assert_non_null(strstr(m, "\"sysrq: Trigger a crash\" \"Kernel panic - not syncing: sysrq triggered crash\""));
	assert_null(strstr(m, "Call Trace"));
	free(m);
	/* no event from QEMU: the console's word, and the sentence says so */
	m = describe(0, NULL, panic_console, "");
	assert_non_null(strstr(m, "the guest kernel panicked: \"Kernel panic"));
	assert_non_null(strstr(m, "(by its console; the VMM gave no reason)"));
	free(m);
}

static void poweroff_and_reboot(void **state)
{
	char *m;

	(void)state;
	m = describe(0, "guest-shutdown", "x\r\n[    2.969569] reboot: Power down\r\n", NULL);
	assert_string_equal(m, "the guest powered off (QEMU: guest-shutdown); console, last 2 lines up to the "
			       "power-off: \"x\" \"reboot: Power down\"");
	free(m);
	/* QEMU says power-off: a panic line before it does not make it a panic */
	m = describe(0, "guest-shutdown", panic_console, NULL);
	assert_true(strncmp(m, "the guest powered off (QEMU: guest-shutdown); console, last ", 60) == 0);
	free(m);
	m = describe(0, "guest-reset", "[    2.941534] reboot: Restarting system\r\n", NULL);
	assert_string_equal(m, "the guest rebooted (QEMU: guest-reset); console, last line up to the reboot: "
			       "\"reboot: Restarting system\"");
	free(m);
	/* a reset with nothing that explains it (a triple fault) */
	m = describe(0, "guest-reset", "hello\n", NULL);
	assert_string_equal(m, "the guest reset itself, with no panic or reboot on its console (QEMU: guest-reset); "
			       "console, last line: \"hello\"");
	free(m);
	/* the last line that says how it ended counts: a reboot after a fake panic */
	m = describe(0, "guest-reset", "Kernel panic - not syncing: fake\nreboot: Restarting system\n", NULL);
	assert_true(strncmp(m, "the guest rebooted", 18) == 0);
	free(m);
}

static void host_side(void **state)
{
	char *m;

	(void)state;
	m = describe(0, "host-signal", panic_console,
		     "qemu-system-x86_64: terminating on signal 15 from pid 4321 (kill)\n");
	assert_string_equal(m, "the VMM ended on signal 15, SIGTERM, sent from the host");
	free(m);
	/* no event, but QEMU's log says it */
	m = describe(0, NULL, panic_console, "qemu-system-x86_64: terminating on signal 1 from pid 2 (x)\n");
	assert_string_equal(m, "the VMM ended on signal 1, SIGHUP, sent from the host");
	free(m);
	m = describe(1, NULL, NULL, "qemu-system-x86_64: -m 99999999: cannot allocate\n\n");
	assert_string_equal(m, "VMM exited unexpectedly (status 1); its log ends: "
			       "\"qemu-system-x86_64: -m 99999999: cannot allocate\"");
	free(m);
	m = describe(0, NULL, "", NULL);
	assert_string_equal(m, "VMM exited unexpectedly (status 0); the console has nothing to show");
	free(m);
	m = describe(EXIT_STATUS_UNKNOWN, NULL, "last words\n", NULL);
	assert_string_equal(m, "VMM exited unexpectedly (status unknown: a VMM re-adopted after a daemon restart); "
			       "console, last line: \"last words\"");
	free(m);
}

static void hostile_console(void **state)
{
	/* control bytes, escapes, bidi overrides, invalid UTF-8, quotes, a line that fakes our words */
	const char con[] = "\x1b[2J\x1b[31mred\x1b[0m\x07\x08 \xe2\x80\xae" "evil\xe2\x80\xac \xff\xfe\xc0\xaf end\r\n"
			   "x\" (QEMU: host-signal); console: \"\\ \x1b]0;title\x07 \xc2\x9b" "31m done\n"
			   "\xed\xa0\x80 surrogate \xf4\x90\x80\x80 too big \xe2\x80\xa8 sep\n"
			   "reboot: Restarting system\n";
	char *m;

	(void)state;
	m = describe(0, "guest-reset", con, NULL);
	assert_clean(m);
	assert_null(strstr(m, "\xe2\x80\xae"));
	assert_null(strstr(m, "\xe2\x80\xa8"));
	assert_null(strstr(m, "\xc2\x9b"));
	assert_non_null(strstr(m, "\"red evil \xef\xbf\xbd end\""));
	/* its quote and backslash are escaped: the quoted text never closes early */
	assert_non_null(strstr(m, "\"x\\\" (QEMU: host-signal); console: \\\"\\\\ 0;title 31m done\""));
	assert_non_null(strstr(m, "\"\xef\xbf\xbd surrogate \xef\xbf\xbd too big  sep\""));
	free(m);
}

static void bounds(void **state)
{
	char *con = malloc(EXIT_TAIL_BYTES + 1), *m;
	size_t quoted = 0;
	int lines = 0;

	(void)state;
	/* a tail of long lines: at most 8, each cut at 160 bytes (an ellipsis says so), 1 KiB in all */
	memset(con, 'a', EXIT_TAIL_BYTES);
	for (size_t i = 300; i < EXIT_TAIL_BYTES; i += 301)
		con[i] = '\n';
	con[EXIT_TAIL_BYTES] = '\0';
	m = describe(0, "guest-reset", con, NULL);
	assert_clean(m);
	for (const char *p = strstr(m, ": \"") + 2; p && *p == '"'; lines++) {
		const char *q = strchr(p + 1, '"');

		assert_non_null(q);
		assert_true(q - p - 1 <= 160 + 3); /* and the ellipsis */
		quoted += (size_t)(q - p + 1);
		p = q[1] ? q + 2 : NULL;
	}
	assert_true(lines >= 1 && lines <= EXIT_EXCERPT_LINES);
	assert_true(quoted <= EXIT_EXCERPT_BYTES);
	free(m);
	/* one huge line without a newline: its head, cut */
	memset(con, 'b', EXIT_TAIL_BYTES);
	m = describe(0, NULL, con, NULL);
	assert_true(strlen(m) < 400);
	free(m);
	free(con);
}

static void partial_first_line(void **state)
{
	/* a tail that does not start at the log's start: its cut first line is left out */
	struct exit_facts f = { .status = 0, .shutdown = "guest-reset", .console = "ernel panic - not syncing: x\nok\n",
				.console_len = 32, .console_whole = false };
	char *m = exit_cause_describe(&f);

	(void)state;
	assert_string_equal(m, "the guest reset itself, with no panic or reboot on its console (QEMU: guest-reset); "
			       "console, last line: \"ok\"");
	free(m);
}

static void clean_text(void **state)
{
	char out[16];

	(void)state;
	assert_int_equal(exit_text_clean("a\tb\x01", 4, out, sizeof(out)), 3);
	assert_string_equal(out, "a b");
	/* never cuts a character in two */
	assert_int_equal(exit_text_clean("\xc3\xa9\xc3\xa9", 4, out, 4), 2);
	assert_string_equal(out, "\xc3\xa9");
	/* a run of bad bytes is one replacement */
	assert_int_equal(exit_text_clean("\x80\x80\x80z", 4, out, sizeof(out)), 4);
	assert_string_equal(out, "\xef\xbf\xbdz");
	/* overlong and truncated sequences */
	exit_text_clean("\xe0\x80\xaf|\xe2\x82", 6, out, sizeof(out));
	assert_string_equal(out, "\xef\xbf\xbd|\xef\xbf\xbd");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(signal_wins),	       cmocka_unit_test(panic_reset),
		cmocka_unit_test(poweroff_and_reboot), cmocka_unit_test(host_side),
		cmocka_unit_test(hostile_console),     cmocka_unit_test(bounds),
		cmocka_unit_test(partial_first_line),  cmocka_unit_test(clean_text),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
