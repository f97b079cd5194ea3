/* emberfs-agent: lines, "bin" payloads and the output queue. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* Output queue towards the host                                       */

bool outq_pending(const struct agent *a)
{
	return a->out.len > a->out_head;
}

/* Past this, requests and process output wait until the host reads. */
bool outq_full(const struct agent *a)
{
	return a->out.len - a->out_head >= OUTQ_HIGH;
}

/* Room for @n more bytes at the tail; compacts before growing. */
char *outq_reserve(struct agent *a, size_t n)
{
	if (a->out_head > 0 && a->out.len + n > a->out.cap) {
		memmove(a->out.data, a->out.data + a->out_head, a->out.len - a->out_head);
		a->out.len -= a->out_head;
		a->out_head = 0;
	}
	if (buf_reserve(&a->out, n, SIZE_MAX) < 0)
		return NULL;
	return a->out.data + a->out.len;
}

/* Queue a line of @n bytes plus its '\n', whole or not at all. */
static void outq_line(struct agent *a, unsigned int gen, const char *s, size_t n)
{
	char *p;

	if (gen != a->gen)
		return;
	p = outq_reserve(a, n + 1);
	if (!p) {
		agent_log("out of memory queueing a %zu byte reply", n);
		return;
	}
	memcpy(p, s, n);
	p[n] = '\n';
	a->out.len += n + 1;
}

void outq_json(struct agent *a, unsigned int gen, struct json_object *o)
{
	size_t n;
	const char *s = json_object_to_json_string_length(o, JSON_FLAGS, &n);

	if (s)
		outq_line(a, gen, s, n);
}

/* A rendered line (with its '\n') and its payload, whole or not at all. */
int outq_bin(struct agent *a, unsigned int gen, const char *head, size_t hn,
		    const void *data, size_t n)
{
	char *p;

	if (gen != a->gen)
		return 0;
	p = outq_reserve(a, hn + n);
	if (!p)
		return -ENOMEM;
	memcpy(p, head, hn);
	memcpy(p + hn, data, n);
	a->out.len += hn + n;
	return 0;
}

/* Drop what the vanished host did not read; keep an unsent ready line. */
void outq_reset(struct agent *a)
{
	size_t keep = 0;

	if (a->out_written < a->ready_len)
		keep = a->ready_len - a->out_written;
	a->out.len = a->out_head + keep;
	if (!keep) {
		a->out_head = a->out.len = 0;
		if (a->out.cap > (1u << 20))
			buf_free(&a->out);
	}
}

/* Data or room on the connection: a host is there. */
void port_connected(struct agent *a)
{
	a->connected = true;
	a->tp.ops->connected(&a->tp);
}

/* The host hung up: what it sent and had not finished goes. */
static void conn_reset(struct agent *a)
{
	json_object_put(a->pend_msg);
	a->pend_msg = NULL;
	a->pend_len = a->skip = 0;
	buf_free(&a->pend);
	a->broken = false;
	a->in_head = a->in_len = 0;
}

void port_hangup(struct agent *a)
{
	if (a->connected) {
		a->connected = false;
		a->gen++;
		a->line.len = 0;
		a->discarding = false;
		outq_reset(a);
		conn_reset(a);
		a->ops->hangup(a);
	}
	a->tp.ops->hangup(&a->tp);
}

/* Non-blocking: whatever the port takes now; the rest waits for POLLOUT. */
void outq_flush(struct agent *a)
{
	if (a->tp.fd < 0)
		return;	/* no host (vsock): the queue waits for the next one */
	while (outq_pending(a)) {
		ssize_t n = write(a->tp.fd, a->out.data + a->out_head,
				  a->out.len - a->out_head);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno != EAGAIN) {
				agent_log("port write: %m");
				port_hangup(a);
			}
			return;
		}
		port_connected(a);
		a->out_head += n;
		a->out_written += n;
	}
	a->out_head = a->out.len = 0;
	if (a->out.cap > (1u << 20))
		buf_free(&a->out);
}

