/* The Dockerfile parser (engine/dockerfile.c): every instruction and form, the refusals, expansion. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dockerfile.h"

/* Parses s, which must succeed; the caller clears df. */
static void parse_ok(const char *s, struct dockerfile *df)
{
	char *err = NULL;
	int r = dockerfile_parse(s, strlen(s), df, &err);

	if (r < 0)
		print_message("unexpected error %d: %s\n", r, err ? err : "(none)");
	assert_int_equal(r, 0);
	assert_null(err); /* written only on failure */
}

/* Parses len bytes of s, which must fail with r and a message starting with msg; nothing is returned. */
static void refused_len(const char *s, size_t len, int r, const char *msg)
{
	struct dockerfile df = { .n = 12345 };
	char *err = NULL;
	int got = dockerfile_parse(s, len, &df, &err);

	if (got != r || !err || strncmp(err, msg, strlen(msg)) != 0)
		print_message("input: %.200s\nexpected %d \"%s\", got %d \"%s\"\n", s, r, msg, got, err ? err : "(null)");
	assert_int_equal(got, r);
	assert_non_null(err);
	assert_true(strncmp(err, msg, strlen(msg)) == 0);
	assert_int_equal(df.n, 12345); /* *ret written only on success */
	assert_null(df.v);
	free(err);
}

static void refused(const char *s, int r, const char *msg)
{
	refused_len(s, strlen(s), r, msg);
}

static void expands(const char *in, char *const *vars, const char *want)
{
	char *out = NULL;
	int r = dockerfile_expand(in, vars, &out);

	if (r < 0 || strcmp(out, want) != 0)
		print_message("expand \"%s\": %d \"%s\", want \"%s\"\n", in, r, out ? out : "(null)", want);
	assert_int_equal(r, 0);
	assert_string_equal(out, want);
	free(out);
}

/* The one value of a word, expanded with vars. */
static void word_is(const char *word, char *const *vars, const char *want)
{
	expands(word, vars, want);
}

static void minimal(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM debian:12\n", &df);
	assert_int_equal(df.n, 1);
	assert_int_equal(df.escape, '\\');
	assert_int_equal(df.v[0].op, DF_FROM);
	assert_int_equal(df.v[0].line, 1);
	assert_string_equal(df.v[0].text, "FROM debian:12");
	assert_string_equal(df.v[0].arg, "debian:12");
	assert_null(df.v[0].name);
	assert_int_equal(df.v[0].chmod, -1);
	dockerfile_clear(&df);
	/* no final newline, NULL error pointer */
	assert_int_equal(dockerfile_parse("FROM x", 6, &df, NULL), 0);
	assert_int_equal(df.n, 1);
	dockerfile_clear(&df);
}

static void from_forms(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM debian:12 AS Build_1.x\n", &df);
	assert_string_equal(df.v[0].arg, "debian:12");
	assert_string_equal(df.v[0].name, "build_1.x");
	dockerfile_clear(&df);
	parse_ok("from base as b\n", &df);
	assert_string_equal(df.v[0].name, "b");
	dockerfile_clear(&df);
	parse_ok("ARG V=12\nFROM debian:${V}\n", &df);
	assert_int_equal(df.v[0].op, DF_ARG);
	assert_int_equal(df.v[1].op, DF_FROM);
	assert_string_equal(df.v[1].arg, "debian:${V}");
	{
		char *vars[] = { "V=12", NULL };

		word_is(df.v[1].arg, vars, "debian:12");
	}
	dockerfile_clear(&df);
	refused("FROM a b\n", -EINVAL, "line 1: FROM takes an image");
	refused("FROM a AS\n", -EINVAL, "line 1: FROM takes an image");
	refused("FROM a AS b c\n", -EINVAL, "line 1: FROM takes an image");
	refused("FROM a AS 1b\n", -EINVAL, "line 1: invalid stage name");
	refused("FROM a AS b/c\n", -EINVAL, "line 1: invalid stage name");
	refused("FROM \"\"\n", -EINVAL, "line 1: FROM needs an image");
	refused("FROM\n", -EINVAL, "line 1: FROM needs arguments");
}

static void case_comments_lines(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("# a comment\n\n   # indented comment\nfRoM x\n\n\trun   echo hi # not a comment  \n", &df);
	assert_int_equal(df.n, 2);
	assert_int_equal(df.v[0].line, 4);
	assert_int_equal(df.v[1].op, DF_RUN);
	assert_int_equal(df.v[1].line, 6);
	assert_string_equal(df.v[1].text, "RUN echo hi # not a comment");
	assert_string_equal(df.v[1].shell, "echo hi # not a comment");
	dockerfile_clear(&df);
	/* CRLF and a byte order mark */
	parse_ok("\xef\xbb\xbf" "FROM x\r\nRUN a \\\r\n b\r\n", &df);
	assert_int_equal(df.n, 2);
	assert_string_equal(df.v[0].arg, "x");
	assert_string_equal(df.v[1].shell, "a  b");
	dockerfile_clear(&df);
}

