/*
 * The daemon: parses options, starts the engine, mounts, serves, tears
 * down. main.c is the shipped program; a test daemon links this with its
 * own engine hooks (tests/integration/holdd.c).
 */
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common.h"
#include "config.h"
#include "fs.h"
#include "cluster.h"

struct options {
	struct engine_options eng;
	const char *mountpoint;
	const char *log_file;
	const char *pid_file;
	bool foreground;
	bool allow_other;
	enum log_level level;
	struct cluster_options cl; /* cl.etcd_urls NULL: single-host mode */
};

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: emberfs [OPTIONS] MOUNTPOINT\n"
		"Manage microVM sandboxes through a FUSE filesystem mounted at MOUNTPOINT.\n\n"
		"  -f, --foreground        stay in the foreground (default: detach once mounted)\n"
		"      --state-dir DIR     artifacts, snapshots, records (default /var/lib/emberfs)\n"
		"      --image-dir DIR     guest image for the default template (vmlinuz, initrd.cpio,\n"
		"                          rootfs.ext4, manifest.json; see contrib/build-image.sh)\n"
		"      --no-bake           do not bake the default template at start\n"
		"      --qemu PATH         QEMU binary (default %s)\n"
		"      --accel MODE        auto | kvm | tcg (default auto: KVM only where it runs a guest)\n"
		"      --max-sandboxes N   mkdir fails with ENOSPC beyond N sandboxes (default 64)\n"
		"      --max-checkpoints N  ctl checkpoint fails with ENOSPC beyond N per sandbox (default 16)\n"
		"      --cold-slots N      cold boots and bakes at once (default 1)\n"
		"      --pool N|auto       warm slots per baked template unless its pool file says otherwise:\n"
		"                          N pins the depth (0: none); auto (the default) lets the capacity\n"
		"                          controller follow demand within the budget (docs/capacity.md)\n"
		"      --pool-budget-mib M  memory for warm slots of all templates (default: a quarter of RAM)\n"
		"      --pool-max-slots N  warm slots of all templates (default 64)\n"
		"      --pool-miss-target P  wanted chance that a create finds no warm slot (default 0.01)\n"
		"      --pool-idle-decay S  no create for S seconds: no warm slots (auto only; default 600)\n"
		"      --pool-parallel N   warm slots prepared at once, all templates together (default 1)\n"
		"      --spares N          spare VMMs per baked template: spawned, waiting for the snapshot's\n"
		"                          state, so a create that finds no warm slot restores without a spawn\n"
		"                          (default 1, 0: none; within the pool's budget)\n"
		"      --slot-max-age S    replace warm slots older than S seconds (default 3600, 0: never)\n"
		"      --cache-max-age S   build cache entries (fetched images, built disks, Dockerfile steps)\n"
		"                          that no template uses go after S seconds unused (default 604800)\n"
		"      --store URL         snapshot store shared by hosts (HTTP PUT and GET, e.g. nginx's\n"
		"                          WebDAV): bakes publish there; a template the store has is\n"
		"                          installed from it, its memory fetched by chunks as guests read it\n"
		"      --cache-mib N       this host's chunk cache of the store (STATE/cache; default 4096)\n"
		"      --no-prefetch       restores from the store fetch only what the guest reads (no hot list)\n"
		"      --store-chunk-kib N  a publish cuts memory and disk into chunks of N KiB (a power of\n"
		"                          two, 4 to 4096; default 256)\n"
		"      --warmup-exec       warm slots also run one command ahead: a sandbox's first exec\n"
		"                          is fast too, at ~15 MiB more memory per idle slot under TCG\n"
		"      --net               networking: network slots (netns, veth, tap, NAT) built ahead;\n"
		"                          templates with \"net\": true (the default template) get a NIC\n"
		"      --net-range CIDR    host addresses for network slots, one /30 each (default 10.200.0.0/16)\n"
		"      --net-pool N        network slots kept ready (default 4)\n"
		"      --net-no-egress     sandboxes reach nothing but their host end (no NAT to the world)\n"
		"      --dns ADDR[:PORT]   the upstream of the sandboxes' DNS resolver (default: the first\n"
		"                          IPv4 nameserver of /etc/resolv.conf)\n"
		"      --store-size MIB    size of the loop-mounted XFS store, when one is needed (default 32768)\n"
		"      --no-loop-store     never loop-mount a store: clones are then full copies\n"
		"      --store-reserve-mib M  a new VM needs its RAM plus M MiB free in the store, kept for\n"
		"                          the running guests' copy-on-write (default 512; else ENOSPC)\n"
		"      --vmm-uid-base N    each VMM runs as its own user, uid (and gid) N + an index free among\n"
		"                          the live VMMs, below N + 65536 (default %u; 0: VMMs run as root)\n"
		"      --console-max-kib K  a sandbox's console log keeps its newest output within K KiB\n"
		"                          (default 1024, at least 16)\n"
		"      --cluster URLS      join a cluster (docs/cluster.md): etcd's client URLs, comma-separated;\n"
		"                          needs --host-name and --advertise\n"
		"      --host-name H       this host's name in the cluster (unique; letters, digits, . _ -)\n"
		"      --advertise H:P     where the other hosts reach this one (its peer server)\n"
		"      --cluster-listen H:P  where the peer server listens (default: --advertise)\n"
		"      --cluster-key FILE  the hosts' shared key (default STATE/cluster.key, made if absent)\n"
		"      --cluster-ttl S     this host's lease in etcd: it shows lost S seconds after it died\n"
		"                          (default 10)\n"
		"      --allow-other       let other users in (the kernel then checks every file's mode);\n"
		"                          default: only the user who mounted it\n"
		"      --log FILE          log here once detached (default: discard); in the foreground the\n"
		"                          log is stderr (the journal under systemd, with priorities)\n"
		"      --pid-file FILE     write the daemon's pid here\n"
		"  -v, --verbose           debug logging\n"
		"  -q, --quiet             warnings and errors only\n"
		"  -h, --help              this text\n"
		"  -V, --version           print the version\n\n"
		"Stop it with SIGINT/SIGTERM or `fusermount3 -u MOUNTPOINT`: sandboxes are destroyed,\n"
		"the mount and the store are unmounted. See README.md and docs/.\n",
		QEMU_BINARY, VMM_UID_BASE_DEFAULT);
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v == 0 || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