/* A request whose payload is complete: @data is its @len bytes. */
static void request_complete(struct agent *a, const char *data, size_t len)
{
	struct request rq = { .gen = a->gen, .msg = a->pend_msg, .has_bin = true,
			      .bin = data, .bin_len = len };

	a->pend_msg = NULL;
	request_dispatch(a, &rq);
	json_object_put(rq.msg);
	a->pend.len = a->pend_len = 0;
	if (a->pend.cap > READ_CHUNK)
		buf_free(&a->pend);
}

/*
 * A line with "bin": N is followed by N bytes: the request waits for them
 * in a->pend_msg.  Without a usable N nothing after this line can be
 * framed: the connection is broken until the host hangs up.
 */
static void request_handle(struct agent *a, const char *line, size_t len)
{
	struct request rq = { .gen = a->gen };
	struct json_object *v;
	int64_t n;

	if (all_space(line, len))
		return;
	rq.msg = request_parse(a, line, len);
	if (!rq.msg) {
		reply_error(a, rq.gen, 0, EBADMSG, "malformed request: not one JSON object");
		return;
	}
	v = json_field(rq.msg, "bin");
	if (v) {
		n = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
		if (n < 0 || n > (int64_t)BIN_MAX) {
			json_get_u64(rq.msg, "id", &rq.id);
			reply_error(a, rq.gen, rq.id, EMSGSIZE,
				    "\"bin\" must be an integer 0..1048576; input ignored until hangup");
			agent_log("bad \"bin\" in a request: ignoring input until the host hangs up");
			a->broken = true;
			json_object_put(rq.msg);
			return;
		}
		rq.has_bin = true;
		rq.bin = "";
		if (n > 0 && buf_reserve(&a->pend, n, n) < 0) {
			json_get_u64(rq.msg, "id", &rq.id);
			reply_error(a, rq.gen, rq.id, ENOMEM, "out of memory for the payload");
			a->skip = n;
			json_object_put(rq.msg);
			return;
		}
		if (n > 0) {
			a->pend_msg = rq.msg;
			a->pend_len = n;
			return;
		}
	}
	request_dispatch(a, &rq);
	json_object_put(rq.msg);
}

/* Best effort for an oversized line: its id, if it leads the object. */
static uint64_t line_guess_id(const char *s, size_t n)
{
	static const char key[] = "\"id\"";
	uint64_t id = 0;
	size_t i = 0;

#define SKIP_WS() while (i < n && (s[i] == ' ' || s[i] == '\t')) i++
	SKIP_WS();
	if (i >= n || s[i++] != '{')
		return 0;
	SKIP_WS();
	if (n - i < sizeof(key) - 1 || memcmp(s + i, key, sizeof(key) - 1))
		return 0;
	i += sizeof(key) - 1;
	SKIP_WS();
	if (i >= n || s[i++] != ':')
		return 0;
	SKIP_WS();
#undef SKIP_WS
	for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
		if (id > (UINT64_MAX - 9) / 10)
			return 0;
		id = id * 10 + (uint64_t)(s[i] - '0');
	}
	return id;
}

static void line_too_long(struct agent *a, const char *p, size_t n)
{
	char head[64];
	size_t hn = MIN(a->line.len, sizeof(head));

	if (hn)
		memcpy(head, a->line.data, hn);
	memcpy(head + hn, p, MIN(n, sizeof(head) - hn));
	hn += MIN(n, sizeof(head) - hn);
	reply_error(a, a->gen, line_guess_id(head, hn), EMSGSIZE,
		    "request line longer than 1 MiB");
}

/*
 * Split the byte stream into lines and payloads; a line or payload is
 * handled without copying when it can be.  Returns how much of @p it took:
 * no new line is taken while the output queue is full.
 */
