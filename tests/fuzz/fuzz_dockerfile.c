/*
 * libFuzzer: the Dockerfile parser (engine/dockerfile.c). Each input is
 * parsed, every word of the result expanded, and the input itself expanded
 * as a word; the invariants below abort on a breach. Leaks show through
 * ASan's leak checker (contrib/fuzz.sh runs with detect_leaks=1).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dockerfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *const vars[] = { "A=a", "E=", "HOME=/root", "S=$A\\x}", "A=again", NULL };

static void check(bool ok)
{
	if (!ok)
		abort();
}

/* A word from the parser always expands (or is too large once expanded). */
static void check_word(const char *w)
{
	char *out = NULL;
	int r;

	check(w != NULL);
	r = dockerfile_expand(w, vars, &out);
	check(r == 0 || r == -E2BIG);
	check(r != 0 || (out && strlen(out) <= DOCKERFILE_EXPAND_MAX));
	free(out);
	/* the same without variables: no "$" left means the word is its own value */
	r = dockerfile_expand(w, NULL, &out);
	check(r == 0 || r == -E2BIG);
	check(r != 0 || strchr(w, '$') || strchr(w, '\\') || strcmp(out, w) == 0);
	free(out);
}

static void check_command(const struct df_instr *in)
{
	check(!in->argv != !in->shell);
	check(in->op != DF_RUN || !in->argv || in->argv[0]);
	check(!in->shell || in->shell[0]);
}

static void check_instr(const struct df_instr *in)
{
	check(in->text && strncmp(in->text, df_op_name(in->op), strlen(df_op_name(in->op))) == 0);
	check(in->chmod >= -1 && in->chmod <= 07777);
	check(in->chmod == -1 || in->op == DF_COPY || in->op == DF_ADD);
	switch (in->op) {
	case DF_FROM:
	case DF_WORKDIR:
	case DF_USER:
		check_word(in->arg);
		check(in->arg[0]);
		check(!in->name || in->op == DF_FROM);
		break;
	case DF_RUN:
	case DF_CMD:
	case DF_ENTRYPOINT:
		check_command(in);
		break;
	case DF_COPY:
	case DF_ADD:
		check(in->srcs && in->srcs[0] && in->dst);
		for (size_t i = 0; in->srcs[i]; i++)
			check_word(in->srcs[i]);
		check_word(in->dst);
		if (in->chown)
			check_word(in->chown);
		break;
	case DF_ENV:
	case DF_LABEL:
	case DF_ARG:
		check(in->n_kvs > 0);
		for (size_t i = 0; i < in->n_kvs; i++) {
			check(in->kvs[i].key && in->kvs[i].key[0] && !strchr(in->kvs[i].key, '='));
			check(in->kvs[i].value || in->op == DF_ARG);
			if (in->kvs[i].value)
				check_word(in->kvs[i].value);
		}
		break;
	case DF_EXPOSE:
		check(in->n_ports > 0);
		for (size_t i = 0; i < in->n_ports; i++)
			check(in->ports[i].port > 0);
		break;
	default:
		abort();
	}
}

static void check_dockerfile(const struct dockerfile *df, unsigned lines)
{
	size_t i = 0, froms = 0;

	check(df->n >= 1 && df->n <= DOCKERFILE_INSTR_MAX);
	check(df->escape == '\\' || df->escape == '`');
	while (i < df->n && df->v[i].op == DF_ARG)
		i++;
	check(i < df->n && df->v[i].op == DF_FROM); /* the first instruction that is not ARG is FROM */
	for (i = 0; i < df->n; i++) {
		froms += df->v[i].op == DF_FROM;
		check(df->v[i].line >= 1 && df->v[i].line <= lines);
		check(i == 0 || df->v[i].line > df->v[i - 1].line);
		check_instr(&df->v[i]);
	}
	check(froms == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dockerfile df = { 0 };
	char *err = NULL, *word, *out = NULL;
	unsigned lines = 1;
	int r;

	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	r = dockerfile_parse((const char *)data, size, &df, &err);
	if (r == 0) {
		check(err == NULL);
		check_dockerfile(&df, lines);
	} else {
		check(r == -EINVAL || r == -EOPNOTSUPP || r == -E2BIG || r == -ENOMEM);
		check(df.n == 0 && df.v == NULL);
		check(r == -ENOMEM || (err && (strncmp(err, "line ", 5) == 0 || strncmp(err, "the Dockerfile", 14) == 0)));
	}
	free(err);
	dockerfile_clear(&df);
	check(df.v == NULL && df.n == 0);

	/* the input as a word of its own (up to a NUL) */
	word = strndup((const char *)data, size);
	if (!word)
		return 0;
	r = dockerfile_expand(word, vars, &out);
	check(r == 0 || r == -EINVAL || r == -E2BIG);
	check(r != 0 || strlen(out) <= DOCKERFILE_EXPAND_MAX);
	free(out);
	free(word);
	return 0;
}
