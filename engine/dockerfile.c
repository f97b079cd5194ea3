/*
 * A strict Dockerfile parser (see dockerfile.h for the rules and for why it
 * is hand-written). The shapes follow moby/buildkit's parser: physical lines
 * are read and joined into logical ones, the instruction's name picks a
 * table entry, leading "--" words are flags, and each instruction splits its
 * arguments the way Docker does (whitespace, JSON, shell-like words). Words
 * are "cooked" here (quotes and the Dockerfile's escape removed, substitutions
 * checked) into the syntax dockerfile_expand() reads.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <json-c/json.h>

#include "common.h"
#include "dockerfile.h"

#define SUBST_DEPTH_MAX 16
#define USER_PART_MAX 32
#define LABEL_KEY_MAX 256

/* A growing string; s is NUL-terminated once anything was added. */
struct buf {
	char *s;
	size_t len, cap;
};

static void buf_done(struct buf *b)
{
	free(b->s);
	*b = (struct buf){ 0 };
}

static int buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->s, cap);
		if (!p)
			return -ENOMEM;
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
	return 0;
}

static int buf_addc(struct buf *b, char c)
{
	return buf_add(b, &c, 1);
}

/* Hands the string over ("" if nothing was added). */
static char *buf_take(struct buf *b)
{
	char *s = b->s ? TAKE_PTR(b->s) : strdup("");

	buf_done(b);
	return s;
}

static void argv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

static void argv_freep(char ***v)
{
	argv_free(*v);
}

/* Appends s (taken, freed on failure) to the NULL-terminated *v of *n entries. */
static int argv_push(char ***v, size_t *n, char *s)
{
	char **nv;

	if (!s)
		return -ENOMEM;
	nv = realloc(*v, (*n + 2) * sizeof(*nv));
	if (!nv) {
		free(s);
		return -ENOMEM;
	}
	nv[(*n)++] = s;
	nv[*n] = NULL;
	*v = nv;
	return 0;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
}