static void continuations(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM x\n"
		 "RUN apt-get update && \\\n"
		 "  # a comment inside\n"
		 "\n"
		 "    # another \\\n"
		 "  apt-get install -y a \\  \n"
		 "\tb\n"
		 "ENV A=1\n",
		 &df);
	assert_int_equal(df.n, 3);
	assert_int_equal(df.v[1].line, 2);
	assert_string_equal(df.v[1].shell, "apt-get update &&   apt-get install -y a \tb");
	assert_string_equal(df.v[1].text, "RUN apt-get update &&   apt-get install -y a \tb");
	assert_int_equal(df.v[2].line, 8);
	dockerfile_clear(&df);
	/* continued keyword and arguments; a continuation at the end of the file ends the instruction */
	parse_ok("FR\\\nOM x\nRUN echo \\\n", &df);
	assert_string_equal(df.v[0].arg, "x");
	assert_string_equal(df.v[1].shell, "echo");
	assert_int_equal(df.n, 2);
	dockerfile_clear(&df);
	/* a line of only the escape character starts an instruction on the next */
	parse_ok("FROM x\n\\\n  RUN y\n", &df);
	assert_int_equal(df.v[1].line, 2);
	assert_string_equal(df.v[1].text, "RUN y");
	dockerfile_clear(&df);
	/* an escaped escape at the end of a line still continues, as in Docker */
	parse_ok("FROM x\nRUN echo \\\\\nhi\n", &df);
	assert_string_equal(df.v[1].shell, "echo \\hi");
	dockerfile_clear(&df);
	/* a continued ENV value */
	parse_ok("FROM x\nENV A=1 \\\n    B=2\n", &df);
	assert_int_equal(df.v[1].n_kvs, 2);
	assert_string_equal(df.v[1].kvs[1].key, "B");
	dockerfile_clear(&df);
}

static void directives(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("# escape=`\n"
		 "FROM x\n"
		 "RUN dir c:\\ `\n"
		 "  && echo \\done\n"
		 "ENV P=c:\\dir Q=a`\"b`$c R=\"x`\"y\"\n"
		 "WORKDIR c:\\app\n",
		 &df);
	assert_int_equal(df.escape, '`');
	assert_string_equal(df.v[1].shell, "dir c:\\   && echo \\done");
	assert_string_equal(df.v[2].kvs[0].value, "c:\\\\dir");
	word_is(df.v[2].kvs[0].value, NULL, "c:\\dir");
	word_is(df.v[2].kvs[1].value, NULL, "a\"b$c");
	word_is(df.v[2].kvs[2].value, NULL, "x\"y");
	word_is(df.v[3].arg, NULL, "c:\\app");
	dockerfile_clear(&df);
	/* spelling, syntax and check ignored */
	parse_ok("#  ESCAPE =  `  \n# syntax=docker/dockerfile:1\n#check=skip=all\nFROM x\nRUN a `\n b\n", &df);
	assert_int_equal(df.escape, '`');
	assert_string_equal(df.v[1].shell, "a  b");
	dockerfile_clear(&df);
	/* after a comment, a blank line or an unknown directive, directives are comments */
	parse_ok("# hello\n# escape=`\nFROM x\nRUN a \\\n b\n", &df);
	assert_int_equal(df.escape, '\\');
	assert_string_equal(df.v[1].shell, "a  b");
	dockerfile_clear(&df);
	parse_ok("\n# escape=`\nFROM x\n", &df);
	assert_int_equal(df.escape, '\\');
	dockerfile_clear(&df);
	parse_ok("# foo=bar\n# escape=`\nFROM x\n", &df);
	assert_int_equal(df.escape, '\\');
	dockerfile_clear(&df);
	parse_ok("  # escape = `\n# escape=\nFROM x\n", &df); /* blanks before "#"; no value: a comment */
	assert_int_equal(df.escape, '`');
	dockerfile_clear(&df);
	parse_ok("# syntax=a\n# escape=\\\nFROM x\n", &df);
	assert_int_equal(df.escape, '\\');
	dockerfile_clear(&df);
	refused("# escape=`\n# escape=\\\nFROM x\n", -EINVAL, "line 2: only one escape parser directive");
	refused("# syntax=a\n# SYNTAX=b\nFROM x\n", -EINVAL, "line 2: only one SYNTAX parser directive");
	refused("# escape=x\nFROM x\n", -EINVAL, "line 1: the escape directive takes");
	refused("# escape=``\nFROM x\n", -EINVAL, "line 1: the escape directive takes");
}

