/* ckpt_fs.c - see ckpt_fs.h. */
#define _POSIX_C_SOURCE 200809L
#include "ckpt_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "sha256.h"

void fs_join(char *out, size_t n, const char *a, const char *b) {
    if ((size_t)snprintf(out, n, "%s/%s", a, b) >= n)
        die("%s/%s: the path is too long; choose a shorter out=", a, b);
}

int fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

void fs_fsync(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("%s: cannot open to flush it to disk: %s", path, strerror(errno));
    /* EINVAL: a file system that cannot sync directories; nothing to do */
    if (fsync(fd) != 0 && errno != EINVAL)
        die("%s: flushing to disk failed: %s; check the file system", path, strerror(errno));
    close(fd);
}

void fs_rename(const char *from, const char *to) {
    if (rename(from, to) != 0)
        die("%s: cannot rename to %s: %s", from, to, strerror(errno));
}

void fs_remove_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        if (errno == ENOENT) return;
        die("%s: cannot open to remove it: %s", path, strerror(errno));
    }
    struct dirent *e;
    char sub[2200];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (unlink(sub) != 0 && errno != ENOENT)
            die("%s: cannot remove: %s", sub, strerror(errno));
    }
    closedir(d);
    if (rmdir(path) != 0 && errno != ENOENT)
        die("%s: cannot remove: %s", path, strerror(errno));
}

void fs_write_atomic(const char *dir, const char *name, const char *text) {
    char tmp[1200], path[1200];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f) die("%s: cannot create: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0 || !ok) die("%s: write failed: %s", tmp, strerror(errno));
    fs_rename(tmp, path);
    fs_fsync(dir);
}

int fs_sha256(const char *path, char hex[65], long long *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    Sha256 s;
    sha256_init(&s);
    static _Thread_local unsigned char buf[1 << 16];
    size_t n;
    long long total = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        sha256_update(&s, buf, n);
        total += (long long)n;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        errno = EIO;
        return -1;
    }
    uint8_t d[32];
    sha256_final(&s, d);
    sha256_to_hex(d, hex);
    *bytes = total;
    return 0;
}

void ckpt_step_name(long step, char *out, size_t n) { snprintf(out, n, "step-%08ld", step); }

long ckpt_step_of_name(const char *name) {
    if (strncmp(name, "step-", 5) != 0 || strlen(name) != 13) return -1;
    long v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

int ckpt_read_latest(const char *ckpt_dir, char *name, size_t n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/latest", ckpt_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return -1;
        die("%s: cannot read: %s", path, strerror(errno));
    }
    char buf[64] = "";
    if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    if (ckpt_step_of_name(buf) < 0)
        die("%s: holds '%s', not the name of a step directory (step-NNNNNNNN); "
            "write the name of a checkpoint in it, or pass that directory", path, buf);
    snprintf(name, n, "%s", buf);
    return 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int ckpt_list_steps(const char *ckpt_dir, long *steps, int max) {
    DIR *d = opendir(ckpt_dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        long s = ckpt_step_of_name(e->d_name);
        if (s >= 0) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof(long), cmp_long);
    return n;
}

/* dir = path/latest's target, if path has a `latest`. */
static int via_latest(const char *path, char *dir, size_t n) {
    char name[64];
    if (ckpt_read_latest(path, name, sizeof name) != 0) return -1;
    snprintf(dir, n, "%s/%s", path, name);
    if (!fs_is_dir(dir))
        die("%s/latest: names %s, which does not exist; pass an existing step directory "
            "of %s", path, name, path);
    return 0;
}

/* Is the last component of path a step directory's name? */
static int names_step(const char *path) {
    const char *slash = strrchr(path, '/');
    return ckpt_step_of_name(slash ? slash + 1 : path) >= 0;
}

void ckpt_resolve(const char *user_path, char *dir, size_t n) {
    char path[1100];
    snprintf(path, sizeof path, "%s", user_path);
    for (size_t len = strlen(path); len > 1 && path[len - 1] == '/'; len--) path[len - 1] = '\0';
    struct stat st;
    if (stat(path, &st) != 0)
        die("%s: cannot open the checkpoint: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        die("%s: not a checkpoint directory (it is a file); pass a step directory "
            "(<out>/ckpt/step-NNNNNNNN) or a run directory", path);
    DIR *d = opendir(path);
    if (!d) die("%s: cannot read the checkpoint directory: %s", path, strerror(errno));
    closedir(d);
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/manifest.h5", path);
    if (access(probe, F_OK) == 0 || names_step(path)) {
        snprintf(dir, n, "%s", path);
        return;
    }
    if (via_latest(path, dir, n) == 0) return;
    snprintf(probe, sizeof probe, "%s/ckpt", path);
    if (fs_is_dir(probe) && via_latest(probe, dir, n) == 0) return;
    die("%s: not a checkpoint: no manifest.h5, latest or ckpt/latest in it; pass a step "
        "directory (<out>/ckpt/step-NNNNNNNN) or a run directory", path);
}
