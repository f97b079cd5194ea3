/* emberfs-agent: the op table. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* The op table                                                         */

static const struct agent_op agent_op_table[] = {
	{ "ping", op_ping, false, false },
	{ "exec", op_exec, false, false },
	{ "attach", op_attach, false, false },
	{ "configure", op_configure, false, false },
	{ "probe", op_probe, false, false },
	{ "sync", op_sync, false, false },
	{ "lstat", op_lstat, false, true },
	{ "readdir", op_readdir, false, true },
	{ "open", op_open, false, true },
	{ "read", op_read, false, true },
	{ "write", op_write, true, true },
	{ "close", op_close, false, false },
	{ "fsync", op_fsync, false, false },
	{ "fstat", op_fstat, false, false },
	{ "ftruncate", op_ftruncate, false, true },
	{ "truncate", op_truncate, false, true },
	{ "chmod", op_chmod, false, true },
	{ "chown", op_chown, false, true },
	{ "utimens", op_utimens, false, true },
	{ "unlink", op_unlink, false, true },
	{ "mkdir", op_mkdir, false, true },
	{ "mknod", op_mknod, false, true },
	{ "rmdir", op_rmdir, false, true },
	{ "rename", op_rename, false, true },
	{ "symlink", op_symlink, false, true },
	{ "link", op_link, false, true },
	{ "readlink", op_readlink, false, true },
	{ "realpath", op_realpath, false, true },
	{ "statfs", op_statfs, false, true },
	{ "spawn", op_spawn, false, false },
	{ "out", op_out, false, false },
	{ "in", op_in, true, false },
	{ "signal", op_signal, false, false },
	{ "status", op_status, false, false },
	{ "wait", op_wait, false, false },
	{ "release", op_release, false, false },
};

/* A file op with a "cred" runs as that user, and the agent is root again after it. */
static int op_run(struct agent *a, const struct agent_op *op, struct request *rq,
		  struct json_object *reply)
{
	struct cred c;
	bool has = false;
	int r;

	if (op->cred) {
		r = req_cred(rq, &c, &has);
		if (r < 0)
			return r;
	}
	if (has) {
		cred_enter(&c);
		a->cred = &c;
	}
	r = op->fn(a, rq, reply);
	if (has) {
		a->cred = NULL;
		cred_leave();
	}
	return r;
}

/* The agent's ops, run for real. */
const struct agent_ops agent_ops_guest = {
	.table = agent_op_table,
	.n_table = sizeof(agent_op_table) / sizeof(agent_op_table[0]),
	.run = op_run,
	.hangup = conn_release,
};