static void exec_and_shell(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM x\n"
		 "RUN [\"echo\", \"a b\", \"\\u00e9\\n\"]\n"
		 "RUN [ -f /etc/os-release ] && echo yes\n"
		 "CMD [\"a\", 1]\n"
		 "CMD []\n"
		 "ENTRYPOINT [\"/bin/sh\",\"-c\"]  \n"
		 "ENTRYPOINT exec top -b\n"
		 "CMD [\"a\"] trailing\n"
		 "CMD ['a']\n"
		 "RUN [\"a\", /* c */ \"b\"]\n",
		 &df);
	assert_int_equal(df.n, 10);
	assert_non_null(df.v[1].argv);
	assert_null(df.v[1].shell);
	assert_string_equal(df.v[1].argv[0], "echo");
	assert_string_equal(df.v[1].argv[1], "a b");
	assert_string_equal(df.v[1].argv[2], "\xc3\xa9\n");
	assert_null(df.v[1].argv[3]);
	assert_null(df.v[2].argv);
	assert_string_equal(df.v[2].shell, "[ -f /etc/os-release ] && echo yes");
	assert_string_equal(df.v[3].shell, "[\"a\", 1]"); /* not an array of strings: shell form */
	assert_non_null(df.v[4].argv);                    /* CMD []: an empty command */
	assert_null(df.v[4].argv[0]);
	assert_string_equal(df.v[5].argv[1], "-c");
	assert_null(df.v[5].argv[2]);
	assert_string_equal(df.v[6].shell, "exec top -b");
	assert_string_equal(df.v[7].shell, "[\"a\"] trailing");
	assert_string_equal(df.v[8].shell, "['a']");  /* strict JSON */
	assert_string_equal(df.v[9].shell, "[\"a\", /* c */ \"b\"]");
	dockerfile_clear(&df);
	refused("FROM x\nRUN []\n", -EINVAL, "line 2: RUN needs a command");
	refused("FROM x\nRUN\n", -EINVAL, "line 2: RUN needs arguments");
	refused("FROM x\nCMD [\"a\\u0000b\"]\n", -EINVAL, "line 2: a NUL character in the exec form");
}

static void copy_add(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM x\n"
		 "COPY --chown=app:app --chmod=0644 a b* /dst/\n"
		 "COPY [\"a b\", \"$D/\"]\n"
		 "ADD --chmod=755 --chown=1000 files.tar \"/opt/dir\"\n"
		 "COPY --chown=$U:$G a'b'\\* /d\n"
		 "add x y\n",
		 &df);
	assert_int_equal(df.v[1].op, DF_COPY);
	assert_string_equal(df.v[1].text, "COPY --chown=app:app --chmod=0644 a b* /dst/");
	assert_string_equal(df.v[1].chown, "app:app");
	assert_int_equal(df.v[1].chmod, 0644);
	assert_string_equal(df.v[1].srcs[0], "a");
	assert_string_equal(df.v[1].srcs[1], "b*");
	assert_null(df.v[1].srcs[2]);
	assert_string_equal(df.v[1].dst, "/dst/");
	assert_string_equal(df.v[2].srcs[0], "a b");
	assert_null(df.v[2].srcs[1]);
	assert_string_equal(df.v[2].dst, "${D}/");
	assert_null(df.v[2].chown);
	assert_int_equal(df.v[2].chmod, -1);
	assert_int_equal(df.v[3].op, DF_ADD);
	assert_int_equal(df.v[3].chmod, 0755);
	assert_string_equal(df.v[3].chown, "1000");
	assert_string_equal(df.v[3].dst, "/opt/dir");
	assert_string_equal(df.v[4].chown, "${U}:${G}");
	assert_string_equal(df.v[4].srcs[0], "ab*");
	assert_int_equal(df.v[5].op, DF_ADD);
	dockerfile_clear(&df);

	refused("FROM x\nCOPY a\n", -EINVAL, "line 2: COPY needs a source and a destination");
	refused("FROM x\nCOPY [\"a\"]\n", -EINVAL, "line 2: COPY needs a source and a destination");
	refused("FROM x\nCOPY a \"\"\n", -EINVAL, "line 2: COPY: an empty path");
	refused("FROM x\nCOPY \"a b\" /d\n", -EINVAL, "line 2: unterminated double quote"); /* as Docker: JSON for blanks */
	refused("FROM x\nCOPY a\\ b /d\n", -EINVAL, "line 2: an escape character ends a word");
	refused("FROM x\nCOPY --chmod=888 a b\n", -EINVAL, "line 2: --chmod: expected an octal mode");
	refused("FROM x\nCOPY --chmod=17777 a b\n", -EINVAL, "line 2: --chmod: expected an octal mode");
	refused("FROM x\nCOPY --chmod=u+x a b\n", -EINVAL, "line 2: --chmod: expected an octal mode");
	refused("FROM x\nCOPY --chmod= a b\n", -EINVAL, "line 2: --chmod: expected an octal mode");
	refused("FROM x\nCOPY --chmod=$M a b\n", -EOPNOTSUPP, "line 2: variables in --chmod are not supported");
	refused("FROM x\nCOPY --chmod a b\n", -EINVAL, "line 2: --chmod needs a value");
	refused("FROM x\nCOPY --chmod=1 --chmod=2 a b\n", -EINVAL, "line 2: --chmod given twice");
	refused("FROM x\nCOPY --chown=a --chown=b a b\n", -EINVAL, "line 2: --chown given twice");
	refused("FROM x\nCOPY --chown=a:b:c a b\n", -EINVAL, "line 2: --chown: expected USER or USER:GROUP");
	refused("FROM x\nCOPY --chown=a; a b\n", -EINVAL, "line 2: --chown: expected USER or USER:GROUP");
	refused("FROM x\nCOPY --chown= a b\n", -EINVAL, "line 2: --chown: expected USER or USER:GROUP");
	refused("FROM x\nCOPY --chown=:g a b\n", -EINVAL, "line 2: --chown: expected USER or USER:GROUP");
	refused("FROM x\nCOPY --chown\n", -EINVAL, "line 2: --chown needs a value");
	refused("FROM x\nCOPY --chown=a\n", -EINVAL, "line 2: COPY needs arguments");
}