size_t lines_feed(struct agent *a, const char *p, size_t n)
{
	const char *start = p;

	while (n > 0) {
		const char *nl;
		size_t seg;

		if (a->broken)
			return p - start + n;
		if (a->skip || a->pend_msg) {
			seg = MIN(n, a->skip ? a->skip : a->pend_len - a->pend.len);
			if (a->skip)
				a->skip -= seg;
			else if (!a->pend.len && seg == a->pend_len)
				request_complete(a, p, seg);
			else {
				memcpy(a->pend.data + a->pend.len, p, seg);
				a->pend.len += seg;
				if (a->pend.len == a->pend_len)
					request_complete(a, a->pend.data, a->pend.len);
			}
			p += seg;
			n -= seg;
			continue;
		}
		if (outq_full(a))
			break;
		nl = memchr(p, '\n', n);
		seg = nl ? (size_t)(nl - p) : n;
		if (a->discarding) {
			/* the rest of an oversized line */
		} else if (a->line.len + seg > LINE_MAX_BYTES) {
			line_too_long(a, p, seg);
			a->discarding = true;
		} else if (nl && a->line.len == 0) {
			request_handle(a, p, seg);
		} else if (buf_append(&a->line, p, seg, LINE_MAX_BYTES) < 0) {
			reply_error(a, a->gen, 0, ENOMEM, "out of memory buffering a request");
			a->discarding = true;
		} else if (nl) {
			request_handle(a, a->line.data, a->line.len);
		}
		if (nl) {
			a->discarding = false;
			a->line.len = 0;
			if (a->line.cap > READ_CHUNK)
				buf_free(&a->line);
			seg++;
		}
		if (a->discarding)
			a->line.len = 0;
		p += seg;
		n -= seg;
	}
	return p - start;
}

/* What the port gave and the output queue had no room for yet. */
void input_drain(struct agent *a)
{
	if (a->in_head < a->in_len)
		a->in_head += lines_feed(a, a->in_chunk + a->in_head, a->in_len - a->in_head);
	if (a->in_head == a->in_len)
		a->in_head = a->in_len = 0;
}

static void port_read(struct agent *a)
{
	size_t budget = READ_BUDGET;

	input_drain(a);
	while (budget > 0 && !a->in_len && a->tp.fd >= 0) {
		ssize_t n = read(a->tp.fd, a->in_chunk, sizeof(a->in_chunk));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0)
			agent_log("port read: %m");
		if (n <= 0) {
			port_hangup(a);
			return;
		}
		/* bytes to read are no proof of a host: see port_service */
		a->in_len = n;
		input_drain(a);
		budget -= MIN((size_t)n, budget);
	}
}

/*
 * A host that goes and a new one that comes reach the port as two events,
 * and the new host's first bytes can arrive before the second: the port
 * then reports POLLIN with POLLHUP. The hangup is the old host's, so it is
 * handled first; what is readable is kept for the next host (it may also be
 * the old host's last words: their replies then carry ids the next host
 * never used, and the host side starts its ids at random). The transport
 * sees the events first: it may take them (vsock: a host to accept) or
 * change them (vsock: a hangup takes the connection's last bytes with it).
 *
 * So only the port itself says a host is there: events without a hangup, or
 * a write it took. Bytes read while it still reports the hangup (every
 * restore: the snapshot's host leaves, the next comes, and the guest may
 * see the next one's request first) are the next host's, and so are the
 * replies queued for them: the same hangup reported again, until the port
 * hears of the new host, is not another one (it would drop those replies:
 * a restored sandbox's attach then went unanswered).
 */
void port_service(struct agent *a, short revents)
{
	revents = a->tp.ops->event(&a->tp, revents);
	if (revents & (POLLHUP | POLLERR | POLLNVAL)) {
		port_hangup(a);
		if (!(revents & POLLIN))
			return;
	} else if (revents & (POLLIN | POLLOUT)) {
		port_connected(a);
	}
	if (revents & POLLIN)
		port_read(a);
}