enum { OPT_STATE = 256, OPT_IMAGE, OPT_NOBAKE, OPT_QEMU, OPT_ACCEL, OPT_MAXSB, OPT_COLD, OPT_STORE, OPT_NOLOOP,
       OPT_LOG, OPT_PID, OPT_POOL, OPT_POOL_PAR, OPT_SPARES, OPT_SLOT_AGE, OPT_CACHE_AGE, OPT_WARMUP_EXEC, OPT_NET, OPT_NET_RANGE,
       OPT_NET_POOL, OPT_NET_NO_EGRESS, OPT_POOL_BUDGET, OPT_POOL_MAXSLOTS, OPT_POOL_MISS, OPT_POOL_DECAY,
       OPT_ALLOW_OTHER, OPT_VMM_UID, OPT_CONSOLE_MAX, OPT_STORE_RESERVE, OPT_DNS,
       OPT_CLUSTER, OPT_HOST_NAME, OPT_ADVERTISE, OPT_CLUSTER_LISTEN, OPT_CLUSTER_KEY, OPT_CLUSTER_TTL, OPT_MAXCK,
       OPT_SNAPSTORE, OPT_CACHE_MIB, OPT_NO_PREFETCH, OPT_STORE_CHUNK };

static int parse_opt(int c, const char *arg, struct options *o)
{
	unsigned long v;

	switch (c) {
	case 'f': o->foreground = true; return 0;
	case 'v': o->level = LOG_DEBUG_; return 0;
	case 'q': o->level = LOG_WARN_; return 0;
	case OPT_STATE: o->eng.state_dir = arg; return 0;
	case OPT_IMAGE: o->eng.image_dir = arg; return 0;
	case OPT_NOBAKE: o->eng.bake_default = false; return 0;
	case OPT_QEMU: o->eng.qemu_binary = arg; return 0;
	case OPT_NOLOOP: o->eng.no_loop_store = true; return 0;
	case OPT_WARMUP_EXEC: o->eng.warmup_exec = true; return 0;
	case OPT_NET: o->eng.net = true; return 0;
	case OPT_NET_RANGE: o->eng.net_range = arg; return 0;
	case OPT_NET_NO_EGRESS: o->eng.net_no_egress = true; return 0;
	case OPT_DNS: o->eng.dns = arg; return 0;
	case OPT_SNAPSTORE:
		if (strncmp(arg, "http://", 7) != 0 && strncmp(arg, "https://", 8) != 0)
			return -EINVAL;
		o->eng.store_url = arg;
		return 0;
	case OPT_CACHE_MIB:
		if (parse_uint(arg, 1ul << 24, &v) < 0 || v < 1)
			return -EINVAL;
		o->eng.cache_mib = v;
		return 0;
	case OPT_NO_PREFETCH: o->eng.no_prefetch = true; return 0;
	case OPT_STORE_CHUNK:
		if (parse_uint(arg, 4096, &v) < 0 || v < 4 || (v & (v - 1)))
			return -EINVAL;
		o->eng.store_chunk_kib = (unsigned)v;
		return 0;
	case OPT_CLUSTER: o->cl.etcd_urls = arg; return 0;
	case OPT_HOST_NAME:
		if (name_validate(arg) < 0)
			return -EINVAL;
		o->cl.host_name = arg;
		return 0;
	case OPT_ADVERTISE: o->cl.advertise = arg; return 0;
	case OPT_CLUSTER_LISTEN: o->cl.listen = arg; return 0;
	case OPT_CLUSTER_KEY: o->cl.secret_file = arg; return 0;
	case OPT_CLUSTER_TTL:
		if (parse_uint(arg, 3600, &v) < 0 || v < 2)
			return -EINVAL;
		o->cl.lease_ttl_s = (unsigned)v;
		return 0;
	case OPT_NET_POOL:
		if (strcmp(arg, "0") && parse_uint(arg, 1024, &v) < 0)
			return -EINVAL;
		o->eng.net_pool = strcmp(arg, "0") ? (unsigned)v : 0;
		return 0;
	case OPT_LOG: o->log_file = arg; return 0;
	case OPT_ALLOW_OTHER: o->allow_other = true; return 0;
	case OPT_STORE_RESERVE:
		if (strcmp(arg, "0") && parse_uint(arg, 1u << 30, &v) < 0)
			return -EINVAL;
		o->eng.store_reserve_mib = strcmp(arg, "0") ? (int64_t)v : 0;
		return 0;
	case OPT_CONSOLE_MAX:
		if (parse_uint(arg, 1u << 22, &v) < 0 || v < 16)
			return -EINVAL;
		o->eng.console_max_kib = (unsigned)v;
		return 0;
	case OPT_VMM_UID:
		if (strcmp(arg, "0") && (parse_uint(arg, 0xFFFFFFFFul - VMM_UID_RANGE, &v) < 0 || v < 1000))
			return -EINVAL; /* not into the system's or the first users' ids */
		o->eng.vmm_uid_base = strcmp(arg, "0") ? (int64_t)v : 0;
		return 0;
	case OPT_PID: o->pid_file = arg; return 0;
	case OPT_ACCEL:
		if (strcmp(arg, "auto") && strcmp(arg, "kvm") && strcmp(arg, "tcg"))
			return -EINVAL;
		o->eng.accel = arg[0] == 'k' ? ACCEL_KVM : arg[0] == 't' ? ACCEL_TCG : ACCEL_AUTO;
		return 0;
	case OPT_MAXSB:
		if (parse_uint(arg, 100000, &v) < 0)
			return -EINVAL;
		o->eng.max_sandboxes = (unsigned)v;
		return 0;
	case OPT_MAXCK:
		if (parse_uint(arg, 4096, &v) < 0 || v == 0)
			return -EINVAL;
		o->eng.max_checkpoints = (unsigned)v;
		return 0;
	case OPT_POOL:
		if (strcmp(arg, "auto") == 0) {
			o->eng.pool_pinned = false;
			return 0;
		}
		if (strcmp(arg, "0") && parse_uint(arg, 256, &v) < 0)
			return -EINVAL;
		o->eng.pool_depth = strcmp(arg, "0") ? (unsigned)v : 0;
		o->eng.pool_pinned = true;
		return 0;
	case OPT_POOL_BUDGET:
		if (parse_uint(arg, 1ul << 30, &v) < 0)
			return -EINVAL; /* no slots at all is --pool 0 */
		o->eng.pool_budget_mib = v;
		return 0;
	case OPT_POOL_MAXSLOTS:
		if (parse_uint(arg, 4096, &v) < 0)
			return -EINVAL;
		o->eng.pool_max_slots = (unsigned)v;
		return 0;
	case OPT_POOL_MISS: {
		char *end;
		double d;

		errno = 0;
		d = strtod(arg, &end);
		if (errno || end == arg || *end || !(d > 0 && d < 1))
			return -EINVAL;
		o->eng.pool_miss_target = d;
		return 0;
	}
	case OPT_POOL_DECAY:
		if (parse_uint(arg, 30 * 86400, &v) < 0)
			return -EINVAL;
		o->eng.pool_idle_decay_s = (unsigned)v;
		return 0;
	case OPT_POOL_PAR:
		if (parse_uint(arg, 16, &v) < 0)
			return -EINVAL;
		o->eng.pool_parallel = (unsigned)v;
		return 0;
	case OPT_SPARES:
		if (strcmp(arg, "0") && parse_uint(arg, 16, &v) < 0)
			return -EINVAL;
		o->eng.spares = strcmp(arg, "0") ? (unsigned)v : 0;
		return 0;
	case OPT_SLOT_AGE:
		if (strcmp(arg, "0") && parse_uint(arg, 30 * 86400, &v) < 0)
			return -EINVAL;
		o->eng.slot_max_age_s = strcmp(arg, "0") ? (unsigned)v : 0;
		return 0;
	case OPT_CACHE_AGE:
		if (strcmp(arg, "0") && parse_uint(arg, 3650 * 86400, &v) < 0)
			return -EINVAL;
		o->eng.cache_max_age_s = strcmp(arg, "0") ? (unsigned)v : 0;
		return 0;
	case OPT_COLD:
		if (parse_uint(arg, 64, &v) < 0)
			return -EINVAL;
		o->eng.cold_slots = (unsigned)v;
		return 0;
	case OPT_STORE:
		if (parse_uint(arg, 1ul << 30, &v) < 0 || v < 512)
			return -EINVAL;
		o->eng.store_size_mib = v;
		return 0;
	default:
		return -EINVAL;
	}
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "foreground", no_argument, NULL, 'f' },   { "state-dir", required_argument, NULL, OPT_STATE },
		{ "image-dir", required_argument, NULL, OPT_IMAGE }, { "no-bake", no_argument, NULL, OPT_NOBAKE },
		{ "qemu", required_argument, NULL, OPT_QEMU }, { "accel", required_argument, NULL, OPT_ACCEL },
		{ "max-sandboxes", required_argument, NULL, OPT_MAXSB },
		{ "max-checkpoints", required_argument, NULL, OPT_MAXCK },
		{ "cold-slots", required_argument, NULL, OPT_COLD },
		{ "pool", required_argument, NULL, OPT_POOL },
		{ "pool-parallel", required_argument, NULL, OPT_POOL_PAR },
		{ "spares", required_argument, NULL, OPT_SPARES },
		{ "pool-budget-mib", required_argument, NULL, OPT_POOL_BUDGET },
		{ "pool-max-slots", required_argument, NULL, OPT_POOL_MAXSLOTS },
		{ "pool-miss-target", required_argument, NULL, OPT_POOL_MISS },
		{ "pool-idle-decay", required_argument, NULL, OPT_POOL_DECAY },
		{ "slot-max-age", required_argument, NULL, OPT_SLOT_AGE },
		{ "cache-max-age", required_argument, NULL, OPT_CACHE_AGE },
		{ "warmup-exec", no_argument, NULL, OPT_WARMUP_EXEC },
		{ "net", no_argument, NULL, OPT_NET },
		{ "net-range", required_argument, NULL, OPT_NET_RANGE },
		{ "net-pool", required_argument, NULL, OPT_NET_POOL },
		{ "net-no-egress", no_argument, NULL, OPT_NET_NO_EGRESS },
		{ "dns", required_argument, NULL, OPT_DNS },
		{ "store", required_argument, NULL, OPT_SNAPSTORE },
		{ "cache-mib", required_argument, NULL, OPT_CACHE_MIB },
		{ "no-prefetch", no_argument, NULL, OPT_NO_PREFETCH },
		{ "store-chunk-kib", required_argument, NULL, OPT_STORE_CHUNK },
		{ "cluster", required_argument, NULL, OPT_CLUSTER },
		{ "host-name", required_argument, NULL, OPT_HOST_NAME },
		{ "advertise", required_argument, NULL, OPT_ADVERTISE },
		{ "cluster-listen", required_argument, NULL, OPT_CLUSTER_LISTEN },
		{ "cluster-key", required_argument, NULL, OPT_CLUSTER_KEY },
		{ "cluster-ttl", required_argument, NULL, OPT_CLUSTER_TTL },
		{ "vmm-uid-base", required_argument, NULL, OPT_VMM_UID },
		{ "console-max-kib", required_argument, NULL, OPT_CONSOLE_MAX },
		{ "store-reserve-mib", required_argument, NULL, OPT_STORE_RESERVE },
		{ "store-size", required_argument, NULL, OPT_STORE },
		{ "no-loop-store", no_argument, NULL, OPT_NOLOOP }, { "log", required_argument, NULL, OPT_LOG },
		{ "pid-file", required_argument, NULL, OPT_PID }, { "allow-other", no_argument, NULL, OPT_ALLOW_OTHER }, { "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },	    { "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },	    { NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "fvqhV", longopts, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			exit(0);
		}
		if (c == 'V') {
			printf("emberfs %s\n", EMBERFS_VERSION);
			exit(0);
		}
		if (c == '?' || parse_opt(c, optarg, o) < 0) {
			if (c != '?')
				fprintf(stderr, "emberfs: invalid value for an option: %s\n", optarg ? optarg : "");
			fprintf(stderr, "Try 'emberfs --help'.\n");
			return -EINVAL;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "emberfs: expected exactly one MOUNTPOINT\nTry 'emberfs --help'.\n");
		return -EINVAL;
	}
	o->mountpoint = argv[optind];
	if ((o->cl.host_name || o->cl.advertise || o->cl.listen || o->cl.secret_file || o->cl.lease_ttl_s) &&
	    !o->cl.etcd_urls) {
		fprintf(stderr, "emberfs: --host-name, --advertise and the other cluster options need --cluster\n");
		return -EINVAL;
	}
	if (o->cl.etcd_urls && (!o->cl.host_name || !o->cl.advertise)) {
		fprintf(stderr, "emberfs: --cluster needs --host-name and --advertise\n");
		return -EINVAL;
	}
	return 0;
}