static void env(void **state)
{
	struct dockerfile df = { 0 };
	char *vars[] = { "HOME=/root", NULL };

	(void)state;
	parse_ok("FROM x\n"
		 "ENV K=V K2=\"v 2\" K3=a\\ b K4='$x \"q\"' K5=\"$HOME/x\" K6= _k7=\"a\\\"b\\$c\\\\d\\e\"\n"
		 "ENV MY_VAR some value  with \"quotes\"  \n"
		 "ENV A=${HOME:-/}x${U:+y}z\n"
		 "ENV A=${U:-'}'}\n"
		 "env Q \"one\"\n",
		 &df);
	assert_int_equal(df.v[1].n_kvs, 7);
	assert_string_equal(df.v[1].kvs[0].key, "K");
	assert_string_equal(df.v[1].kvs[0].value, "V");
	assert_string_equal(df.v[1].kvs[1].value, "v 2");
	assert_string_equal(df.v[1].kvs[2].value, "a b");
	assert_string_equal(df.v[1].kvs[3].value, "\\$x \"q\"");
	word_is(df.v[1].kvs[3].value, vars, "$x \"q\"");
	assert_string_equal(df.v[1].kvs[4].value, "${HOME}/x");
	word_is(df.v[1].kvs[4].value, vars, "/root/x");
	assert_string_equal(df.v[1].kvs[5].key, "K6");
	assert_string_equal(df.v[1].kvs[5].value, "");
	assert_string_equal(df.v[1].kvs[6].key, "_k7");
	word_is(df.v[1].kvs[6].value, vars, "a\"b$c\\d\\e");
	assert_int_equal(df.v[2].n_kvs, 1);
	assert_string_equal(df.v[2].kvs[0].key, "MY_VAR");
	assert_string_equal(df.v[2].kvs[0].value, "some value  with quotes");
	assert_string_equal(df.v[3].kvs[0].value, "${HOME:-/}x${U:+y}z");
	word_is(df.v[3].kvs[0].value, vars, "/rootxz");
	word_is(df.v[4].kvs[0].value, NULL, "}");
	assert_string_equal(df.v[5].kvs[0].value, "one");
	dockerfile_clear(&df);

	refused("FROM x\nENV 1A=x\n", -EINVAL, "line 2: ENV: invalid name");
	refused("FROM x\nENV A-B=x\n", -EINVAL, "line 2: ENV: invalid name");
	refused("FROM x\nENV =x\n", -EINVAL, "line 2: ENV: invalid name");
	refused("FROM x\nENV \"A\"=x\n", -EINVAL, "line 2: ENV: invalid name");
	refused("FROM x\nENV A=1 B\n", -EINVAL, "line 2: ENV: expected KEY=VALUE");
	refused("FROM x\nENV A\n", -EINVAL, "line 2: ENV needs a value");
	refused("FROM x\nENV A-B value\n", -EINVAL, "line 2: ENV: invalid name");
	refused("FROM x\nENV A \"x\n", -EINVAL, "line 2: unterminated double quote");
	refused("FROM x\nENV A=\"x\n", -EINVAL, "line 2: unterminated double quote");
	refused("FROM x\nENV A='x\n", -EINVAL, "line 2: unterminated single quote");
	refused("FROM x\nENV A=${B\n", -EINVAL, "line 2: missing } in a substitution");
	refused("FROM x\nENV A=${B:-x\n", -EINVAL, "line 2: missing } in a substitution");
	refused("FROM x\nENV A=${}\n", -EINVAL, "line 2: bad substitution");
	refused("FROM x\nENV A=${1}\n", -EINVAL, "line 2: bad substitution");
	refused("FROM x\nENV A=${B:?err}\n", -EOPNOTSUPP, "line 2: this substitution is not supported");
	refused("FROM x\nENV A=${B-x}\n", -EOPNOTSUPP, "line 2: this substitution is not supported");
	refused("FROM x\nENV A=${B#x}\n", -EOPNOTSUPP, "line 2: this substitution is not supported");
	refused("FROM x\nENV A=$1\n", -EOPNOTSUPP, "line 2: $1 is not supported");
	refused("FROM x\nENV A=$@\n", -EOPNOTSUPP, "line 2: $@ is not supported");
	refused("FROM x\nENV A=\"$\xc3\xa9\"\n", -EOPNOTSUPP, "line 2: non-ASCII variable names are not supported");
	refused("FROM x\nENV A=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-"
		"${A:-x}}}}}}}}}}}}}}}}}\n",
		-EINVAL, "line 2: substitutions nested more than 16 deep");
}