static bool is_name_start(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_name_char(char c)
{
	return is_name_start(c) || (c >= '0' && c <= '9');
}

/* Positional and special shell parameters: refused, Docker expands them to nothing. */
static bool is_special_param(char c)
{
	return (c >= '0' && c <= '9') || (c && strchr("@*#?$!-", c));
}

static bool env_name_ok(const char *s, size_t n)
{
	if (n == 0 || !is_name_start(s[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!is_name_char(s[i]))
			return false;
	return true;
}

static void instr_clear(struct df_instr *in)
{
	free(in->text);
	argv_free(in->argv);
	free(in->shell);
	argv_free(in->srcs);
	free(in->dst);
	free(in->chown);
	for (size_t i = 0; i < in->n_kvs; i++) {
		free(in->kvs[i].key);
		free(in->kvs[i].value);
	}
	free(in->kvs);
	free(in->arg);
	free(in->name);
	free(in->ports);
	*in = (struct df_instr){ .chmod = -1 };
}

void dockerfile_clear(struct dockerfile *df)
{
	if (!df)
		return;
	for (size_t i = 0; i < df->n; i++)
		instr_clear(&df->v[i]);
	free(df->v);
	*df = (struct dockerfile){ 0 };
}

static const char *const op_names[_DF_OP_MAX] = {
	[DF_FROM] = "FROM",	  [DF_ARG] = "ARG",	  [DF_RUN] = "RUN",	[DF_COPY] = "COPY",
	[DF_ADD] = "ADD",	  [DF_ENV] = "ENV",	  [DF_WORKDIR] = "WORKDIR", [DF_USER] = "USER",
	[DF_CMD] = "CMD",	  [DF_ENTRYPOINT] = "ENTRYPOINT", [DF_EXPOSE] = "EXPOSE", [DF_LABEL] = "LABEL",
};

const char *df_op_name(enum df_op op)
{
	return (unsigned)op < _DF_OP_MAX ? op_names[op] : NULL;
}

/* ---- expansion ---------------------------------------------------------- */

struct expand {
	const char *p;
	char *const *vars;
	struct buf out;
	unsigned discard; /* > 0 inside a ${VAR:-word} whose word is not used */
};

static int expand_put(struct expand *e, const char *s, size_t n)
{
	if (e->discard)
		return 0;
	if (e->out.len + n > DOCKERFILE_EXPAND_MAX)
		return -E2BIG;
	return buf_add(&e->out, s, n);
}

static const char *var_lookup(char *const *vars, const char *name, size_t n)
{
	const char *found = NULL;

	for (size_t i = 0; vars && vars[i]; i++)
		if (strncmp(vars[i], name, n) == 0 && vars[i][n] == '=')
			found = vars[i] + n + 1;
	return found;
}

static int expand_run(struct expand *e, bool braced, unsigned depth);

/* At "$": a substitution, or a literal "$". */
static int expand_dollar(struct expand *e, unsigned depth)
{
	const char *name, *val;
	size_t n = 0;
	char mod;
	bool use_word;
	int r;

	e->p++;
	if (*e->p != '{' && !is_name_start(*e->p)) {
		if (is_special_param(*e->p))
			return -EINVAL;
		return expand_put(e, "$", 1);
	}
	if (*e->p == '{')
		e->p++;
	else {
		name = e->p;
		while (is_name_char(name[n]))
			n++;
		e->p += n;
		val = var_lookup(e->vars, name, n);
		return val ? expand_put(e, val, strlen(val)) : 0;
	}
	name = e->p;
	if (!is_name_start(*name))
		return -EINVAL;
	while (is_name_char(name[n]))
		n++;
	e->p += n;
	val = var_lookup(e->vars, name, n);
	if (*e->p == '}') {
		e->p++;
		return val ? expand_put(e, val, strlen(val)) : 0;
	}
	if (e->p[0] != ':' || (e->p[1] != '-' && e->p[1] != '+') || depth >= SUBST_DEPTH_MAX)
		return -EINVAL;
	mod = e->p[1];
	e->p += 2;
	/* ":-" uses the word when VAR is unset or empty, ":+" when it is not */
	use_word = (mod == '-') == (!val || !*val);
	if (!use_word) {
		if (mod == '-') {
			r = expand_put(e, val, strlen(val));
			if (r < 0)
				return r;
		}
		e->discard++;
	}
	r = expand_run(e, true, depth + 1);
	if (!use_word)
		e->discard--;
	return r;
}

/* Expands up to the end, or past the "}" that closes a braced word. */
static int expand_run(struct expand *e, bool braced, unsigned depth)
{
	int r;

	while (*e->p) {
		if (braced && *e->p == '}') {
			e->p++;
			return 0;
		}
		if (*e->p == '\\') {
			if (!e->p[1])
				return -EINVAL;
			r = expand_put(e, e->p + 1, 1);
			e->p += 2;
		} else if (*e->p == '$')
			r = expand_dollar(e, depth);
		else
			r = expand_put(e, e->p++, 1);
		if (r < 0)
			return r;
	}
	return braced ? -EINVAL : 0;
}

int dockerfile_expand(const char *in, char *const *vars, char **ret)
{
	struct expand e = { .p = in, .vars = vars };
	int r;

	if (!in)
		return -EINVAL;
	r = expand_run(&e, false, 0);
	if (r < 0) {
		buf_done(&e.out);
		return r;
	}
	*ret = buf_take(&e.out);
	return *ret ? 0 : -ENOMEM;
}

/* ---- parser state and errors ------------------------------------------- */

struct parser {
	const char *p, *end; /* what is left to read */
	unsigned lineno;     /* the physical line read last */
	unsigned line;       /* the line errors name: where the instruction starts */
	char esc;
	bool directives_done;
	bool seen_escape, seen_syntax, seen_check;
	bool seen_from;
	struct dockerfile df;
	char *error;
};

static int fail_at(struct parser *ps, unsigned line, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail_at(struct parser *ps, unsigned line, int r, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	if (ps->error)
		return r;
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (!msg)
		return r;
	if (line == 0)
		ps->error = TAKE_PTR(msg);
	else if (asprintf(&ps->error, "line %u: %s", line, msg) < 0)
		ps->error = NULL;
	return r;
}

#define fail(ps, r, ...) fail_at((ps), (ps)->line, (r), __VA_ARGS__)

/* User text in a message: at most 32 bytes, non-printable bytes as "?". */
static void show(char *dst, size_t size, const char *s, size_t n, bool upper)
{
	size_t i;

	for (i = 0; i < n && i + 1 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		dst[i] = c < 0x20 || c >= 0x7f ? '?' : upper && c >= 'a' && c <= 'z' ? (char)(c - 32) : (char)c;
	}
	dst[i] = '\0';
}

/* ---- words -------------------------------------------------------------- */

struct cook {
	struct parser *ps;
	const char *p, *end;
	struct buf out;
	bool vars; /* a substitution was seen */
};

/* A literal character in the expand syntax: \ and $ always escaped, } inside ${...}. */
static int cook_lit(struct cook *c, char ch, bool braced)
{
	if (ch == '\\' || ch == '$' || (braced && ch == '}')) {
		int r = buf_addc(&c->out, '\\');

		if (r < 0)
			return r;
	}
	return buf_addc(&c->out, ch);
}

static int cook_run(struct cook *c, bool braced, unsigned depth);

/* At "$" (outside single quotes): a substitution, checked and written as ${NAME...}. */
static int cook_dollar(struct cook *c, unsigned depth)
{
	const char *q = c->p + 1, *name;
	int r;

	if (q == c->end || (*q != '{' && !is_name_start(*q))) {
		if (q < c->end && is_special_param(*q))
			return fail(c->ps, -EOPNOTSUPP, "$%c is not supported", *q);
		if (q < c->end && (unsigned char)*q >= 0x80)
			return fail(c->ps, -EOPNOTSUPP, "non-ASCII variable names are not supported");
		c->p = q;
		return cook_lit(c, '$', false);
	}
	c->vars = true;
	name = *q == '{' ? q + 1 : q;
	q = name;
	while (q < c->end && is_name_char(*q))
		q++;
	if (q == name || !is_name_start(*name))
		return fail(c->ps, -EINVAL, "bad substitution");
	r = buf_add(&c->out, "${", 2);
	if (r >= 0)
		r = buf_add(&c->out, name, (size_t)(q - name));
	if (r < 0)
		return r;
	if (name == c->p + 1) { /* $NAME, written as ${NAME}: a name character may follow */
		c->p = q;
		return buf_addc(&c->out, '}');
	}
	if (q < c->end && *q == '}') {
		c->p = q + 1;
		return buf_addc(&c->out, '}');
	}
	if (q == c->end)
		return fail(c->ps, -EINVAL, "missing } in a substitution");
	if (c->end - q < 2 || q[0] != ':' || (q[1] != '-' && q[1] != '+'))
		return fail(c->ps, -EOPNOTSUPP,
			    "this substitution is not supported (only $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word})");
	if (depth >= SUBST_DEPTH_MAX)
		return fail(c->ps, -EINVAL, "substitutions nested more than %d deep", SUBST_DEPTH_MAX);
	r = buf_add(&c->out, q, 2);
	if (r < 0)
		return r;
	c->p = q + 2;
	return cook_run(c, true, depth + 1);
}

static int cook_single(struct cook *c, bool braced)
{
	const char *q = memchr(c->p + 1, '\'', (size_t)(c->end - c->p - 1));
	int r = 0;

	if (!q)
		return fail(c->ps, -EINVAL, "unterminated single quote");
	for (c->p++; c->p < q && r >= 0; c->p++)
		r = cook_lit(c, *c->p, braced);
	c->p = q + 1;
	return r;
}

/* Double quotes: the escape character escapes only ", $ and itself; $ substitutes. */
static int cook_double(struct cook *c, bool braced, unsigned depth)
{
	char esc = c->ps->esc;
	int r;

	c->p++;
	for (;;) {
		if (c->p == c->end)
			return fail(c->ps, -EINVAL, "unterminated double quote");
		if (*c->p == '"') {
			c->p++;
			return 0;
		}
		if (*c->p == '$')
			r = cook_dollar(c, depth);
		else if (*c->p == esc && c->end - c->p > 1 && (c->p[1] == '"' || c->p[1] == '$' || c->p[1] == esc)) {
			r = cook_lit(c, c->p[1], braced);
			c->p += 2;
		} else
			r = cook_lit(c, *c->p++, braced);
		if (r < 0)
			return r;
	}
}

/* Cooks up to the end, or past the "}" closing a ${VAR:-word}. */
static int cook_run(struct cook *c, bool braced, unsigned depth)
{
	int r;

	while (c->p < c->end) {
		char ch = *c->p;

		if (braced && ch == '}') {
			c->p++;
			return buf_addc(&c->out, '}');
		}
		if (ch == '\'')
			r = cook_single(c, braced);
		else if (ch == '"')
			r = cook_double(c, braced, depth);
		else if (ch == '$')
			r = cook_dollar(c, depth);
		else if (ch == c->ps->esc) {
			/* Docker drops it silently ("COPY a\\ b /d" copies a and b) */
			if (++c->p == c->end)
				return fail(c->ps, -EINVAL, "an escape character ends a word (JSON form for blanks in paths)");
			r = cook_lit(c, *c->p++, braced);
		} else
			r = cook_lit(c, *c->p++, braced);
		if (r < 0)
			return r;
	}
	return braced ? fail(c->ps, -EINVAL, "missing } in a substitution") : 0;
}

/*
 * Turns n bytes of Dockerfile text into a word (see dockerfile.h). With
 * ret_vars NULL, substitutions are refused: what is returned is the literal
 * value, "what" names the argument in that error.
 */
static int cook(struct parser *ps, const char *s, size_t n, const char *what, char **ret, bool *ret_vars)
{
	struct cook c = { .ps = ps, .p = s, .end = s + n };
	char *w;
	int r;

	r = cook_run(&c, false, 0);
	if (r < 0) {
		buf_done(&c.out);
		return r;
	}
	w = buf_take(&c.out);
	if (!w)
		return -ENOMEM;
	if (ret_vars) {
		*ret_vars = c.vars;
		*ret = w;
		return 0;
	}
	if (c.vars) {
		free(w);
		return fail(ps, -EOPNOTSUPP, "variables in %s are not supported", what);
	}
	r = dockerfile_expand(w, NULL, ret);
	free(w);
	return r;
}

static int cook_word(struct parser *ps, const char *s, size_t n, char **ret)
{
	bool vars;

	return cook(ps, s, n, NULL, ret, &vars);
}

/*
 * The next word for ENV, ARG and LABEL, as Docker's parseWords finds it:
 * blanks end it outside quotes, the escape character takes the next byte
 * with it. Quotes stay in (cook() removes them). 0 at the end of s.
 */
static size_t raw_word(const char *s, char esc, const char **ret_start)
{
	const char *p;
	char quote = 0;

	while (is_blank(*s))
		s++;
	*ret_start = s;
	for (p = s; *p; p++) {
		if (quote) {
			if (*p == quote)
				quote = 0;
			else if (*p == esc && quote == '"' && p[1])
				p++;
		} else if (is_blank(*p))
			break;
		else if (*p == '\'' || *p == '"')
			quote = *p;
		else if (*p == esc && p[1])
			p++;
	}
	return (size_t)(p - s);
}

/* Splits s on blanks (Docker's parseStringsWhitespaceDelimited): raw words, not cooked. */
static int split_blanks(const char *s, char ***ret, size_t *ret_n)
{
	_cleanup_(argv_freep) char **v = NULL;
	size_t n = 0;
	int r;

	for (;;) {
		const char *w;

		while (is_blank(*s))
			s++;
		if (!*s)
			break;
		for (w = s; *s && !is_blank(*s); s++)
			;
		r = argv_push(&v, &n, strndup(w, (size_t)(s - w)));
		if (r < 0)
			return r;
	}
	*ret = TAKE_PTR(v);
	*ret_n = n;
	return 0;
}

/* ---- argument forms ------------------------------------------------------ */

static void tokener_freep(json_tokener **t)
{
	if (*t)
		json_tokener_free(*t);
}

static void json_putp(json_object **o)
{
	json_object_put(*o);
}

/*
 * Exec form: s is a JSON array of strings. 1 and the strings in *ret, 0 when
 * s is something else (shell form), or a negative errno.
 */
static int exec_form(struct parser *ps, const char *s, char ***ret, size_t *ret_n)
{
	_cleanup_(tokener_freep) json_tokener *tok = NULL;
	_cleanup_(json_putp) json_object *o = NULL;
	_cleanup_(argv_freep) char **v = NULL;
	size_t len = strlen(s), n = 0;
	int r;

	if (s[0] != '[')
		return 0;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, s, (int)len);
	if (!o || json_tokener_get_error(tok) != json_tokener_success || json_tokener_get_parse_end(tok) != len ||
	    !json_object_is_type(o, json_type_array))
		return 0;
	for (size_t i = 0; i < json_object_array_length(o); i++)
		if (!json_object_is_type(json_object_array_get_idx(o, i), json_type_string))
			return 0;
	for (size_t i = 0; i < json_object_array_length(o); i++) {
		json_object *e = json_object_array_get_idx(o, i);
		const char *str = json_object_get_string(e);

		if (strlen(str) != (size_t)json_object_get_string_len(e))
			return fail(ps, -EINVAL, "a NUL character in the exec form");
		r = argv_push(&v, &n, strdup(str));
		if (r < 0)
			return r;
	}
	if (!v) {
		v = calloc(1, sizeof(*v));
		if (!v)
			return -ENOMEM;
	}
	*ret = TAKE_PTR(v);
	*ret_n = n;
	return 1;
}

/*
 * A heredoc in a shell command: an unquoted "<<" that is not "<<<". Stricter
 * than Docker (which looks only at words starting with "<<"): "$((1 << 2))"
 * is refused too, rather than ever running a heredoc's first line alone.
 */
static bool has_heredoc(const char *s)
{
	char quote = 0;

	for (; *s; s++) {
		if (quote) {
			if (*s == quote)
				quote = 0;
			else if (quote == '"' && *s == '\\' && s[1])
				s++;
		} else if (*s == '\'' || *s == '"')
			quote = *s;
		else if (*s == '\\' && s[1])
			s++;
		else if (s[0] == '<' && s[1] == '<') {
			if (s[2] != '<')
				return true;
			while (*s == '<')
				s++;
			s--;
		}
	}
	return false;
}

/* RUN, CMD, ENTRYPOINT: exec form into argv, else shell form into shell. */
static int parse_command(struct parser *ps, struct df_instr *in, const char *args)
{
	size_t n;
	int r;

	r = exec_form(ps, args, &in->argv, &n);
	if (r < 0)
		return r;
	if (r > 0) {
		if (in->op == DF_RUN && n == 0)
			return fail(ps, -EINVAL, "RUN needs a command");
		return 0;
	}
	if (in->op == DF_RUN && has_heredoc(args))
		return fail(ps, -EOPNOTSUPP, "heredocs (<<) are not supported");
	in->shell = strdup(args);
	return in->shell ? 0 : -ENOMEM;
}

/* ---- instructions -------------------------------------------------------- */

static int parse_from(struct parser *ps, struct df_instr *in, const char *args)
{
	_cleanup_(argv_freep) char **w = NULL;
	size_t n;
	int r;

	r = split_blanks(args, &w, &n);
	if (r < 0)
		return r;
	if (n != 1 && (n != 3 || strcasecmp(w[1], "AS") != 0))
		return fail(ps, -EINVAL, "FROM takes an image and optionally AS NAME");
	if (n == 3) {
		char *s = w[2];

		for (char *p = s; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p + 32);
		if (!(s[0] >= 'a' && s[0] <= 'z') || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != strlen(s))
			return fail(ps, -EINVAL, "invalid stage name (allowed: [a-z][a-z0-9_.-]*)");
		in->name = TAKE_PTR(w[2]);
	}
	r = cook_word(ps, w[0], strlen(w[0]), &in->arg);
	if (r < 0)
		return r;
	return in->arg[0] ? 0 : fail(ps, -EINVAL, "FROM needs an image");
}

/* ENV, ARG, LABEL: the key, checked for the instruction. */
static int kv_key(struct parser *ps, enum df_op op, const char *s, size_t n, char **ret)
{
	_cleanup_free_ char *k = NULL;
	int r;

	if (op != DF_LABEL) {
		if (!env_name_ok(s, n))
			return fail(ps, -EINVAL, "%s: invalid name (allowed: [A-Za-z_][A-Za-z0-9_]*)", df_op_name(op));
		*ret = strndup(s, n);
		return *ret ? 0 : -ENOMEM;
	}
	r = cook(ps, s, n, "LABEL keys", &k, NULL);
	if (r < 0)
		return r;
	if (!k[0] || strlen(k) > LABEL_KEY_MAX || !((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z') ||
						   (k[0] >= '0' && k[0] <= '9')) ||
	    strspn(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-") != strlen(k))
		return fail(ps, -EINVAL, "LABEL: invalid key (allowed: [A-Za-z0-9][A-Za-z0-9._/-]*)");
	*ret = TAKE_PTR(k);
	return 0;
}

static int kv_push(struct df_instr *in, char *key, char *value)
{
	struct df_kv *v = realloc(in->kvs, (in->n_kvs + 1) * sizeof(*v));

	if (!v) {
		free(key);
		free(value);
		return -ENOMEM;
	}
	v[in->n_kvs++] = (struct df_kv){ key, value };
	in->kvs = v;
	return 0;
}

/* One KEY=VALUE word (or, for ARG, KEY). */
static int parse_kv_word(struct parser *ps, struct df_instr *in, const char *w, size_t n)
{
	const char *eq = memchr(w, '=', n);
	char *key = NULL, *value = NULL;
	int r;

	if (!eq && in->op != DF_ARG)
		return fail(ps, -EINVAL, "%s: expected KEY=VALUE", df_op_name(in->op));
	r = kv_key(ps, in->op, w, eq ? (size_t)(eq - w) : n, &key);
	if (r < 0)
		return r;
	if (eq) {
		r = cook_word(ps, eq + 1, n - (size_t)(eq + 1 - w), &value);
		if (r < 0) {
			free(key);
			return r;
		}
	}
	return kv_push(in, key, value);
}

/* ENV and LABEL "KEY VALUE": the value is the rest of the line, blanks and all. */
static int parse_kv_legacy(struct parser *ps, struct df_instr *in, const char *args)
{
	size_t n = strcspn(args, " \t\v\f\r");
	const char *v = args + n;
	char *key = NULL, *value = NULL;
	int r;

	while (is_blank(*v))
		v++;
	if (!*v)
		return fail(ps, -EINVAL, "%s needs a value", df_op_name(in->op));
	r = kv_key(ps, in->op, args, n, &key);
	if (r < 0)
		return r;
	r = cook_word(ps, v, strlen(v), &value);
	if (r < 0) {
		free(key);
		return r;
	}
	return kv_push(in, key, value);
}

/* ENV, LABEL: KEY=VALUE... or KEY VALUE; ARG: KEY[=VALUE]... */
static int parse_kvs(struct parser *ps, struct df_instr *in, const char *args)
{
	const char *w;
	size_t n = raw_word(args, ps->esc, &w);
	int r;

	if (in->op != DF_ARG && !memchr(w, '=', n))
		return parse_kv_legacy(ps, in, args);
	while (n > 0) {
		r = parse_kv_word(ps, in, w, n);
		if (r < 0)
			return r;
		n = raw_word(w + n, ps->esc, &w);
	}
	return 0;
}

static int parse_copy(struct parser *ps, struct df_instr *in, const char *args)
{
	_cleanup_(argv_freep) char **w = NULL;
	size_t n, n_srcs = 0;
	int r;

	r = exec_form(ps, args, &w, &n);
	if (r == 0) {
		r = split_blanks(args, &w, &n);
		for (size_t i = 0; r >= 0 && i < n; i++)
			if (strncmp(w[i], "<<", 2) == 0)
				return fail(ps, -EOPNOTSUPP, "heredocs (<<) are not supported");
	}
	if (r < 0)
		return r;
	if (n < 2)
		return fail(ps, -EINVAL, "%s needs a source and a destination", df_op_name(in->op));
	for (size_t i = 0; i < n; i++) {
		char *word;

		r = cook_word(ps, w[i], strlen(w[i]), &word);
		if (r < 0)
			return r;
		if (!word[0]) {
			free(word);
			return fail(ps, -EINVAL, "%s: an empty path", df_op_name(in->op));
		}
		if (in->op == DF_ADD && i + 1 < n && (strstr(word, "://") || strncmp(word, "git@", 4) == 0)) {
			free(word);
			return fail(ps, -EOPNOTSUPP, "ADD from a URL is not supported");
		}
		if (i + 1 == n)
			in->dst = word;
		else {
			r = argv_push(&in->srcs, &n_srcs, word);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static int parse_path(struct parser *ps, struct df_instr *in, const char *args)
{
	bool vars;
	int r;

	r = cook(ps, args, strlen(args), NULL, &in->arg, &vars);
	if (r < 0)
		return r;
	if (!in->arg[0])
		return fail(ps, -EINVAL, "%s needs an argument", df_op_name(in->op));
	if (in->op == DF_USER && !vars && dockerfile_user_check(in->arg) < 0)
		return fail(ps, -EINVAL, "USER: expected NAME or NAME:GROUP (names or numbers)");
	return 0;
}

/* One EXPOSE port: N, N/tcp or N/udp (any case). */
static int port_parse(struct parser *ps, const char *s, struct df_port *ret)
{
	unsigned long v = 0;
	size_t i;

	for (i = 0; s[i] >= '0' && s[i] <= '9' && i < 6; i++)
		v = v * 10 + (unsigned long)(s[i] - '0');
	if (s[i] == '-')
		return fail(ps, -EOPNOTSUPP, "EXPOSE port ranges are not supported");
	if (i == 0 || i >= 6 || v < 1 || v > 65535 || (s[i] && s[i] != '/'))
		return fail(ps, -EINVAL, "EXPOSE: invalid port (expected 1..65535, optionally /tcp or /udp)");
	ret->port = (uint16_t)v;
	ret->udp = s[i] && strcasecmp(s + i + 1, "udp") == 0;
	if (s[i] && !ret->udp && strcasecmp(s + i + 1, "tcp") != 0)
		return fail(ps, -EOPNOTSUPP, "EXPOSE: only tcp and udp are supported");
	return 0;
}

static int parse_expose(struct parser *ps, struct df_instr *in, const char *args)
{
	_cleanup_(argv_freep) char **w = NULL;
	size_t n;
	int r;

	r = split_blanks(args, &w, &n);
	if (r < 0)
		return r;
	in->ports = calloc(n, sizeof(*in->ports));
	if (!in->ports)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *port = NULL;

		r = cook(ps, w[i], strlen(w[i]), "EXPOSE", &port, NULL);
		if (r < 0)
			return r;
		r = port_parse(ps, port, &in->ports[i]);
		if (r < 0)
			return r;
		in->n_ports++;
	}
	return 0;
}

/* ---- flags --------------------------------------------------------------- */

int dockerfile_user_check(const char *user)
{
	const char *colon;

	if (!user)
		return -EINVAL;
	colon = strchr(user, ':');
	for (int part = 0; part < (colon ? 2 : 1); part++) {
		const char *s = part ? colon + 1 : user;
		size_t n = part || !colon ? strlen(s) : (size_t)(colon - s);
		size_t ok = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-");

		if (n == 0 || n > USER_PART_MAX || ok < n || s[0] == '.' || s[0] == '-')
			return -EINVAL;
	}
	return 0;
}

static int flag_chmod(struct parser *ps, struct df_instr *in, const char *value)
{
	_cleanup_free_ char *v = NULL;
	size_t n;
	int r;

	r = cook(ps, value, strlen(value), "--chmod", &v, NULL);
	if (r < 0)
		return r;
	n = strlen(v);
	if (n == 0 || n > 4 || strspn(v, "01234567") != n)
		return fail(ps, -EINVAL, "--chmod: expected an octal mode (0..7777)");
	in->chmod = (int)strtol(v, NULL, 8);
	return 0;
}

static int flag_chown(struct parser *ps, struct df_instr *in, const char *value)
{
	bool vars;
	int r;

	r = cook(ps, value, strlen(value), NULL, &in->chown, &vars);
	if (r < 0)
		return r;
	if (!vars && dockerfile_user_check(in->chown) < 0)
		return fail(ps, -EINVAL, "--chown: expected USER or USER:GROUP (names or numbers)");
	return 0;
}

/*
 * Leading "--name[=value]" words. COPY and ADD take --chown and --chmod, once
 * each; every other flag is refused. *args moves past them.
 */
static int parse_flags(struct parser *ps, struct df_instr *in, const char **args)
{
	const char *s = *args;
	int r;

	while (s[0] == '-' && s[1] == '-') {
		size_t n = strcspn(s, " \t\v\f\r");
		size_t nlen = strcspn(s, "= \t\v\f\r");
		_cleanup_free_ char *value = NULL;
		bool is_chmod = nlen == 7 && strncmp(s, "--chmod", 7) == 0;
		char shown[33];

		show(shown, sizeof(shown), s, nlen, false);
		if ((in->op != DF_COPY && in->op != DF_ADD) ||
		    !(is_chmod || (nlen == 7 && strncmp(s, "--chown", 7) == 0)))
			return fail(ps, -EOPNOTSUPP, "%s %s is not supported%s", df_op_name(in->op), shown,
				    nlen == 6 && strncmp(s, "--from", 6) == 0 ? " (multi-stage builds are not supported)" : "");
		if (s[nlen] != '=')
			return fail(ps, -EINVAL, "%s needs a value (%s=...)", shown, shown);
		if (is_chmod ? in->chmod >= 0 : in->chown != NULL)
			return fail(ps, -EINVAL, "%s given twice", shown);
		value = strndup(s + nlen + 1, n - nlen - 1);
		if (!value)
			return -ENOMEM;
		r = is_chmod ? flag_chmod(ps, in, value) : flag_chown(ps, in, value);
		if (r < 0)
			return r;
		for (s += n; is_blank(*s); s++)
			;
	}
	*args = s;
	return 0;
}

/* ---- instructions and lines --------------------------------------------- */

static const struct instr_def {
	const char *name;
	enum df_op op;
	int (*parse)(struct parser *ps, struct df_instr *in, const char *args);
} instrs[] = {
	{ "from", DF_FROM, parse_from },
	{ "arg", DF_ARG, parse_kvs },
	{ "run", DF_RUN, parse_command },
	{ "copy", DF_COPY, parse_copy },
	{ "add", DF_ADD, parse_copy },
	{ "env", DF_ENV, parse_kvs },
	{ "workdir", DF_WORKDIR, parse_path },
	{ "user", DF_USER, parse_path },
	{ "cmd", DF_CMD, parse_command },
	{ "entrypoint", DF_ENTRYPOINT, parse_command },
	{ "expose", DF_EXPOSE, parse_expose },
	{ "label", DF_LABEL, parse_kvs },
};

static const struct instr_def *instr_find(const char *s, size_t n)
{
	for (size_t i = 0; i < ARRAY_SIZE(instrs); i++)
		if (strlen(instrs[i].name) == n && strncasecmp(instrs[i].name, s, n) == 0)
			return &instrs[i];
	return NULL;
}

/* Where an instruction may stand: ARGs, then one FROM, then the rest. */
static int check_order(struct parser *ps, enum df_op op)
{
	if (op == DF_FROM && ps->seen_from)
		return fail(ps, -EOPNOTSUPP, "a second FROM is not supported (multi-stage builds are not supported)");
	if (op != DF_FROM && op != DF_ARG && !ps->seen_from)
		return fail(ps, -EINVAL, "%s before FROM (the first instruction must be FROM, only ARG may precede it)",
			    df_op_name(op));
	if (ps->df.n >= DOCKERFILE_INSTR_MAX)
		return fail(ps, -E2BIG, "more than %u instructions", DOCKERFILE_INSTR_MAX);
	return 0;
}

static int instr_append(struct parser *ps, struct df_instr *in)
{
	struct df_instr *v = realloc(ps->df.v, (ps->df.n + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	ps->df.v = v;
	v[ps->df.n++] = *in;
	*in = (struct df_instr){ .chmod = -1 };
	return 0;
}

/* One logical line: "NAME args" with continuations joined and comments removed. */
static int parse_instruction(struct parser *ps, unsigned line, char *s)
{
	_cleanup_(instr_clear) struct df_instr in = { .line = line, .chmod = -1 };
	const struct instr_def *def;
	const char *args;
	char shown[33], *rest;
	size_t kw, n;
	int r;

	ps->line = line;
	while (is_blank(*s))
		s++;
	kw = strcspn(s, " \t\v\f\r");
	for (rest = s + kw; is_blank(*rest); rest++)
		;
	for (n = strlen(rest); n > 0 && is_blank(rest[n - 1]); n--)
		rest[n - 1] = '\0';
	args = rest;
	def = instr_find(s, kw);
	if (!def) {
		show(shown, sizeof(shown), s, kw, true);
		return fail(ps, -EOPNOTSUPP, "%s is not supported", shown);
	}
	r = check_order(ps, def->op);
	if (r < 0)
		return r;
	in.op = def->op;
	if (asprintf(&in.text, "%s%s%s", df_op_name(def->op), *args ? " " : "", args) < 0) {
		in.text = NULL;
		return -ENOMEM;
	}
	r = parse_flags(ps, &in, &args);
	if (r < 0)
		return r;
	if (!*args)
		return fail(ps, -EINVAL, "%s needs arguments", df_op_name(def->op));
	r = def->parse(ps, &in, args);
	if (r < 0)
		return r;
	if (def->op == DF_FROM)
		ps->seen_from = true;
	return instr_append(ps, &in);
}

/* The next physical line (without "\n" and a "\r" before it): 1, 0 at the end, or -E2BIG. */
static int next_line(struct parser *ps, const char **ret, size_t *ret_len)
{
	const char *nl, *s = ps->p;
	size_t n;

	if (ps->p >= ps->end)
		return 0;
	nl = memchr(s, '\n', (size_t)(ps->end - s));
	n = (size_t)((nl ? nl : ps->end) - s);
	ps->p = nl ? nl + 1 : ps->end;
	ps->lineno++;
	if (n > DOCKERFILE_LINE_MAX)
		return fail_at(ps, ps->lineno, -E2BIG, "longer than %u bytes", DOCKERFILE_LINE_MAX);
	if (n > 0 && s[n - 1] == '\r')
		n--;
	*ret = s;
	*ret_len = n;
	return 1;
}

/*
 * A parser directive ("# key=value") while they are still looked for: 1 if
 * the line was one, 0 if not (which ends them), or a negative errno.
 */
static int directive(struct parser *ps, const char *s, size_t n)
{
	const char *end = s + n, *key, *val;
	size_t klen;
	bool *seen;

	if (s == end || *s != '#')
		goto done;
	for (s++; s < end && is_blank(*s); s++)
		;
	key = s;
	while (s < end && (is_name_char(*s) && *s != '_'))
		s++;
	klen = (size_t)(s - key);
	while (s < end && is_blank(*s))
		s++;
	if (klen == 0 || !((key[0] >= 'a' && key[0] <= 'z') || (key[0] >= 'A' && key[0] <= 'Z')) || s == end || *s != '=')
		goto done;
	for (s++; s < end && is_blank(*s); s++)
		;
	val = s;
	while (end > val && is_blank(end[-1]))
		end--;
	if (val == end)
		goto done;
	if (klen == 6 && strncasecmp(key, "escape", 6) == 0)
		seen = &ps->seen_escape;
	else if (klen == 6 && strncasecmp(key, "syntax", 6) == 0)
		seen = &ps->seen_syntax;
	else if (klen == 5 && strncasecmp(key, "check", 5) == 0)
		seen = &ps->seen_check;
	else
		goto done;
	if (*seen)
		return fail_at(ps, ps->lineno, -EINVAL, "only one %.*s parser directive can be used", (int)klen, key);
	*seen = true;
	if (seen == &ps->seen_escape) {
		if (end - val != 1 || (*val != '\\' && *val != '`'))
			return fail_at(ps, ps->lineno, -EINVAL, "the escape directive takes \\ or `");
		ps->esc = *val;
	}
	return 1;
done:
	ps->directives_done = true;
	return 0;
}

static bool is_comment_or_blank(const char *s, size_t n)
{
	while (n > 0 && is_blank(*s))
		s++, n--;
	return n == 0 || *s == '#';
}

/* Removes a trailing escape character (and blanks after it): true if it continues. */
static bool continues(struct parser *ps, const char *s, size_t *n)
{
	size_t k = *n;

	while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == '\t'))
		k--;
	if (k == 0 || s[k - 1] != ps->esc)
		return false;
	*n = k - 1;
	return true;
}

/* Reads the rest of a continued line into b: comment and blank lines skipped. */
static int read_continuation(struct parser *ps, struct buf *b)
{
	const char *s;
	size_t n;
	bool more = true;
	int r;

	while (more) {
		r = next_line(ps, &s, &n);
		if (r <= 0)
			return r; /* a continuation at the end of the file ends the instruction */
		if (is_comment_or_blank(s, n))
			continue;
		more = continues(ps, s, &n);
		r = buf_add(b, s, n);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The logical line that starts with s (neither blank nor a comment) into b. */
static int read_logical(struct parser *ps, const char *s, size_t n, struct buf *b)
{
	bool more;
	int r;

	while (is_blank(*s))
		s++, n--;
	more = continues(ps, s, &n);
	r = buf_add(b, s, n); /* b->s is set from here on, even for n == 0 */
	if (r < 0 || !more)
		return r;
	return read_continuation(ps, b);
}

/* The whole text, line by line. */
static int parse_lines(struct parser *ps)
{
	const char *s;
	size_t n;
	int r;

	while ((r = next_line(ps, &s, &n)) > 0) {
		_cleanup_(buf_done) struct buf b = { 0 };
		unsigned start = ps->lineno;

		if (!ps->directives_done) {
			while (n > 0 && is_blank(*s))
				s++, n--;
			r = directive(ps, s, n);
			if (r < 0)
				return r;
			if (r > 0)
				continue;
		}
		if (is_comment_or_blank(s, n))
			continue;
		r = read_logical(ps, s, n, &b);
		if (r >= 0 && b.s[strspn(b.s, " \t\v\f\r")])
			r = parse_instruction(ps, start, b.s);
		if (r < 0)
			return r;
	}
	return r;
}

static unsigned line_of(const char *text, const char *at)
{
	unsigned line = 1;

	for (const char *p = text; p < at; p++)
		line += *p == '\n';
	return line;
}

int dockerfile_parse(const char *text, size_t len, struct dockerfile *ret, char **ret_error)
{
	struct parser ps = { .esc = '\\' };
	const char *nul;
	int r;

	if (!text && len > 0)
		return -EINVAL;
	if (!text)
		text = "";
	ps.p = text;
	ps.end = text + len;
	if (len > DOCKERFILE_SIZE_MAX)
		r = fail_at(&ps, 0, -E2BIG, "the Dockerfile is larger than %u bytes", DOCKERFILE_SIZE_MAX);
	else if (len > 0 && (nul = memchr(text, '\0', len)))
		r = fail_at(&ps, line_of(text, nul), -EINVAL, "a NUL byte");
	else {
		if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
			ps.p += 3;
		r = parse_lines(&ps);
		if (r >= 0 && !ps.seen_from)
			r = fail_at(&ps, 0, -EINVAL, "the Dockerfile has no FROM instruction");
	}
	if (r < 0) {
		dockerfile_clear(&ps.df);
		if (ret_error)
			*ret_error = TAKE_PTR(ps.error);
		free(ps.error);
		return r;
	}
	ps.df.escape = ps.esc;
	*ret = ps.df;
	return 0;
}
