/*
 * emberfs-e2b: the E2B API (control plane and in-sandbox "envd" protocol)
 * served over one HTTP listener, as a client of an emberfs mount
 * (docs/e2b.md).
 *
 *   emberfs-e2b --mount DIR [--listen ADDR:PORT] [--keys FILE] [--state DIR]
 *               [--domain NAME] [--log-level LEVEL]
 */
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>

#include "auth.h"
#include "common/common.h"
#include "config.h"
#include "http.h"

#define DEFAULT_LISTEN "127.0.0.1:49982"
#define DEFAULT_STATE "/var/lib/emberfs-e2b"

/* Is path still a mount point (its device differs from its parent's)? */
static bool still_mounted(const char *path, dev_t dev)
{
	struct stat st;

	/* a FUSE mount whose daemon ended answers ENOTCONN; an unmounted one is the directory below */
	return stat(path, &st) == 0 && st.st_dev == dev;
}

/*
 * Waits for SIGTERM/SIGINT, or for the mount to go away (the documented stop
 * of emberfs is `fusermount3 -u MOUNT`: the API server it serves ends with
 * it). The kernel marks /proc/self/mountinfo with POLLPRI at every change.
 */
static int wait_for_end(const char *mount)
{
	struct pollfd p[2];
	struct signalfd_siginfo si;
	struct stat st;
	sigset_t set;
	int sfd, mfd, r = 0;

	if (stat(mount, &st) < 0)
		return -errno;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	mfd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	if (sfd < 0 || mfd < 0) {
		r = -errno;
		goto out;
	}
	p[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
	p[1] = (struct pollfd){.fd = mfd, .events = POLLPRI};
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		if (p[0].revents & POLLIN) {
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				log_info("e2b: signal %u: stopping", si.ssi_signo);
			break;
		}
		if (p[1].revents & (POLLPRI | POLLERR)) {
			char buf[4096];

			/* re-arm: read it through */
			lseek(mfd, 0, SEEK_SET);
			while (read(mfd, buf, sizeof(buf)) > 0)
				;
			if (!still_mounted(mount, st.st_dev)) {
				log_info("e2b: %s is no longer mounted: stopping", mount);
				break;
			}
		}
	}
out:
	if (sfd >= 0)
		close(sfd);
	if (mfd >= 0)
		close(mfd);
	return r;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: emberfs-e2b --mount DIR [OPTIONS]\n"
		"Serves the E2B API (https://e2b.dev) over HTTP/1.1 for the sandboxes of an emberfs mount.\n\n"
		"  --mount DIR         the emberfs mount point (required)\n"
		"  --listen ADDR:PORT  where to listen (default " DEFAULT_LISTEN "; [::1]:PORT for IPv6)\n"
		"  --keys FILE         API keys, one e2b_<hex> per line (default STATE/keys)\n"
		"  --state DIR         the token secret lives here (default " DEFAULT_STATE ")\n"
		"  --domain NAME       the domain answered in sandbox objects (default localhost)\n"
		"  --log-level L       error, warn, info (default) or debug\n"
		"  --help              this text\n"
		"  --version           print the version\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"mount", required_argument, NULL, 'm'},  {"listen", required_argument, NULL, 'l'},
		{"keys", required_argument, NULL, 'k'},	  {"state", required_argument, NULL, 's'},
		{"domain", required_argument, NULL, 'd'}, {"log-level", required_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},	  {"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const char *listen = DEFAULT_LISTEN, *keys = NULL, *state = DEFAULT_STATE;
	_cleanup_free_ char *keys_default = NULL, *secret = NULL;
	struct stat st;
	sigset_t set;
	int c, r;

	log_detect_journal(); /* under systemd (emberfs-e2b.service): priorities, no timestamps */
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm': cfg.mount = optarg; break;
		case 'l': listen = optarg; break;
		case 'k': keys = optarg; break;
		case 's': state = optarg; break;
		case 'd': cfg.domain = optarg; break;
		case 'L':
			if (strcmp(optarg, "error") == 0) log_set_level(LOG_ERR_);
			else if (strcmp(optarg, "warn") == 0) log_set_level(LOG_WARN_);
			else if (strcmp(optarg, "info") == 0) log_set_level(LOG_INFO_);
			else if (strcmp(optarg, "debug") == 0) log_set_level(LOG_DEBUG_);
			else {
				fprintf(stderr, "emberfs-e2b: --log-level %s: expected error, warn, info or debug\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("emberfs-e2b %s\n", EMBERFS_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || !cfg.mount) {
		usage(stderr);
		return 2;
	}
	if (stat(cfg.mount, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "emberfs-e2b: --mount %s: not a directory\n", cfg.mount);
		return 1;
	}
	if (mkdir(state, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "emberfs-e2b: --state %s: %m\n", state);
		return 1;
	}
	if (asprintf(&secret, "%s/token-secret", state) < 0 || (!keys && asprintf(&keys_default, "%s/keys", state) < 0))
		return 1;
	if (auth_load(keys ? keys : keys_default, secret) < 0)
		return 1;
	/* SIGTERM/SIGINT end it; every thread inherits the mask and wait_for_end reads them */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (http_start(listen) < 0) {
		auth_free();
		return 1;
	}
	log_info("e2b: serving the E2B API for %s on http://%s", cfg.mount, listen);
	r = wait_for_end(cfg.mount);
	if (r < 0)
		log_error("e2b: waiting for the end: %s", strerror(-r));
	http_stop();
	auth_free();
	return r < 0 ? 1 : 0;
}