static void arg_label(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("ARG A\n"
		 "ARG B=1 C=\"x y\" D\n"
		 "FROM x\n"
		 "ARG A\n"
		 "LABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0 org.opencontainers.image/x-y=z\n"
		 "LABEL description This is a  label\n",
		 &df);
	assert_int_equal(df.n, 6);
	assert_int_equal(df.v[0].op, DF_ARG);
	assert_int_equal(df.v[0].n_kvs, 1);
	assert_string_equal(df.v[0].kvs[0].key, "A");
	assert_null(df.v[0].kvs[0].value);
	assert_int_equal(df.v[1].n_kvs, 3);
	assert_string_equal(df.v[1].kvs[0].value, "1");
	assert_string_equal(df.v[1].kvs[1].value, "x y");
	assert_null(df.v[1].kvs[2].value);
	assert_int_equal(df.v[3].op, DF_ARG);
	assert_int_equal(df.v[4].op, DF_LABEL);
	assert_int_equal(df.v[4].n_kvs, 3);
	assert_string_equal(df.v[4].kvs[0].key, "com.example.vendor");
	assert_string_equal(df.v[4].kvs[0].value, "ACME Inc");
	assert_string_equal(df.v[4].kvs[1].key, "version");
	assert_string_equal(df.v[4].kvs[2].key, "org.opencontainers.image/x-y");
	assert_string_equal(df.v[5].kvs[0].key, "description");
	assert_string_equal(df.v[5].kvs[0].value, "This is a  label");
	dockerfile_clear(&df);
	refused("ARG 9=1\nFROM x\n", -EINVAL, "line 1: ARG: invalid name");
	refused("ARG A=\"1\nFROM x\n", -EINVAL, "line 1: unterminated double quote");
	refused("FROM x\nLABEL a=b c\n", -EINVAL, "line 2: LABEL: expected KEY=VALUE");
	refused("FROM x\nLABEL \"a b\"=c\n", -EINVAL, "line 2: LABEL: invalid key");
	refused("FROM x\nLABEL .a=c\n", -EINVAL, "line 2: LABEL: invalid key");
	refused("FROM x\nLABEL $K=c\n", -EOPNOTSUPP, "line 2: variables in LABEL keys are not supported");
	refused("FROM x\nLABEL k\n", -EINVAL, "line 2: LABEL needs a value");
}

static void workdir_user_expose(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM x\n"
		 "WORKDIR /my app\n"
		 "WORKDIR \"$HOME/x\"\n"
		 "USER app:app\n"
		 "USER 1000\n"
		 "USER ${U}\n"
		 "EXPOSE 80 53/udp 443/TCP 8080/tcp 65535\n",
		 &df);
	assert_string_equal(df.v[1].arg, "/my app");
	assert_string_equal(df.v[2].arg, "${HOME}/x");
	assert_string_equal(df.v[3].arg, "app:app");
	assert_string_equal(df.v[4].arg, "1000");
	assert_string_equal(df.v[5].arg, "${U}");
	assert_int_equal(df.v[6].n_ports, 5);
	assert_int_equal(df.v[6].ports[0].port, 80);
	assert_false(df.v[6].ports[0].udp);
	assert_int_equal(df.v[6].ports[1].port, 53);
	assert_true(df.v[6].ports[1].udp);
	assert_int_equal(df.v[6].ports[2].port, 443);
	assert_false(df.v[6].ports[2].udp);
	assert_false(df.v[6].ports[3].udp);
	assert_int_equal(df.v[6].ports[4].port, 65535);
	dockerfile_clear(&df);
	assert_int_equal(dockerfile_user_check("root"), 0);
	assert_int_equal(dockerfile_user_check("a_b.c-d:0"), 0);
	assert_int_equal(dockerfile_user_check(""), -EINVAL);
	assert_int_equal(dockerfile_user_check("a:"), -EINVAL);
	assert_int_equal(dockerfile_user_check("-a"), -EINVAL);
	assert_int_equal(dockerfile_user_check("a b"), -EINVAL);
	assert_int_equal(dockerfile_user_check("abcdefghijabcdefghijabcdefghijabc"), -EINVAL); /* 33 */
	assert_int_equal(dockerfile_user_check(NULL), -EINVAL);

	refused("FROM x\nWORKDIR \"\"\n", -EINVAL, "line 2: WORKDIR needs an argument");
	refused("FROM x\nUSER a b\n", -EINVAL, "line 2: USER: expected NAME or NAME:GROUP");
	refused("FROM x\nUSER a:b:c\n", -EINVAL, "line 2: USER: expected NAME or NAME:GROUP");
	refused("FROM x\nEXPOSE 0\n", -EINVAL, "line 2: EXPOSE: invalid port");
	refused("FROM x\nEXPOSE 65536\n", -EINVAL, "line 2: EXPOSE: invalid port");
	refused("FROM x\nEXPOSE 1000000\n", -EINVAL, "line 2: EXPOSE: invalid port");
	refused("FROM x\nEXPOSE http\n", -EINVAL, "line 2: EXPOSE: invalid port");
	refused("FROM x\nEXPOSE 80/\n", -EOPNOTSUPP, "line 2: EXPOSE: only tcp and udp");
	refused("FROM x\nEXPOSE 80/sctp\n", -EOPNOTSUPP, "line 2: EXPOSE: only tcp and udp");
	refused("FROM x\nEXPOSE 80:81\n", -EINVAL, "line 2: EXPOSE: invalid port");
	refused("FROM x\nEXPOSE 8000-8010\n", -EOPNOTSUPP, "line 2: EXPOSE port ranges are not supported");
	refused("FROM x\nEXPOSE $PORT\n", -EOPNOTSUPP, "line 2: variables in EXPOSE are not supported");
}

