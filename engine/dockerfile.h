/*
 * A strict Dockerfile parser for template builds (engine/dockerfile.c).
 * Pure: no engine state, no I/O, no logging.
 *
 * Why hand-written: no C (or Python) library in Debian parses Dockerfiles,
 * only Go ones (moby/buildkit), and the daemon is C. The grammar taken here is
 * small (line continuations, comments, parser directives, words with shell-like
 * quoting, ${VAR} substitutions); exec forms are JSON and go through json-c.
 * Everything outside that subset is refused with the line it is on, never
 * ignored, so a Dockerfile that parses means what Docker would make of it.
 *
 * What is accepted, following the Dockerfile reference where it is simple:
 *  - Parser directives at the very top: "# escape=`" (or "\"), "# syntax=..."
 *    and "# check=..." (both ignored); each at most once. The first line that is
 *    not one of them ends the directives. A UTF-8 BOM and CRLF line ends are
 *    accepted.
 *  - Instructions case-insensitive; blank lines and lines starting with "#"
 *    (after blanks) ignored, also between continued lines; a line ending in the
 *    escape character (optionally followed by blanks) continues onto the next,
 *    joined as Docker does (the escape and the newline removed, nothing added).
 *  - ARG may come before FROM; then exactly one FROM; anything else before it,
 *    a second FROM or COPY --from (multi-stage builds) is refused.
 *  - Exec form: the arguments are a JSON array of strings (strict JSON);
 *    anything else starting with "[" is shell form, as in Docker.
 *  - Flags (leading "--name=value" words): only COPY/ADD --chown and --chmod
 *    (an octal mode, 0..7777).
 *  - Arguments split as Docker splits them: FROM, COPY/ADD (shell form) and
 *    EXPOSE on blanks only (quotes do not hold blanks: use COPY's JSON form);
 *    ENV, ARG and LABEL into shell-like KEY=VALUE words; WORKDIR, USER and
 *    the legacy "ENV KEY VALUE" / "LABEL KEY VALUE" value are the rest of the
 *    line, blanks included.
 *
 * Refused (-EOPNOTSUPP, "line N: X is not supported"): HEALTHCHECK, ONBUILD,
 * STOPSIGNAL, SHELL, VOLUME, MAINTAINER and unknown instructions; every other
 * flag (RUN --mount/--network/--security, FROM --platform, COPY --from/--link/
 * --parents/--exclude, ADD --checksum/--keep-git-dir, ...); heredocs (an
 * unquoted "<<" in RUN's shell form, a COPY/ADD word starting with "<<");
 * ADD from a URL; EXPOSE port ranges and protocols other than tcp and udp;
 * substitutions other than $VAR, ${VAR}, ${VAR:-word} and ${VAR:+word}
 * ($1, $@, ${VAR-word}, ${VAR:?word}, ${VAR#pattern}, ..., and a "$"
 * before a non-ASCII byte, which Docker may read as a name); variables in
 * EXPOSE, --chmod and LABEL keys (they are checked here, so must be literal).
 * Also refused where Docker silently does something else: an escape
 * character ending a blank-split word ("COPY a\ b /d" would copy a and b).
 * Syntax errors are -EINVAL; a Dockerfile over DOCKERFILE_SIZE_MAX, more than
 * DOCKERFILE_INSTR_MAX instructions or a line over DOCKERFILE_LINE_MAX are
 * -E2BIG; a NUL byte is -EINVAL.
 *
 * Words. The arguments Docker processes at build time (FROM's image, COPY/ADD
 * paths and --chown, ENV/ARG/LABEL values, WORKDIR, USER) are stored as
 * "words": quotes and escapes of the Dockerfile already removed (single quotes
 * literal, double quotes with \" \$ \\ escapes, the escape character outside
 * quotes), in the one syntax dockerfile_expand() reads: "$" starts a
 * substitution, "\" makes the next character literal (a literal $ is "\$", a
 * literal \ is "\\"). Always pass a word through dockerfile_expand() (with
 * the ARG and ENV values in effect, or NULL) to get its value; a word without
 * "$" or "\" is its own value. RUN, CMD and ENTRYPOINT are not words: the
 * shell (or the program) sees them as written, with ARG and ENV in its
 * environment, as in Docker.
 *
 * For the build pipeline (Docker's rules, not checked here): ARGs before FROM
 * are visible to FROM only, an ARG after FROM (re)declares one for the rest;
 * all values of one ENV (or ARG, LABEL) are expanded with what was in effect
 * before it ("ENV a=new b=$a" gives b the old a); a cache key needs the
 * expanded values of what a step uses (ARG and ENV in effect for RUN), not
 * only its text.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DOCKERFILE_SIZE_MAX (1024u * 1024u) /* bytes */
