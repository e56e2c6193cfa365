/* A slower disk for the benchmarks: fsync(2) and fdatasync(2) sleep SLOW_FSYNC_MS
 * milliseconds first, then flush as usual (LD_PRELOAD; built by slow_fsync.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void nap(void)
{
    const char *text = getenv("SLOW_FSYNC_MS");
    long ms = text ? atol(text) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    if (ms > 0)
        nanosleep(&ts, NULL);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    nap();
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    nap();
    return real(fd);
}