static void refusals(void **state)
{
	static const char *const unsupported[] = { "HEALTHCHECK CMD true", "ONBUILD RUN x", "STOPSIGNAL TERM",
						   "SHELL [\"bash\", \"-c\"]", "VOLUME /data", "MAINTAINER me" };
	char buf[128], want[128];

	(void)state;
	for (size_t i = 0; i < sizeof(unsupported) / sizeof(*unsupported); i++) {
		snprintf(buf, sizeof(buf), "FROM x\n\nRUN true\n%s\n", unsupported[i]);
		snprintf(want, sizeof(want), "line 4: %.*s is not supported", (int)strcspn(unsupported[i], " "),
			 unsupported[i]);
		refused(buf, -EOPNOTSUPP, want);
	}
	refused("FROM x\nhealthcheck NONE\n", -EOPNOTSUPP, "line 2: HEALTHCHECK is not supported");
	refused("FROM x\nFOO bar\n", -EOPNOTSUPP, "line 2: FOO is not supported");
	refused("FROM x\nRUN echo \\\n  a\nfoo\x01\xff bar\n", -EOPNOTSUPP, "line 4: FOO?? is not supported");
	refused("FROM x\nRUN --mount=type=cache,target=/c make\n", -EOPNOTSUPP, "line 2: RUN --mount is not supported");
	refused("FROM x\nRUN --network=none make\n", -EOPNOTSUPP, "line 2: RUN --network is not supported");
	refused("FROM x\nRUN --security=insecure make\n", -EOPNOTSUPP, "line 2: RUN --security is not supported");
	refused("FROM x\nCOPY --from=build /a /b\n", -EOPNOTSUPP,
		"line 2: COPY --from is not supported (multi-stage builds are not supported)");
	refused("FROM x\nCOPY --link a b\n", -EOPNOTSUPP, "line 2: COPY --link is not supported");
	refused("FROM x\nCOPY --parents a b\n", -EOPNOTSUPP, "line 2: COPY --parents is not supported");
	refused("FROM x\nADD --checksum=sha256:0 a b\n", -EOPNOTSUPP, "line 2: ADD --checksum is not supported");
	refused("FROM x\nADD --keep-git-dir=true a b\n", -EOPNOTSUPP, "line 2: ADD --keep-git-dir is not supported");
	refused("FROM --platform=linux/amd64 x\n", -EOPNOTSUPP, "line 1: FROM --platform is not supported");
	refused("FROM x\nCMD --help\n", -EOPNOTSUPP, "line 2: CMD --help is not supported");
	refused("FROM x\nRUN <<EOF\necho hi\nEOF\n", -EOPNOTSUPP, "line 2: heredocs (<<) are not supported");
	refused("FROM x\nRUN cat <<-EOF > /x\n", -EOPNOTSUPP, "line 2: heredocs (<<) are not supported");
	refused("FROM x\nRUN cat<<EOF\n", -EOPNOTSUPP, "line 2: heredocs (<<) are not supported");
	refused("FROM x\nCOPY <<EOF /x\nhi\nEOF\n", -EOPNOTSUPP, "line 2: heredocs (<<) are not supported");
	refused("FROM x\nADD https://example.com/a.tgz /x\n", -EOPNOTSUPP, "line 2: ADD from a URL is not supported");
	refused("FROM x\nADD git@github.com:a/b.git /x\n", -EOPNOTSUPP, "line 2: ADD from a URL is not supported");
	refused("FROM x\nRUN a\nFROM y\n", -EOPNOTSUPP,
		"line 3: a second FROM is not supported (multi-stage builds are not supported)");
	refused("RUN a\nFROM x\n", -EINVAL, "line 1: RUN before FROM");
	refused("# c\nENV A=1\nFROM x\n", -EINVAL, "line 2: ENV before FROM");
	refused("ARG A\n", -EINVAL, "the Dockerfile has no FROM instruction");
	refused("", -EINVAL, "the Dockerfile has no FROM instruction");
	refused("# only a comment\n\n", -EINVAL, "the Dockerfile has no FROM instruction");
	refused_len("FROM x\nRUN a\0b\n", 14, -EINVAL, "line 2: a NUL byte");
	{
		struct dockerfile df;

		assert_int_equal(dockerfile_parse(NULL, 1, &df, NULL), -EINVAL);
	}
}

