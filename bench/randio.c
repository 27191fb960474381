/* Block-device throughput for bench/disk.py (built with gcc -static, added to the test initramfs as
 * /bin/vireo-randio): sequential 1 MiB writes then reads over SEQ_MIB, then 4 KiB random writes then reads.
 *
 * usage: vireo-randio DEVICE SEQ_MIB RANDOM_OPS
 * O_DIRECT, so every operation reaches the virtual disk (no guest page cache), queue depth 1 as with dd, timed
 * with CLOCK_MONOTONIC. Random offsets come from a fixed-seed generator spread over the first 64 MiB (or the
 * whole device if smaller), so Vireo and QEMU see the same sequence. Each write pass ends with one fsync (a
 * flush request), counted in its time. Prints VIREO-BENCH-<seq-write|seq-read|rand-write|rand-read>=<MB/s>.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define BLOCK 4096
#define SEQ_BLOCK (1 << 20)
#define SPAN (64ULL << 20)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t next(uint64_t *state) {   /* xorshift64: the same sequence on every run */
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static int finish(int fd, int write_mode) {
    if (write_mode && fsync(fd) != 0) {
        perror("fsync");
        return -1;
    }
    return 0;
}

static int run_random(int fd, int write_mode, long ops, uint64_t blocks, char *buf) {
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    for (long i = 0; i < ops; i++) {
        off_t off = (off_t)(next(&state) % blocks) * BLOCK;
        ssize_t n = write_mode ? pwrite(fd, buf, BLOCK, off) : pread(fd, buf, BLOCK, off);
        if (n != BLOCK) {
            perror(write_mode ? "pwrite" : "pread");
            return -1;
        }
    }
    return finish(fd, write_mode);
}

static int run_sequential(int fd, int write_mode, long mib, char *buf) {
    for (long i = 0; i < mib; i++) {
        off_t off = (off_t)i * SEQ_BLOCK;
        ssize_t n = write_mode ? pwrite(fd, buf, SEQ_BLOCK, off) : pread(fd, buf, SEQ_BLOCK, off);
        if (n != SEQ_BLOCK) {
            perror(write_mode ? "pwrite" : "pread");
            return -1;
        }
    }
    return finish(fd, write_mode);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DEVICE SEQ_MIB RANDOM_OPS\n", argv[0]);
        return 2;
    }
    long mib = atol(argv[2]), ops = atol(argv[3]);
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0 || size < BLOCK) {
        fprintf(stderr, "%s: cannot get the device size\n", argv[1]);
        return 1;
    }
    if ((uint64_t)mib * SEQ_BLOCK > size)
        mib = size / SEQ_BLOCK;
    uint64_t blocks = (size < SPAN ? size : SPAN) / BLOCK;
    char *buf;
    if (posix_memalign((void **)&buf, BLOCK, SEQ_BLOCK) != 0)
        return 1;
    for (int i = 0; i < SEQ_BLOCK; i++)
        buf[i] = (char)(i * 131 + 7);     /* not zeros: nothing may shortcut the data */
    const char *names[4] = {"seq-write", "seq-read", "rand-write", "rand-read"};
    for (int pass = 0; pass < 4; pass++) {
        int write_mode = pass % 2 == 0;
        double t0 = now();
        int rc = pass < 2 ? run_sequential(fd, write_mode, mib, buf) : run_random(fd, write_mode, ops, blocks, buf);
        if (rc != 0)
            return 1;
        double bytes = pass < 2 ? (double)mib * SEQ_BLOCK : (double)ops * BLOCK;
        printf("VIREO-BENCH-%s=%.1f\n", names[pass], bytes / (now() - t0) / 1e6);
        fflush(stdout);
    }
    close(fd);
    return 0;
}