/* Detach, but let the parent report start-up failures: it waits for one status byte. */
static int detach(int *notify_fd)
{
	int p[2];
	pid_t pid;
	char st = 1;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &st, 1) != 1)
			st = 1;
		_exit(st);
	}
	close(p[0]);
	setsid();
	*notify_fd = p[1];
	return 0;
}

static void redirect_stdio(const char *log_file)
{
	int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int out = open(log_file ? log_file : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

	if (in >= 0)
		dup2(in, 0);
	if (out >= 0) {
		dup2(out, 1);
		dup2(out, 2);
	}
	if (in > 2)
		close(in);
	if (out > 2)
		close(out);
}

static int write_pid(const char *path)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", getpid());

	return path ? write_file_atomic(path, buf, (size_t)n, false) : 0;
}

int emberfs_daemon(int argc, char **argv, const struct engine_hooks *hooks)
{
	struct options o = { .eng = { .state_dir = "/var/lib/emberfs", .bake_default = true, .pool_depth = 2,
			      .pool_parallel = 1, .spares = 1, .slot_max_age_s = 3600, .net_pool = 4, .cache_max_age_s = 604800,
			      .vmm_uid_base = -1, .store_reserve_mib = -1 }, .level = LOG_INFO_ };
	struct engine *e = NULL;
	struct fs *f = NULL;
	struct cluster *cl = NULL;
	struct service *sv = NULL;
	int notify = -1, r;
	char *fuse_argv[] = { argv[0], "-o", "allow_other", NULL };
	struct stat st;

	if (parse_args(argc, argv, &o) < 0)
		return 2;
	o.eng.hooks = hooks;
	log_set_level(o.level);
	if (o.foreground)
		log_detect_journal(); /* systemd: priority prefixes, the journal stamps the time */
	if (stat(o.mountpoint, &st) == 0 && !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "emberfs: %s is not a directory\n", o.mountpoint);
		return 1;
	}
	if (mkdir_p(o.eng.state_dir, 0700) < 0) {
		fprintf(stderr, "emberfs: cannot create --state-dir %s: %s\n", o.eng.state_dir, strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!o.foreground && detach(&notify) < 0)
		return 1;
	r = engine_new(&o.eng, &e);
	if (r == 0 && (r = fs_new(e, o.allow_other ? 3 : 1, fuse_argv, &f)) == 0 && (r = fs_mount(f, o.mountpoint)) < 0)
		log_error("cannot mount on %s", o.mountpoint);
	if (r == 0 && o.cl.etcd_urls) {
		o.cl.mountpoint = o.mountpoint;
		o.cl.state_dir = o.eng.state_dir;
		o.cl.max_sandboxes = o.eng.max_sandboxes ? o.eng.max_sandboxes : 64;
		if ((r = cluster_new(e, &o.cl, &cl)) == 0) {
			fs_set_cluster(f, cl);
			r = cluster_start(cl);
		}
	}
	if (r == 0)
		r = fs_set_signal_handlers(f);
	if (r == 0)
		r = service_start(e, o.mountpoint, o.eng.bake_default, &sv);
	if (r < 0) {
		log_error("start-up failed: %s", strerror(-r));
		cluster_stop(cl);
		fs_free(f);
		engine_free(e);
		cluster_free(cl);
		return 1;
	}
	write_pid(o.pid_file);
	log_info("emberfs %s mounted on %s (accel %s, store %s)", EMBERFS_VERSION, o.mountpoint,
		 engine_accel_name(e), engine_store_method(e));
	if (notify >= 0) {
		char ok = 0;

		redirect_stdio(o.log_file);
		if (write(notify, &ok, 1) != 1)
			log_warn("could not notify the starting process");
		close(notify);
	}
	r = fs_loop(f);
	log_info("shutting down");
	service_stopping(sv);
	fs_remove_signal_handlers(f);
	/*
	 * The stop has begun: a SIGTERM now (systemd sends one right after
	 * ExecStop's unmount; an impatient user a second one) must not end
	 * the teardown half-way, leaving VMMs, the store's mount and cgroups
	 * behind. SIGKILL still does, as anything can.
	 */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	fs_unmount(f);
	cluster_stop(cl); /* the peer server's reads on the mount ended with it */
	fs_release_handles(f); /* they hold sandboxes: before the engine goes */
	engine_free(e);
	fs_set_cluster(f, NULL); /* fs_free looks no further */
	cluster_free(cl);	 /* this host's names and lease leave etcd */
	fs_free(f);
	if (o.pid_file)
		unlink(o.pid_file);
	log_info("stopped");
	return r < 0 ? 1 : 0;
}