/* What is not a heredoc: quoted, or a here-string. */
static void not_heredocs(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("FROM x\nRUN echo '<<EOF' \"a<<b\" \\<<c && cat <<< hi\nRUN [\"sh\", \"-c\", \"cat <<EOF\"]\nCMD cat <<EOF\n",
		 &df);
	assert_int_equal(df.n, 4);
	dockerfile_clear(&df);
}

static void bounds(void **state)
{
	struct dockerfile df = { 0 };
	/* static: GCC's -Warray-bounds under ASan takes a malloc it cannot see fail-checked for size 0 */
	static char s[2 * DOCKERFILE_SIZE_MAX];
	size_t len;
	char want[64];

	(void)state;
	/* 1000 instructions pass, 1001 do not */
	len = (size_t)sprintf(s, "FROM x\n");
	for (unsigned i = 1; i < DOCKERFILE_INSTR_MAX; i++)
		len += (size_t)sprintf(s + len, "RUN %u\n", i);
	parse_ok(s, &df);
	assert_int_equal(df.n, DOCKERFILE_INSTR_MAX);
	assert_string_equal(df.v[DOCKERFILE_INSTR_MAX - 1].shell, "999");
	dockerfile_clear(&df);
	len += (size_t)sprintf(s + len, "\nRUN too many\n");
	refused(s, -E2BIG, "line 1002: more than 1000 instructions");

	/* a line of exactly 64 KiB passes (CR included), one byte more does not */
	len = (size_t)sprintf(s, "FROM x\nRUN ");
	memset(s + len, 'a', DOCKERFILE_LINE_MAX - 4);
	len += DOCKERFILE_LINE_MAX - 4;
	strcpy(s + len, "\nRUN b\n");
	parse_ok(s, &df);
	assert_int_equal(strlen(df.v[1].shell), DOCKERFILE_LINE_MAX - 4);
	dockerfile_clear(&df);
	memcpy(s + len, "a\nRUN b\n", 9);
	refused(s, -E2BIG, "line 2: longer than 65536 bytes");

	/* a Dockerfile of exactly 1 MiB passes, one byte more does not */
	len = (size_t)sprintf(s, "FROM x\n");
	for (; len < DOCKERFILE_SIZE_MAX; len++)
		s[len] = len % 64 == 0 ? '\n' : '#';
	s[len] = '\0';
	s[len - 1] = '\n';
	parse_ok(s, &df);
	dockerfile_clear(&df);
	s[len++] = '\n';
	s[len] = '\0';
	snprintf(want, sizeof(want), "the Dockerfile is larger than %u bytes", DOCKERFILE_SIZE_MAX);
	refused(s, -E2BIG, want);
}