#define DOCKERFILE_INSTR_MAX 1000u
#define DOCKERFILE_LINE_MAX (64u * 1024u) /* bytes, a physical line without its newline */
#define DOCKERFILE_EXPAND_MAX (1024u * 1024u) /* bytes of one dockerfile_expand() result */

enum df_op {
	DF_FROM,
	DF_ARG,
	DF_RUN,
	DF_COPY,
	DF_ADD,
	DF_ENV,
	DF_WORKDIR,
	DF_USER,
	DF_CMD,
	DF_ENTRYPOINT,
	DF_EXPOSE,
	DF_LABEL,
	_DF_OP_MAX,
};

/* ENV, ARG, LABEL: one KEY=VALUE. */
struct df_kv {
	char *key;   /* ENV, ARG: [A-Za-z_][A-Za-z0-9_]*; LABEL: [A-Za-z0-9][A-Za-z0-9._/-]* (literal, not a word) */
	char *value; /* a word; NULL only for an ARG without a default */
};

/* EXPOSE: one port. */
struct df_port {
	uint16_t port; /* 1..65535 */
	bool udp;      /* "/udp"; "/tcp" or nothing is tcp */
};

/*
 * One instruction. Fields an op does not use are NULL, 0, or -1 for chmod.
 *   FROM        arg (the image, a word), name (the stage of "AS NAME", lowercased, or NULL)
 *   ARG         kvs (value NULL when no default)
 *   RUN         argv (exec form, at least one element) or shell (shell form)
 *   CMD,
 *   ENTRYPOINT  argv (exec form, may be empty: "[]") or shell
 *   COPY, ADD   srcs (words, at least one), dst (a word), chown (a word or NULL),
 *               chmod (the --chmod mode 0..07777, or -1)
 *   ENV, LABEL  kvs (at least one)
 *   WORKDIR,
 *   USER        arg (a word: the rest of the line, blanks included)
 *   EXPOSE      ports (at least one)
 */
struct df_instr {
	enum df_op op;
	unsigned line; /* 1-based line where it starts */
	/*
	 * Normalized text: the instruction's name upper-cased, one space, its
	 * arguments as written with continuations joined, comment lines removed
	 * and outer blanks trimmed ("RUN apt-get update &&   apt-get install x").
	 * For the build log and, with the escape character, cache keys.
	 */
	char *text;
	char **argv;  /* NULL-terminated */
	char *shell;
	char **srcs;  /* NULL-terminated */
	char *dst;
	char *chown;
	int chmod;
	struct df_kv *kvs;
	size_t n_kvs;
	char *arg;
	char *name;
	struct df_port *ports;
	size_t n_ports;
};

struct dockerfile {
	struct df_instr *v; /* ARGs, then FROM, then the rest */
	size_t n;           /* 1..DOCKERFILE_INSTR_MAX after a successful parse */
	char escape;        /* the escape character in effect: '\\' or '`' */
};

/*
 * Parses len bytes of text (NULL is allowed when len is 0). Returns 0 and
 * fills *ret, or a negative errno (see above) and, if ret_error is not NULL,
 * sets *ret_error to a message naming the line ("line 7: VOLUME is not
 * supported"; NULL if out of memory; the caller frees it). *ret is written
 * only on success, *ret_error only on failure.
 */
int dockerfile_parse(const char *text, size_t len, struct dockerfile *ret, char **ret_error);

/* Frees everything dockerfile_parse() put in df and zeroes it. Idempotent; accepts NULL. */
void dockerfile_clear(struct dockerfile *df);

/*
 * Expands a word: $VAR and ${VAR} (empty when unset), ${VAR:-word} (word when
 * VAR is unset or empty), ${VAR:+word} (word when VAR is set and non-empty),
 * words nesting up to 16 deep; "\" makes the next character literal; a "$"
 * not followed by a name or "{" is literal. vars is a NULL-terminated array
 * of "KEY=VALUE" strings (the ARG and ENV values in effect, already
 * expanded; the last one of a key wins; entries without "=" are skipped), or
 * NULL. Values are inserted as they are, never expanded again.
 * Returns 0 and a new string in *ret; -EINVAL for a malformed word, -E2BIG
 * when the result would exceed DOCKERFILE_EXPAND_MAX, -ENOMEM.
 */
int dockerfile_expand(const char *in, char *const *vars, char **ret);

/*
 * A user for USER or --chown after expansion: NAME or NAME:GROUP, each a
 * name or a number ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 32 bytes).
 * The parser checks the ones written without variables. 0 or -EINVAL.
 */
int dockerfile_user_check(const char *user);

/* "FROM", "RUN", ...; NULL for an unknown op. */
const char *df_op_name(enum df_op op);
