/* emberfs: the shipped daemon (fs/daemon.c), with no engine hooks. */
#include "fs.h"

int main(int argc, char **argv)
{
	return emberfs_daemon(argc, argv, NULL);
}