static void expansion(void **state)
{
	char *vars[] = { "A=a", "E=", "B=b", "A=last", "NOEQ", "S=$A\\x}", NULL };
	char big[256];
	char *out;

	(void)state;
	expands("", vars, "");
	expands("plain", vars, "plain");
	expands("$A", vars, "last"); /* the last one of a key wins */
	expands("${A}", vars, "last");
	expands("x${B}y$B-z", vars, "xbyb-z");
	expands("$Bc", vars, "");     /* the name is Bc */
	expands("${U}|$U|$NOEQ", vars, "||");
	expands("${A:-d}", vars, "last");
	expands("${U:-d}", vars, "d");
	expands("${E:-d}", vars, "d");
	expands("${A:+w}", vars, "w");
	expands("${U:+w}", vars, "");
	expands("${E:+w}", vars, "");
	expands("${U:-${B}${U:-x$A}}", vars, "bxlast");
	expands("${A:-${U:-x}}", vars, "last");
	expands("${U:-a\\}b}", vars, "a}b");
	expands("${U:-}", vars, "");
	expands("\\$A \\\\ \\x", vars, "$A \\ x");
	expands("$S", vars, "$A\\x}"); /* values are not expanded again */
	expands("$", vars, "$");
	expands("a$ b$.c$/", vars, "a$ b$.c$/");
	expands("}{", vars, "}{");
	expands("$A", NULL, "");
	assert_int_equal(dockerfile_expand("\\", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A:-x", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${}", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${9}", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A:?x}", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A-x}", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A:", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("$1", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("$$", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand("${A:+\\", vars, &out), -EINVAL);
	assert_int_equal(dockerfile_expand(NULL, vars, &out), -EINVAL);
	/* nesting: 16 levels pass, 17 do not */
	strcpy(big, "");
	for (int i = 0; i < 16; i++)
		strcat(big, "${U:-");
	strcat(big, "x}}}}}}}}}}}}}}}}");
	expands(big, vars, "x");
	memmove(big + 5, big, strlen(big) + 1);
	memcpy(big, "${U:-", 5);
	strcat(big, "}");
	assert_int_equal(dockerfile_expand(big, vars, &out), -EINVAL);
}

static void expansion_bound(void **state)
{
	size_t n = 1024 * 1024 + 1;
	char *val = malloc(n + 3), *out = NULL;
	char *vars[] = { val, NULL };

	(void)state;
	assert_non_null(val);
	memcpy(val, "V=", 2);
	memset(val + 2, 'v', DOCKERFILE_EXPAND_MAX);
	val[2 + DOCKERFILE_EXPAND_MAX] = '\0';
	assert_int_equal(dockerfile_expand("$V", vars, &out), 0);
	assert_int_equal(strlen(out), DOCKERFILE_EXPAND_MAX);
	free(out);
	assert_int_equal(dockerfile_expand("$V.", vars, &out), -E2BIG);
	assert_int_equal(dockerfile_expand("${U:-$V}${V:+x}", vars, &out), -E2BIG);
	/* a discarded word does not count */
	assert_int_equal(dockerfile_expand("${V:+x}${U:+$V$V}", vars, &out), 0);
	assert_string_equal(out, "x");
	free(out);
	free(val);
}

/* Words from the parser always expand: cook and expand agree. */
static void words_round_trip(void **state)
{
	struct dockerfile df = { 0 };
	char *vars[] = { "A=1", NULL };
	char *out;

	(void)state;
	parse_ok("FROM x\nENV W1=\"${A:-\"}\"}\" W2='\\' W3=a$ W4=${A:+'$'} W5=\"\\\\\" W6=$A\"B\" W7=\"$\"A\n", &df);
	for (size_t i = 0; i < df.v[1].n_kvs; i++) {
		assert_int_equal(dockerfile_expand(df.v[1].kvs[i].value, vars, &out), 0);
		free(out);
	}
	word_is(df.v[1].kvs[0].value, NULL, "}");
	word_is(df.v[1].kvs[1].value, NULL, "\\");
	word_is(df.v[1].kvs[2].value, NULL, "a$");
	word_is(df.v[1].kvs[3].value, vars, "$");
	word_is(df.v[1].kvs[4].value, NULL, "\\");
	word_is(df.v[1].kvs[5].value, vars, "1B"); /* $A then "B", not $AB */
	word_is(df.v[1].kvs[6].value, vars, "$A"); /* "$" then A, not $A */
	dockerfile_clear(&df);
}

/* dockerfile_clear frees everything (valgrind checks) and zeroes; clearing again or NULL is fine. */
static void clear(void **state)
{
	struct dockerfile df = { 0 };

	(void)state;
	parse_ok("ARG V=1\nFROM x AS y\nRUN [\"a\"]\nRUN b\nCOPY --chown=a --chmod=1 a b c\nENV A=1 B=2\n"
		 "LABEL l=v\nWORKDIR /w\nUSER u\nCMD c\nENTRYPOINT [\"e\"]\nEXPOSE 1 2/udp\nADD a b\n",
		 &df);
	assert_int_equal(df.n, 13);
	for (size_t i = 0; i < df.n; i++) {
		assert_non_null(df.v[i].text);
		assert_non_null(df_op_name(df.v[i].op));
		assert_true(strncmp(df.v[i].text, df_op_name(df.v[i].op), strlen(df_op_name(df.v[i].op))) == 0);
	}
	dockerfile_clear(&df);
	assert_null(df.v);
	assert_int_equal(df.n, 0);
	dockerfile_clear(&df);
	dockerfile_clear(NULL);
	assert_null(df_op_name(_DF_OP_MAX));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(minimal),
		cmocka_unit_test(from_forms),
		cmocka_unit_test(case_comments_lines),
		cmocka_unit_test(continuations),
		cmocka_unit_test(directives),
		cmocka_unit_test(exec_and_shell),
		cmocka_unit_test(copy_add),
		cmocka_unit_test(env),
		cmocka_unit_test(arg_label),
		cmocka_unit_test(workdir_user_expose),
		cmocka_unit_test(refusals),
		cmocka_unit_test(not_heredocs),
		cmocka_unit_test(bounds),
		cmocka_unit_test(expansion),
		cmocka_unit_test(expansion_bound),
		cmocka_unit_test(words_round_trip),
		cmocka_unit_test(clear),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
