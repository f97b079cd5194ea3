/*
 * emberfs-e2b: the E2B API (control plane and in-sandbox "envd" protocol)
 * served over one HTTP listener, as a client of an emberfs mount
 * (docs/e2b.md).
 *
 *   emberfs-e2b --mount DIR [--listen ADDR:PORT] [--keys FILE] [--state DIR]
 *               [--domain NAME] [--log-level LEVEL]
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "auth.h"
#include "common/common.h"
#include "config.h"
#include "http.h"

#define DEFAULT_LISTEN "127.0.0.1:49982"
#define DEFAULT_STATE "/var/lib/emberfs-e2b"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: emberfs-e2b --mount DIR [options]\n"
		"Serves the E2B API (https://e2b.dev) over HTTP/1.1 for the sandboxes of an emberfs mount.\n"
		"  --mount DIR        the emberfs mount point (required)\n"
		"  --listen ADDR:PORT where to listen (default " DEFAULT_LISTEN "; [::1]:PORT for IPv6)\n"
		"  --keys FILE        API keys, one e2b_<hex> per line (default STATE/keys)\n"
		"  --state DIR        the token secret lives here (default " DEFAULT_STATE ")\n"
		"  --domain NAME      the domain answered in sandbox objects (default localhost)\n"
		"  --log-level L      error, warn, info (default) or debug\n"
		"  --version, --help\n");
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
	int c, sig;

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
	/* SIGTERM/SIGINT end it; every thread inherits the mask and sigwait takes them here */
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
	while (sigwait(&set, &sig) != 0)
		;
	log_info("e2b: signal %d: stopping", sig);
	http_stop();
	auth_free();
	return 0;
}
