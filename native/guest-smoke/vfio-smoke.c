// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio-smoke: end-to-end check of the vfio_mig_sim kernel module through the real
 * VFIO uAPI (container / group / device, migration v2).  Meant to run inside the guest
 * started by hwtests/guest/run-in-guest.sh --smoke; needs at least two devices named in
 * VFIO_MIG_SIM_DEVICES (more give the concurrency check).  Exit status 0 = all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

#ifndef VFIO_MIGRATION_PRE_COPY
#define VFIO_MIGRATION_PRE_COPY (1 << 2)
#define VFIO_DEVICE_STATE_PRE_COPY 6
#define VFIO_DEVICE_STATE_PRE_COPY_P2P 7
struct vfio_precopy_info {
	uint32_t argsz, flags;
	uint64_t initial_bytes, dirty_bytes;
};
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
#endif
#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
#endif

static int failures, checks;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		checks++;                                                       \
		if (!(cond)) {                                                  \
			failures++;                                             \
			printf("FAIL %s:%d: ", __func__, __LINE__);             \
			printf(__VA_ARGS__);                                    \
			printf(" [errno %d %s]\n", errno, strerror(errno));     \
		}                                                               \
	} while (0)

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

struct dev {
	char uuid[64];
	char sysfs[PATH_MAX];
	int container, group, fd;
};

static int sys_read(struct dev *d, const char *attr, char *buf, size_t len)
{
	char p[PATH_MAX + 64];
	int fd, n;

	snprintf(p, sizeof(p), "%s/%s", d->sysfs, attr);
	fd = open(p, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	while (n > 0 && (buf[n - 1] == '\n'))
		buf[--n] = 0;
	return 0;
}

static long long sys_num(struct dev *d, const char *attr)
{
	char b[128];

	if (sys_read(d, attr, b, sizeof(b)))
		return -1;
	return strtoll(b, NULL, 0);
}

static int sys_write(const char *dir, const char *attr, const char *val)
{
	char p[PATH_MAX + 64];
	int fd, n;

	snprintf(p, sizeof(p), "%s/%s", dir, attr);
	fd = open(p, O_WRONLY);
	if (fd < 0)
		return -1;
	n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -1 : 0;
}

#define PARAMS "/sys/module/vfio_mig_sim/parameters"

/* a writable module parameter; returns its old value (or -1) so the caller can restore it */
static long long set_param(const char *name, long long v)
{
	char p[256], b[64];
	long long old = -1;
	FILE *f;

	snprintf(p, sizeof(p), PARAMS "/%s", name);
	f = fopen(p, "r");
	if (f) {
		if (fgets(b, sizeof(b), f))
			old = b[0] == 'Y' ? 1 : b[0] == 'N' ? 0 : strtoll(b, NULL, 0);
		fclose(f);
	}
	snprintf(b, sizeof(b), "%lld", v);
	CHECK(sys_write(PARAMS, name, b) == 0, "module parameter %s = %s", name, b);
	return old;
}

static int open_dev(struct dev *d)
{
	char link[PATH_MAX], p[PATH_MAX + 32], *g;
	struct vfio_group_status st = { .argsz = sizeof(st) };
	ssize_t n;

	snprintf(p, sizeof(p), "%s/iommu_group", d->sysfs);
	n = readlink(p, link, sizeof(link) - 1);
	if (n < 0)
		return -1;
	link[n] = 0;
	g = strrchr(link, '/');
	d->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (d->container < 0)
		return -1;
	if (ioctl(d->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		return -1;
	snprintf(p, sizeof(p), "/dev/vfio/%s", g ? g + 1 : link);
	d->group = open(p, O_RDWR | O_CLOEXEC);
	if (d->group < 0)
		return -1;
	if (ioctl(d->group, VFIO_GROUP_GET_STATUS, &st) || !(st.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -1;
	if (ioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container))
		return -1;
	if (ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		return -1;
	d->fd = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, d->uuid);
	return d->fd < 0 ? -1 : 0;
}

static void close_dev(struct dev *d)
{
	if (d->fd >= 0)
		close(d->fd);
	if (d->group >= 0)
		close(d->group);
	if (d->container >= 0)
		close(d->container);
	d->fd = d->group = d->container = -1;
}

/* returns 0 / -errno; *data_fd gets the new fd or -1 */
static int set_state(struct dev *d, uint32_t state, int *data_fd)
{
	uint8_t buf[sizeof(struct vfio_device_feature) + sizeof(struct vfio_device_feature_mig_state)];
	struct vfio_device_feature *f = (void *)buf;
	struct vfio_device_feature_mig_state *m = (void *)f->data;

	memset(buf, 0, sizeof(buf));
	f->argsz = sizeof(buf);
	f->flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
	m->device_state = state;
	m->data_fd = -1;
	if (ioctl(d->fd, VFIO_DEVICE_FEATURE, f))
		return -errno;
	if (data_fd)
		*data_fd = m->data_fd;
	else if (m->data_fd >= 0)
		close(m->data_fd);
	return 0;
}

static int get_state(struct dev *d)
{
	uint8_t buf[sizeof(struct vfio_device_feature) + sizeof(struct vfio_device_feature_mig_state)];
	struct vfio_device_feature *f = (void *)buf;
	struct vfio_device_feature_mig_state *m = (void *)f->data;

	memset(buf, 0, sizeof(buf));
	f->argsz = sizeof(buf);
	f->flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
	if (ioctl(d->fd, VFIO_DEVICE_FEATURE, f))
		return -errno;
	return m->device_state;
}

static uint64_t mig_flags(struct dev *d)
{
	uint8_t buf[sizeof(struct vfio_device_feature) + sizeof(struct vfio_device_feature_migration)];
	struct vfio_device_feature *f = (void *)buf;

	memset(buf, 0, sizeof(buf));
	f->argsz = sizeof(buf);
	f->flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION;
	if (ioctl(d->fd, VFIO_DEVICE_FEATURE, f))
		return 0;
	return ((struct vfio_device_feature_migration *)f->data)->flags;
}

struct blob {
	uint8_t *p;
	size_t len, cap;
};

static void blob_add(struct blob *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/* reads until EOF (0) or ENOMSG (returns 1) or error (-errno) */
static int read_all(int fd, struct blob *b)
{
	static uint8_t buf[1 << 20];

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n == 0)
			return 0;
		if (n < 0)
			return errno == ENOMSG ? 1 : -errno;
		blob_add(b, buf, n);
	}
}

/* writes in chunks of `step` bytes; returns 0 or -errno */
static int write_all(int fd, const uint8_t *p, size_t len, size_t step)
{
	size_t off = 0;

	while (off < len) {
		size_t n = len - off < step ? len - off : step;
		ssize_t w = write(fd, p + off, n);

		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		off += w;
	}
	return 0;
}

/* walks a saved stream's record headers; returns number of records or -1 */
static int count_records(const struct blob *b)
{
	size_t off = 0;
	int n = 0;

	while (off + 16 <= b->len) {
		uint64_t size;

		memcpy(&size, b->p + off, 8);
		if (size > b->len - off - 16)
			return -1;
		off += 16 + size;
		n++;
	}
	return off == b->len ? n : -1;
}

static const char *S(int s)
{
	static const char *n[] = { "ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING",
				   "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P" };
	return s >= 0 && s < 8 ? n[s] : "?";
}

static void test_info(struct dev *d)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_region_info r = { .argsz = sizeof(r) };
	uint32_t v, bar;
	uint8_t pat[64], back[64];
	int i;

	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_INFO, &info) == 0, "GET_INFO");
	CHECK(info.flags & VFIO_DEVICE_FLAGS_PCI, "PCI flag");
	CHECK(info.flags & VFIO_DEVICE_FLAGS_RESET, "RESET flag");
	CHECK(info.num_regions >= VFIO_PCI_NUM_REGIONS, "num_regions %u", info.num_regions);

	r.index = VFIO_PCI_CONFIG_REGION_INDEX;
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r) == 0, "config region info");
	CHECK(r.size == 256, "config size %llu", (unsigned long long)r.size);
	CHECK(pread(d->fd, &v, 4, r.offset) == 4, "config read");
	printf("  config: vendor %04x device %04x\n", v & 0xffff, v >> 16);
	CHECK(v == 0x7a6d1b36, "vendor/device %08x", v);
	bar = 0xffffffff;
	CHECK(pwrite(d->fd, &bar, 4, r.offset + 0x10) == 4, "BAR0 sizing write");
	CHECK(pread(d->fd, &bar, 4, r.offset + 0x10) == 4, "BAR0 sizing read");
	CHECK(bar == 0xfffff000, "BAR0 sizing %08x", bar);
	CHECK(pread(d->fd, &v, 4, r.offset + 256) < 0 && errno == EINVAL, "config read past end");

	r.index = VFIO_PCI_BAR0_REGION_INDEX;
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r) == 0, "BAR0 region info");
	CHECK(r.size == 4096, "BAR0 size %llu", (unsigned long long)r.size);
	for (i = 0; i < 64; i++)
		pat[i] = i * 7 + 3;
	CHECK(pwrite(d->fd, pat, 64, r.offset + 100) == 64, "BAR0 write");
	CHECK(pread(d->fd, back, 64, r.offset + 100) == 64 && !memcmp(pat, back, 64), "BAR0 readback");
	CHECK(pread(d->fd, back, 64, r.offset + 4096) < 0, "BAR0 read past end");

	r.index = 1000;
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r) < 0 && errno == EINVAL, "bad region index");
	r.argsz = 4;
	r.index = 0;
	CHECK(ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r) < 0 && errno == EINVAL, "short argsz");
}

static int expect_state(struct dev *d, int s)
{
	int g = get_state(d);

	CHECK(g == s, "state %s, expected %s", S(g), S(s));
	return g == s;
}

static void test_fsm(struct dev *d, int precopy)
{
	static const struct { int to; int fd; } walk[] = {
		{ VFIO_DEVICE_STATE_RUNNING_P2P, 0 }, { VFIO_DEVICE_STATE_STOP, 0 },
		{ VFIO_DEVICE_STATE_RUNNING_P2P, 0 }, { VFIO_DEVICE_STATE_RUNNING, 0 },
		{ VFIO_DEVICE_STATE_STOP, 0 },		/* combination via RUNNING_P2P */
		{ VFIO_DEVICE_STATE_STOP_COPY, 1 }, { VFIO_DEVICE_STATE_STOP, 0 },
		{ VFIO_DEVICE_STATE_RESUMING, 1 }, { VFIO_DEVICE_STATE_STOP, 0 },
		{ VFIO_DEVICE_STATE_STOP_COPY, 1 }, { VFIO_DEVICE_STATE_RESUMING, 1 },
		{ VFIO_DEVICE_STATE_RUNNING, 0 },	/* RESUMING -> STOP -> RUNNING_P2P -> RUNNING */
		{ VFIO_DEVICE_STATE_STOP_COPY, 1 },	/* RUNNING -> ... -> STOP_COPY */
		{ VFIO_DEVICE_STATE_RUNNING, 0 },
	};
	unsigned int i;
	int fd, r;

	for (i = 0; i < sizeof(walk) / sizeof(walk[0]); i++) {
		fd = -1;
		r = set_state(d, walk[i].to, &fd);
		CHECK(r == 0, "-> %s: %d", S(walk[i].to), r);
		CHECK((fd >= 0) == walk[i].fd, "-> %s data_fd %d", S(walk[i].to), fd);
		if (fd >= 0)
			close(fd);
		expect_state(d, walk[i].to);
	}
	r = set_state(d, VFIO_DEVICE_STATE_ERROR, NULL);
	CHECK(r == -EINVAL, "-> ERROR gives %d, want -EINVAL", r);
	r = set_state(d, 99, NULL);
	CHECK(r == -EINVAL, "-> 99 gives %d, want -EINVAL", r);
	expect_state(d, VFIO_DEVICE_STATE_RUNNING);

	if (precopy) {
		static const struct { int to; int fd; } pw[] = {
			{ VFIO_DEVICE_STATE_PRE_COPY, 1 }, { VFIO_DEVICE_STATE_PRE_COPY_P2P, 0 },
			{ VFIO_DEVICE_STATE_PRE_COPY, 0 }, { VFIO_DEVICE_STATE_RUNNING, 0 },
			{ VFIO_DEVICE_STATE_RUNNING_P2P, 0 }, { VFIO_DEVICE_STATE_PRE_COPY_P2P, 1 },
			{ VFIO_DEVICE_STATE_RUNNING_P2P, 0 }, { VFIO_DEVICE_STATE_PRE_COPY_P2P, 1 },
			{ VFIO_DEVICE_STATE_STOP_COPY, 0 }, { VFIO_DEVICE_STATE_RUNNING, 0 },
		};
		for (i = 0; i < sizeof(pw) / sizeof(pw[0]); i++) {
			fd = -1;
			r = set_state(d, pw[i].to, &fd);
			CHECK(r == 0, "-> %s: %d", S(pw[i].to), r);
			CHECK((fd >= 0) == pw[i].fd, "-> %s data_fd %d", S(pw[i].to), fd);
			if (fd >= 0)
				close(fd);
			expect_state(d, pw[i].to);
		}
		/* blocked arcs: STOP_COPY -> PRE_COPY(_P2P) (the unfixed core helper spins on them) */
		CHECK(set_state(d, VFIO_DEVICE_STATE_STOP_COPY, NULL) == 0, "-> STOP_COPY");
		r = set_state(d, VFIO_DEVICE_STATE_PRE_COPY, NULL);
		CHECK(r == -EINVAL, "STOP_COPY -> PRE_COPY gives %d, want -EINVAL", r);
		r = set_state(d, VFIO_DEVICE_STATE_PRE_COPY_P2P, NULL);
		CHECK(r == -EINVAL, "STOP_COPY -> PRE_COPY_P2P gives %d, want -EINVAL", r);
		expect_state(d, VFIO_DEVICE_STATE_STOP_COPY);
		/* STOP -> PRE_COPY is a combination through RUNNING_P2P */
		CHECK(set_state(d, VFIO_DEVICE_STATE_STOP, NULL) == 0, "-> STOP");
		r = set_state(d, VFIO_DEVICE_STATE_PRE_COPY, &fd);
		CHECK(r == 0 && fd >= 0, "STOP -> PRE_COPY (combination) %d", r);
		if (fd >= 0)
			close(fd);
		CHECK(set_state(d, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "-> RUNNING");
	}
}

/* saves src in STOP_COPY into b; returns 0 on success */
static int save_stop_copy(struct dev *src, struct blob *b)
{
	int fd = -1, r;
	char x;

	CHECK(set_state(src, VFIO_DEVICE_STATE_STOP, NULL) == 0, "src -> STOP");
	r = set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd);
	CHECK(r == 0 && fd >= 0, "src -> STOP_COPY %d", r);
	if (fd < 0)
		return -1;
	CHECK(pread(fd, &x, 1, 0) < 0 && errno == ESPIPE, "pread on data fd gives ESPIPE");
	r = read_all(fd, b);
	CHECK(r == 0, "read to EOF %d", r);
	CHECK(read(fd, &x, 1) == 0, "read after EOF is 0");
	CHECK(set_state(src, VFIO_DEVICE_STATE_STOP, NULL) == 0, "src STOP_COPY -> STOP");
	CHECK(read(fd, &x, 1) < 0 && errno == ENODEV, "data fd dead after leaving STOP_COPY");
	close(fd);
	return r;
}

/* returns the write result (0/-errno) and the RESUMING->STOP result in *stop */
static int resume(struct dev *dst, const uint8_t *p, size_t len, size_t step, int *stop,
		  double *ms)
{
	int fd = -1, r, w;
	double t0;

	if (get_state(dst) != VFIO_DEVICE_STATE_STOP)
		CHECK(set_state(dst, VFIO_DEVICE_STATE_STOP, NULL) == 0, "dst -> STOP");
	r = set_state(dst, VFIO_DEVICE_STATE_RESUMING, &fd);
	CHECK(r == 0 && fd >= 0, "dst -> RESUMING %d", r);
	if (fd < 0)
		return -EIO;
	t0 = now_ms();
	w = write_all(fd, p, len, step);
	if (ms)
		*ms = now_ms() - t0;
	if (w) {
		char x = 0;
		int again = write(fd, &x, 1) < 0 ? -errno : 0;

		CHECK(again == -ENODEV, "write after failure gives %d, want -ENODEV", again);
	}
	*stop = set_state(dst, VFIO_DEVICE_STATE_STOP, NULL);
	close(fd);
	return w;
}

static void digest(struct dev *d, char *out, size_t n)
{
	if (sys_read(d, "digest", out, n))
		snprintf(out, n, "?");
}

static void reset_dev(struct dev *d)
{
	CHECK(ioctl(d->fd, VFIO_DEVICE_RESET) == 0, "RESET");
	expect_state(d, VFIO_DEVICE_STATE_RUNNING);
}

static void test_save_resume(struct dev *src, struct dev *dst)
{
	struct blob b = { 0 };
	char ds[128], dd[128], tmp[64];
	long long loads0, bytes0, old_strict;
	double ms;
	int stop, w, n;
	size_t steps[] = { 1 << 20, 777777, 4093 };
	unsigned int i;

	CHECK(sys_write(src->sysfs, "seed", "0x1234abcd") == 0, "set seed");
	CHECK(sys_write(src->sysfs, "dirty", "37") == 0, "dirty 37 pages");
	digest(src, ds, sizeof(ds));
	CHECK(save_stop_copy(src, &b) == 0, "save");
	n = count_records(&b);
	printf("  saved %zu bytes in %d records\n", b.len, n);
	CHECK(n >= 3, "record framing of the saved stream (%d)", n);
	CHECK(b.len > (size_t)sys_num(src, "state_size"), "stream holds the state");

	for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		loads0 = sys_num(dst, "loads");
		bytes0 = sys_num(dst, "bytes_loaded");
		w = resume(dst, b.p, b.len, steps[i], &stop, &ms);
		CHECK(w == 0, "resume write (step %zu) %d", steps[i], w);
		CHECK(stop == 0, "RESUMING -> STOP %d", stop);
		digest(dst, dd, sizeof(dd));
		CHECK(!strcmp(ds, dd), "digests differ after resume: %s vs %s", ds, dd);
		printf("  resume in %zu-byte writes: %.0f ms, loads +%lld, bytes_loaded +%lld, digest %.16s... %s\n",
		       steps[i], ms, sys_num(dst, "loads") - loads0,
		       sys_num(dst, "bytes_loaded") - bytes0, dd, strcmp(ds, dd) ? "DIFFERENT" : "equal");
	}
	sys_read(dst, "load_us_per_mib", tmp, sizeof(tmp));
	printf("  load_us_per_mib %s, peak_concurrent_loads %lld\n", tmp,
	       sys_num(dst, "peak_concurrent_loads"));

	/* strict_resume=1: a refused or incomplete stream fails RESUMING->STOP and leaves ERROR */
	old_strict = set_param("strict_resume", 1);
	/* corrupt one data byte in the middle: crc mismatch */
	b.p[b.len / 2] ^= 0x5a;
	w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == -EIO || w == -EINVAL, "corrupt stream refused (write %d)", w);
	CHECK(stop != 0, "RESUMING -> STOP after a corrupt stream fails (%d)", stop);
	expect_state(dst, VFIO_DEVICE_STATE_ERROR);
	CHECK(set_state(dst, VFIO_DEVICE_STATE_RUNNING, NULL) == -EINVAL, "no way out of ERROR but reset");
	reset_dev(dst);
	b.p[b.len / 2] ^= 0x5a;

	/* misordered: swap the 2nd and 3rd MiB (or halves of a small stream) */
	if (b.len >= 3 << 20) {
		uint8_t *c = malloc(b.len);

		memcpy(c, b.p, b.len);
		memcpy(c + (1 << 20), b.p + (2 << 20), 1 << 20);
		memcpy(c + (2 << 20), b.p + (1 << 20), 1 << 20);
		w = resume(dst, c, b.len, 1 << 20, &stop, NULL);
		CHECK(w != 0, "misordered stream refused (write %d)", w);
		CHECK(stop != 0, "RESUMING -> STOP after misordered stream fails (%d)", stop);
		reset_dev(dst);
		free(c);
	}

	/* truncated: everything but the last 100 bytes */
	w = resume(dst, b.p, b.len - 100, 1 << 20, &stop, NULL);
	CHECK(w == 0, "truncated stream writes succeed (%d)", w);
	CHECK(stop == -EIO, "RESUMING -> STOP with a truncated stream fails (%d)", stop);
	expect_state(dst, VFIO_DEVICE_STATE_ERROR);
	reset_dev(dst);

	/* trailing garbage after END */
	{
		uint8_t *c = malloc(b.len + 16);

		memcpy(c, b.p, b.len);
		memset(c + b.len, 0xee, 16);
		w = resume(dst, c, b.len + 16, 1 << 20, &stop, NULL);
		CHECK(w != 0, "bytes after END refused (%d)", w);
		reset_dev(dst);
		free(c);
	}

	/* a garbage header: absurd record size */
	{
		uint8_t junk[16] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 3, 0, 0, 0 };

		w = resume(dst, junk, 16, 16, &stop, NULL);
		CHECK(w == -EINVAL, "absurd record size refused (%d)", w);
		reset_dev(dst);
	}

	/* injected firmware failures */
	CHECK(sys_write(dst->sysfs, "inject_load_errors", "1") == 0, "inject a load error");
	w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == -EIO, "injected load error fails the write with EIO (%d)", w);
	CHECK(stop == -EIO, "and RESUMING -> STOP (%d)", stop);
	CHECK(sys_num(dst, "inject_load_errors") == 0, "injection consumed");
	reset_dev(dst);

	/*
	 * strict_resume=0, as mlx5: RESUMING->STOP succeeds whatever was written; a write that
	 * failed said so, an incomplete last record is dropped silently (only the writer can tell).
	 */
	set_param("strict_resume", 0);
	w = resume(dst, b.p, b.len - 100, 1 << 20, &stop, NULL);
	CHECK(w == 0 && stop == 0, "truncated stream accepted at RESUMING -> STOP (%d, %d)", w, stop);
	expect_state(dst, VFIO_DEVICE_STATE_STOP);
	digest(dst, dd, sizeof(dd));
	CHECK(strcmp(ds, dd) != 0, "the dropped last record is missing from the state");
	b.p[b.len / 2] ^= 0x5a;
	w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == -EIO && stop == 0, "corrupt stream: the write fails, RESUMING -> STOP does not (%d, %d)", w, stop);
	expect_state(dst, VFIO_DEVICE_STATE_STOP);
	b.p[b.len / 2] ^= 0x5a;
	set_param("strict_resume", old_strict);
	CHECK(sys_write(src->sysfs, "inject_save_errors", "1") == 0, "inject a save error");
	{
		struct blob e = { 0 };
		int fd = -1, r;
		char x;

		CHECK(set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd) == 0 && fd >= 0, "src -> STOP_COPY");
		r = read_all(fd, &e);
		CHECK(r == -EIO, "injected save error: read gives EIO (%d)", r);
		CHECK(read(fd, &x, 1) < 0 && errno == EIO, "save fd stays failed");
		CHECK(set_state(src, VFIO_DEVICE_STATE_STOP, NULL) == 0, "STOP_COPY -> STOP after a failed save");
		close(fd);
		free(e.p);
	}

	/* and the good stream still works afterwards */
	w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == 0 && stop == 0, "good stream after failures (%d, %d)", w, stop);
	digest(dst, dd, sizeof(dd));
	CHECK(!strcmp(ds, dd), "digests differ: %s vs %s", ds, dd);
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "src -> RUNNING");
	CHECK(set_state(dst, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "dst -> RUNNING");
	free(b.p);
}

static void test_precopy(struct dev *src, struct dev *dst)
{
	struct vfio_precopy_info info = { .argsz = sizeof(info) };
	struct blob b = { 0 };
	char ds[128], dd[128];
	int fd = -1, fd2 = -1, r, stop, w;
	uint8_t buf[sizeof(struct vfio_device_feature) + 8];
	struct vfio_device_feature *f = (void *)buf;
	uint64_t dsz;

	memset(buf, 0, sizeof(buf));
	f->argsz = sizeof(buf);
	f->flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE;
	r = ioctl(src->fd, VFIO_DEVICE_FEATURE, f);
	memcpy(&dsz, f->data, 8);
	CHECK(r == 0 && dsz >= (uint64_t)sys_num(src, "state_size"), "MIG_DATA_SIZE %llu",
	      (unsigned long long)dsz);
	printf("  MIG_DATA_SIZE stop_copy_length %llu\n", (unsigned long long)dsz);

	CHECK(sys_write(src->sysfs, "dirty_kib_per_s", "0") == 0, "dirty rate 0");
	r = set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &fd);
	CHECK(r == 0 && fd >= 0, "-> PRE_COPY %d", r);
	if (fd < 0)
		return;
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0, "PRECOPY_INFO");
	printf("  PRE_COPY start: initial %llu dirty %llu\n", (unsigned long long)info.initial_bytes,
	       (unsigned long long)info.dirty_bytes);
	CHECK(info.initial_bytes >= (uint64_t)sys_num(src, "state_size"), "initial_bytes");
	r = read_all(fd, &b);
	CHECK(r == 1, "read until ENOMSG (%d)", r);
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0 && info.initial_bytes == 0 &&
	      info.dirty_bytes == 0, "after initial pass: initial %llu dirty %llu",
	      (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	CHECK(sys_write(src->sysfs, "dirty", "20") == 0, "dirty 20 pages while in PRE_COPY");
	{
		/* as on mlx5: what was dirtied is saved, and readable, only once PRECOPY_INFO asks */
		size_t before = b.len;

		CHECK(read_all(fd, &b) == 1 && b.len == before, "no new pre-copy data before PRECOPY_INFO (%zu bytes)",
		      b.len - before);
	}
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0 && info.dirty_bytes > 0,
	      "dirty_bytes after dirtying %llu", (unsigned long long)info.dirty_bytes);
	printf("  after dirtying 20 pages: initial %llu dirty %llu\n",
	       (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	r = read_all(fd, &b);
	CHECK(r == 1, "read dirty data until ENOMSG (%d)", r);
	/* a dirty rate while running */
	CHECK(sys_write(src->sysfs, "dirty_kib_per_s", "4096") == 0, "dirty rate 4 MiB/s");
	usleep(300000);
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0 && info.dirty_bytes > 0,
	      "dirty rate produced dirty_bytes %llu", (unsigned long long)info.dirty_bytes);
	printf("  after 300 ms at 4 MiB/s: dirty %llu\n", (unsigned long long)info.dirty_bytes);
	CHECK(set_state(src, VFIO_DEVICE_STATE_PRE_COPY_P2P, &fd2) == 0 && fd2 < 0, "-> PRE_COPY_P2P");
	CHECK(set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd2) == 0 && fd2 < 0,
	      "PRE_COPY_P2P -> STOP_COPY keeps the fd");
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) < 0 && errno == EINVAL,
	      "PRECOPY_INFO in STOP_COPY is EINVAL");
	r = read_all(fd, &b);
	CHECK(r == 0, "read rest to EOF (%d)", r);
	digest(src, ds, sizeof(ds));
	CHECK(set_state(src, VFIO_DEVICE_STATE_STOP, NULL) == 0, "src -> STOP");
	close(fd);
	printf("  pre-copy stream %zu bytes, %d records\n", b.len, count_records(&b));
	w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == 0 && stop == 0, "resume pre-copy stream (%d, %d)", w, stop);
	digest(dst, dd, sizeof(dd));
	CHECK(!strcmp(ds, dd), "pre-copy digests differ: %s vs %s", ds, dd);
	printf("  pre-copy digests %s\n", strcmp(ds, dd) ? "DIFFER" : "equal");
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "src -> RUNNING");
	CHECK(set_state(dst, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "dst -> RUNNING");
	sys_write(src->sysfs, "dirty_kib_per_s", "1024");
	free(b.p);

	/* PRE_COPY -> RUNNING kills the fd */
	r = set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &fd);
	CHECK(r == 0 && fd >= 0, "-> PRE_COPY again");
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "PRE_COPY -> RUNNING");
	{
		char x;

		CHECK(read(fd, &x, 1) < 0 && errno == ENODEV, "fd dead after PRE_COPY -> RUNNING");
		CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) < 0 && errno == ENODEV,
		      "PRECOPY_INFO on a dead fd");
	}
	close(fd);
}

static void test_close_with_fd(struct dev *d)
{
	int fd = -1;
	char x;

	CHECK(set_state(d, VFIO_DEVICE_STATE_STOP_COPY, &fd) == 0 && fd >= 0, "-> STOP_COPY");
	close(d->fd);
	d->fd = -1;
	CHECK(read(fd, &x, 1) < 0 && errno == ENODEV, "data fd dead after closing the device");
	close(fd);
	d->fd = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, d->uuid);
	CHECK(d->fd >= 0, "reopen device");
	expect_state(d, VFIO_DEVICE_STATE_RUNNING);
}

/* One write() of a whole stream, on its own thread, so that the main thread can reset meanwhile. */
struct load_job {
	int fd;
	const uint8_t *p;
	size_t len;
	int w;
	volatile int done;
};

static void *load_thread(void *arg)
{
	struct load_job *j = arg;

	j->w = write_all(j->fd, j->p, j->len, j->len);
	j->done = 1;
	return NULL;
}

/*
 * As on mlx5, VFIO_DEVICE_RESET during a load returns at once and does not abort it: the
 * write finishes every record it carries, then the reset applies (RUNNING, data fd dead,
 * power-on state).  A GET meanwhile waits for the write, and then sees RUNNING.
 */
static void test_reset_during_load(struct dev *src, struct dev *dst, const char *parent)
{
	struct blob b = { 0 };
	struct load_job j = { .fd = -1 };
	struct dev par = { 0 };
	char power_on[128], dd[128], x = 0;
	long long loads0;
	pthread_t th;
	double t0;
	int r;

	snprintf(par.sysfs, sizeof(par.sysfs), "%s", parent);
	reset_dev(dst);
	digest(dst, power_on, sizeof(power_on));
	CHECK(save_stop_copy(src, &b) == 0, "save");
	/* 8 MiB at 0.5 s per MiB: the load lasts 4 s, the margin for RESET to come back */
	CHECK(sys_write(dst->sysfs, "load_us_per_mib", "500000") == 0, "slow loads");
	CHECK(set_state(dst, VFIO_DEVICE_STATE_STOP, NULL) == 0, "dst -> STOP");
	r = set_state(dst, VFIO_DEVICE_STATE_RESUMING, &j.fd);
	CHECK(r == 0 && j.fd >= 0, "dst -> RESUMING %d", r);
	if (j.fd < 0)
		goto out;
	loads0 = sys_num(dst, "loads");
	j.p = b.p;
	j.len = b.len;
	pthread_create(&th, NULL, load_thread, &j);
	t0 = now_ms();
	while (sys_num(&par, "active_loads") == 0 && now_ms() - t0 < 20000)
		usleep(1000);
	CHECK(sys_num(&par, "active_loads") > 0, "the load started");
	t0 = now_ms();
	CHECK(ioctl(dst->fd, VFIO_DEVICE_RESET) == 0, "RESET during a load");
	CHECK(!j.done, "RESET came back while the write was still loading");
	printf("  RESET during a load returned in %.1f ms\n", now_ms() - t0);
	r = get_state(dst);
	CHECK(r == VFIO_DEVICE_STATE_RUNNING, "after the write the reset applied: %s", S(r));
	pthread_join(th, NULL);
	CHECK(j.w == 0, "the load in progress completed (%d)", j.w);
	CHECK(sys_num(dst, "loads") == loads0 + 2, "both CHUNK records of the write loaded (%lld)",
	      sys_num(dst, "loads") - loads0);
	CHECK(write(j.fd, &x, 1) < 0 && errno == ENODEV, "the data fd is dead after the reset");
	close(j.fd);
	digest(dst, dd, sizeof(dd));
	CHECK(!strcmp(dd, power_on), "the reset left the power-on state, not the loaded one");
out:
	sys_write(dst->sysfs, "load_us_per_mib", "25000");
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "src -> RUNNING");
	free(b.p);
}

/* reset_on_open_close=1 (vfio-pci and a VF): closing and opening reset; 0 keeps the state. */
static void test_reset_on_open_close(struct dev *src, struct dev *dst)
{
	struct blob b = { 0 };
	char power_on[128], ds[128], dd[128];
	long long old = -1;
	int on, w, stop;

	digest(src, ds, sizeof(ds));
	CHECK(save_stop_copy(src, &b) == 0, "save");
	for (on = 1; on >= 0; on--) {
		long long prev = set_param("reset_on_open_close", on);

		if (old < 0)
			old = prev;
		reset_dev(dst);
		digest(dst, power_on, sizeof(power_on));
		w = resume(dst, b.p, b.len, 1 << 20, &stop, NULL);
		CHECK(w == 0 && stop == 0, "resume (%d %d)", w, stop);
		digest(dst, dd, sizeof(dd));
		CHECK(!strcmp(ds, dd), "loaded");
		close(dst->fd);
		dst->fd = -1;
		digest(dst, dd, sizeof(dd));
		if (on)
			CHECK(!strcmp(dd, power_on), "closing the device reset it: the loaded state is gone");
		else
			CHECK(!strcmp(dd, ds), "reset_on_open_close=0: the loaded state survives the close");
		CHECK(sys_write(dst->sysfs, "dirty", "5") == 0, "dirty 5 pages while closed");
		dst->fd = ioctl(dst->group, VFIO_GROUP_GET_DEVICE_FD, dst->uuid);
		CHECK(dst->fd >= 0, "reopen");
		expect_state(dst, VFIO_DEVICE_STATE_RUNNING);
		digest(dst, dd, sizeof(dd));
		if (on)
			CHECK(!strcmp(dd, power_on), "opening the device reset it: what changed while closed is gone");
		else
			CHECK(strcmp(dd, power_on) && strcmp(dd, ds), "reset_on_open_close=0: opening keeps what changed");
		printf("  reset_on_open_close=%d: state after close/open %s\n", on,
		       !strcmp(dd, power_on) ? "power-on" : "kept");
	}
	set_param("reset_on_open_close", old);
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "src -> RUNNING");
	free(b.p);
}

/*
 * A device created while the module's dirty_kib_per_s is 0 dirties nothing in PRE_COPY: once
 * its initial image is read, PRECOPY_INFO reports nothing left (a live migration converges).
 */
static void test_precopy_without_dirtying(const char *parent, const char *type, struct dev *peer)
{
	struct vfio_precopy_info info = { .argsz = sizeof(info) };
	struct dev d = { .fd = -1, .group = -1, .container = -1 };
	struct blob b = { 0 };
	char p[PATH_MAX], ds[128], dd[128];
	long long old;
	int fd = -1, r, w, stop;
	FILE *f;

	f = fopen("/proc/sys/kernel/random/uuid", "r");
	CHECK(f && fgets(d.uuid, sizeof(d.uuid), f), "a new uuid");
	if (f)
		fclose(f);
	d.uuid[strcspn(d.uuid, "\n")] = 0;
	old = set_param("dirty_kib_per_s", 0);
	snprintf(p, sizeof(p), "%s/mdev_supported_types/%s", parent, type);
	r = sys_write(p, "create", d.uuid);
	set_param("dirty_kib_per_s", old);
	CHECK(r == 0, "create mdev %s", d.uuid);
	if (r)
		return;
	snprintf(d.sysfs, sizeof(d.sysfs), "/sys/bus/mdev/devices/%s", d.uuid);
	CHECK(open_dev(&d) == 0, "open the new device");
	CHECK(sys_num(&d, "dirty_kib_per_s") == 0, "its dirty rate is 0 (%lld)", sys_num(&d, "dirty_kib_per_s"));
	if (d.fd < 0)
		goto out;
	r = set_state(&d, VFIO_DEVICE_STATE_PRE_COPY, &fd);
	CHECK(r == 0 && fd >= 0, "-> PRE_COPY %d", r);
	if (fd < 0)
		goto out;
	CHECK(read_all(fd, &b) == 1, "initial image read until ENOMSG");
	usleep(300000);
	CHECK(ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0 && info.initial_bytes == 0 &&
	      info.dirty_bytes == 0, "300 ms later: initial %llu dirty %llu",
	      (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	{
		size_t before = b.len;

		CHECK(read_all(fd, &b) == 1 && b.len == before, "and nothing more to read (%zu bytes)",
		      b.len - before);
	}
	CHECK(set_state(&d, VFIO_DEVICE_STATE_STOP_COPY, NULL) == 0, "PRE_COPY -> STOP_COPY");
	CHECK(read_all(fd, &b) == 0, "the rest to EOF");
	digest(&d, ds, sizeof(ds));
	close(fd);
	CHECK(sys_num(&d, "dirtied_pages") == 0, "no page dirtied (%lld)", sys_num(&d, "dirtied_pages"));
	w = resume(peer, b.p, b.len, 1 << 20, &stop, NULL);
	CHECK(w == 0 && stop == 0, "resume (%d %d)", w, stop);
	digest(peer, dd, sizeof(dd));
	CHECK(!strcmp(ds, dd), "digests differ");
	printf("  new device with dirty_kib_per_s=0: %zu-byte live stream, dirty 0 after the initial image, digests %s\n",
	       b.len, strcmp(ds, dd) ? "DIFFER" : "equal");
	CHECK(set_state(peer, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "peer -> RUNNING");
out:
	close_dev(&d);
	CHECK(sys_write(d.sysfs, "remove", "1") == 0, "remove the new device");
	free(b.p);
}

/* VFIO_DEVICE_FEATURE with a payload copied in and back; 0 or -errno */
static int feature(struct dev *d, uint32_t flags, void *data, size_t len)
{
	uint8_t buf[sizeof(struct vfio_device_feature) + 64];
	struct vfio_device_feature *f = (void *)buf;

	memset(buf, 0, sizeof(buf));
	f->argsz = sizeof(*f) + len;
	f->flags = flags;
	if (len)
		memcpy(f->data, data, len);
	if (ioctl(d->fd, VFIO_DEVICE_FEATURE, f))
		return -errno;
	if (len)
		memcpy(data, f->data, len);
	return 0;
}

/* the running kernel's config (VFIO_MIG_SIM_KCONFIG, set by run-in-guest.sh): 1 option y/m, 0 not, -1 unknown */
static int kconfig_has(const char *opt)
{
	const char *path = getenv("VFIO_MIG_SIM_KCONFIG");
	size_t n = strlen(opt);
	char line[512];
	int found = 0;
	FILE *f;

	if (!path || !(f = fopen(path, "r")))
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, opt, n) && line[n] == '=' && (line[n + 1] == 'y' || line[n + 1] == 'm'))
			found = 1;
	fclose(f);
	return found;
}

/*
 * DMA logging by mlx5's rules: START gives back the page size, a second START is EINVAL,
 * more ranges than the core's 256 are E2BIG, the device's own writes (sysfs dma_write) in
 * a logged range are dirty, REPORT reads and clears them where the kernel has the iova
 * bitmap code (CONFIG_IOMMUFD_DRIVER; else the core answers EOPNOTSUPP), STOP ends it.
 */
static void test_dma_logging(struct dev *d)
{
	struct vfio_device_feature_dma_logging_range r[257];
	struct vfio_device_feature_dma_logging_control c = {
		.page_size = 4096, .num_ranges = 2, .ranges = (uintptr_t)r,
	};
	struct vfio_device_feature_dma_logging_report rep = {
		.iova = 2 << 20, .length = 1 << 20, .page_size = 4096,
	};
	uint64_t bitmap[4] = { 0 };
	char st[128];
	int ret, has = kconfig_has("CONFIG_IOMMUFD_DRIVER");
	unsigned int i;

	for (i = 0; i < 257; i++) {
		r[i].iova = (uint64_t)i * (2 << 20);
		r[i].length = 1 << 20;
	}
	rep.bitmap = (uintptr_t)bitmap;
	CHECK(feature(d, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET |
		      VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0) == 0, "PROBE DMA_LOGGING_START");
	CHECK(feature(d, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET |
		      VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, NULL, 0) == 0, "PROBE DMA_LOGGING_REPORT");
	c.num_ranges = 257;
	ret = feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &c, sizeof(c));
	CHECK(ret == -E2BIG, "257 ranges give %d, want -E2BIG", ret);
	c.num_ranges = 2;
	ret = feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &c, sizeof(c));
	CHECK(ret == 0 && c.page_size == 4096, "START %d, page size %llu", ret, (unsigned long long)c.page_size);
	ret = feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &c, sizeof(c));
	CHECK(ret == -EINVAL, "a second START gives %d, want -EINVAL", ret);
	/* ranges [0, 1 MiB) and [2, 3 MiB): the device writes pages 0 and 1 of the second, and memory outside both */
	CHECK(sys_write(d->sysfs, "dma_write", "2097152 8192") == 0, "dma_write in a range");
	CHECK(sys_write(d->sysfs, "dma_write", "1048576 4096") == 0, "dma_write outside");
	sys_read(d, "dma_logging", st, sizeof(st));
	CHECK(!strcmp(st, "page_size 4096 ranges 2 dirty 2"), "dma_logging '%s'", st);
	ret = feature(d, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &rep, sizeof(rep));
	if (has == 0) {
		CHECK(ret == -EOPNOTSUPP, "REPORT without CONFIG_IOMMUFD_DRIVER gives %d, want -EOPNOTSUPP", ret);
	} else if (has == 1) {
		CHECK(ret == 0 && bitmap[0] == 3 && !bitmap[1] && !bitmap[2] && !bitmap[3],
		      "REPORT %d, bitmap %llx", ret, (unsigned long long)bitmap[0]);
		sys_read(d, "dma_logging", st, sizeof(st));
		CHECK(!strcmp(st, "page_size 4096 ranges 2 dirty 0"), "read and cleared: '%s'", st);
	}
	printf("  DMA logging: REPORT gave %d (CONFIG_IOMMUFD_DRIVER %s)\n", ret,
	       has < 0 ? "unknown" : has ? "set" : "not set");
	CHECK(feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0) == 0, "STOP");
	sys_read(d, "dma_logging", st, sizeof(st));
	CHECK(!strcmp(st, "off"), "dma_logging after STOP '%s'", st);
}

/* Concurrent loads: all pairs resume at once; the parent's limit must hold. */
struct pair_job {
	struct dev *dst;
	struct blob *b;
	int w, stop;
	double ms;
};

static void *pair_thread(void *arg)
{
	struct pair_job *j = arg;

	j->w = resume(j->dst, j->b->p, j->b->len, 1 << 20, &j->stop, &j->ms);
	return NULL;
}

static void test_concurrency(struct dev *devs, int n, const char *parent)
{
	int pairs = n / 2, i;
	struct blob *blobs = calloc(pairs, sizeof(*blobs));
	struct pair_job *jobs = calloc(pairs, sizeof(*jobs));
	pthread_t *th = calloc(pairs, sizeof(*th));
	char ds[128], dd[128], buf[64];
	long long maxl;
	double t0;

	for (i = 0; i < pairs; i++)
		CHECK(save_stop_copy(&devs[i], &blobs[i]) == 0, "save %d", i);
	sys_write(parent, "peak_concurrent_loads", "0");
	t0 = now_ms();
	for (i = 0; i < pairs; i++) {
		jobs[i].dst = &devs[pairs + i];
		jobs[i].b = &blobs[i];
		pthread_create(&th[i], NULL, pair_thread, &jobs[i]);
	}
	for (i = 0; i < pairs; i++)
		pthread_join(th[i], NULL);
	snprintf(buf, sizeof(buf), "%s/max_concurrent_loads", parent);
	{
		struct dev p = { 0 };

		snprintf(p.sysfs, sizeof(p.sysfs), "%s", parent);
		maxl = sys_num(&p, "max_concurrent_loads");
		printf("  %d concurrent resumes in %.0f ms; parent peak_concurrent_loads %lld (limit %lld)\n",
		       pairs, now_ms() - t0, sys_num(&p, "peak_concurrent_loads"), maxl);
		CHECK(sys_num(&p, "peak_concurrent_loads") <= maxl, "limit exceeded");
		CHECK(sys_num(&p, "peak_concurrent_loads") >= 1, "no loads seen");
		CHECK(sys_num(&p, "active_loads") == 0, "active loads left");
	}
	for (i = 0; i < pairs; i++) {
		CHECK(jobs[i].w == 0 && jobs[i].stop == 0, "pair %d: %d %d", i, jobs[i].w, jobs[i].stop);
		digest(&devs[i], ds, sizeof(ds));
		digest(&devs[pairs + i], dd, sizeof(dd));
		CHECK(!strcmp(ds, dd), "pair %d digests differ", i);
		printf("  pair %d: resume %.0f ms, digests %s\n", i, jobs[i].ms,
		       strcmp(ds, dd) ? "DIFFER" : "equal");
		set_state(&devs[i], VFIO_DEVICE_STATE_RUNNING, NULL);
		set_state(&devs[pairs + i], VFIO_DEVICE_STATE_RUNNING, NULL);
		free(blobs[i].p);
	}
	free(blobs);
	free(jobs);
	free(th);
}


static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* A resized state travels with the stream: the destination adopts the size. */
static void test_resize(struct dev *src, struct dev *dst)
{
	struct blob b = { 0 };
	char ds[128], dd[128];
	int w, stop;

	CHECK(sys_write(src->sysfs, "state_size", "1048699") == 0, "state_size 1 MiB + 123");
	CHECK(sys_num(src, "state_size") == 1052672, "rounded up to 4 KiB: %lld", sys_num(src, "state_size"));
	CHECK(sys_write(src->sysfs, "state_size", "0") < 0 && errno == EINVAL, "state_size 0 refused");
	CHECK(sys_write(src->sysfs, "state_size", "99999999999999") < 0 && errno == EINVAL, "huge state_size refused");
	CHECK(sys_write(src->sysfs, "state_size", "banana") < 0 && errno == EINVAL, "non-number refused");
	digest(src, ds, sizeof(ds));
	CHECK(save_stop_copy(src, &b) == 0, "save resized");
	w = resume(dst, b.p, b.len, 65536, &stop, NULL);
	CHECK(w == 0 && stop == 0, "resume resized (%d %d)", w, stop);
	CHECK(sys_num(dst, "state_size") == 1052672, "dst adopted the size: %lld", sys_num(dst, "state_size"));
	digest(dst, dd, sizeof(dd));
	CHECK(!strcmp(ds, dd), "resized digests differ");
	printf("  1 MiB state: %zu-byte stream, digests %s\n", b.len, strcmp(ds, dd) ? "DIFFER" : "equal");
	CHECK(set_state(src, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "src -> RUNNING");
	CHECK(set_state(dst, VFIO_DEVICE_STATE_RUNNING, NULL) == 0, "dst -> RUNNING");
	CHECK(sys_write(src->sysfs, "state_size", "8388608") == 0, "state_size back to 8 MiB");
	CHECK(sys_write(dst->sysfs, "state_size", "8388608") == 0, "dst state_size back to 8 MiB");
	free(b.p);
}

/* Random, mostly invalid input through every entry point; the kernel must survive it
 * and the device must work afterwards. */
static void test_fuzz(struct dev *d, struct dev *peer, int iters)
{
	static uint8_t buf[65536];
	int data_fd = -1, i, j, ops[8] = { 0 };
	char attr[64];

	sys_write(d->sysfs, "load_us_per_mib", "0");
	for (i = 0; i < iters; i++) {
		int op = rnd() % 8;

		ops[op]++;
		switch (op) {
		case 0: { /* migration state, valid or not */
			int fd = -1;
			uint32_t st = rnd() % 12;

			if (set_state(d, st, &fd) == 0 && fd >= 0) {
				if (data_fd >= 0)
					close(data_fd);
				data_fd = fd;
			}
			if (get_state(d) == VFIO_DEVICE_STATE_ERROR && rnd() % 2)
				ioctl(d->fd, VFIO_DEVICE_RESET);
			break;
		}
		case 1: /* data fd: read, write garbage or near-valid records, precopy info */
			if (data_fd < 0)
				break;
			for (j = 0; j < (int)(rnd() % 4); j++) {
				size_t n = rnd() % sizeof(buf);
				uint64_t r = rnd();

				if (r % 3 == 0) {
					(void)!read(data_fd, buf, n);
				} else {
					size_t k;

					for (k = 0; k < n; k++)
						buf[k] = rnd();
					if (r % 3 == 1 && n >= 16) { /* plausible header */
						uint64_t sz = rnd() % 70000;
						uint32_t fl = rnd() % 3, tag = rnd() % 6;

						memcpy(buf, &sz, 8);
						memcpy(buf + 8, &fl, 4);
						memcpy(buf + 12, &tag, 4);
					}
					(void)!write(data_fd, buf, n);
				}
			}
			{
				struct vfio_precopy_info info = { .argsz = rnd() % 40 };

				ioctl(data_fd, VFIO_MIG_GET_PRECOPY_INFO, &info);
				ioctl(data_fd, rnd(), buf);
				(void)!pread(data_fd, buf, 16, 0);
			}
			if (rnd() % 4 == 0) {
				close(data_fd);
				data_fd = -1;
			}
			break;
		case 2: { /* region access at random places */
			uint64_t idx = rnd() % 11, off = rnd() % 6000, n = rnd() % 9000;

			if (rnd() % 8 == 0)
				off = rnd();
			if (rnd() % 2)
				(void)!pread(d->fd, buf, n, (idx << 40) + off);
			else
				(void)!pwrite(d->fd, buf, n, (idx << 40) + off);
			break;
		}
		case 3: { /* info ioctls with random argsz / index */
			struct vfio_region_info r = { .argsz = rnd() % 64, .index = rnd() % 12 };
			struct vfio_irq_info q = { .argsz = rnd() % 32, .index = rnd() % 8 };
			struct vfio_device_info inf = { .argsz = rnd() % 40 };

			ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &r);
			ioctl(d->fd, VFIO_DEVICE_GET_IRQ_INFO, &q);
			ioctl(d->fd, VFIO_DEVICE_GET_INFO, &inf);
			ioctl(d->fd, VFIO_DEVICE_SET_IRQS, buf);
			ioctl(d->fd, VFIO_BASE + VFIO_TYPE + (rnd() % 40), buf);
			break;
		}
		case 4: { /* features with random flags and argsz */
			struct vfio_device_feature *f = (void *)buf;

			memset(buf, 0, 64);
			f->argsz = rnd() % 64;
			f->flags = (rnd() % 16) | ((rnd() % 8) << 16);
			if (ioctl(d->fd, VFIO_DEVICE_FEATURE, f) == 0 &&
			    (f->flags & 0xffff) == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE &&
			    (f->flags & VFIO_DEVICE_FEATURE_SET)) {
				int fd = ((struct vfio_device_feature_mig_state *)f->data)->data_fd;

				if (fd > 2)
					close(fd);
			}
			break;
		}
		case 5: /* sysfs knobs */
			snprintf(attr, sizeof(attr), "%llu", (unsigned long long)(rnd() % 50));
			sys_write(d->sysfs, rnd() % 2 ? "dirty" : "seed", attr);
			if (rnd() % 4 == 0) {
				snprintf(attr, sizeof(attr), "%llu", (unsigned long long)(rnd() % (3 << 20)));
				sys_write(d->sysfs, "state_size", attr);
			}
			break;
		case 6:
			if (rnd() % 4 == 0)
				ioctl(d->fd, VFIO_DEVICE_RESET);
			break;
		case 7: /* close and reopen the device with a live data fd */
			if (rnd() % 8 == 0) {
				close(d->fd);
				d->fd = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, d->uuid);
			}
			break;
		}
	}
	if (data_fd >= 0)
		close(data_fd);
	printf("  %d random operations (state %d, data fd %d, region %d, info %d, feature %d, sysfs %d, reset %d, reopen %d)\n",
	       iters, ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], ops[7]);
	CHECK(d->fd >= 0, "device reopened");
	CHECK(ioctl(d->fd, VFIO_DEVICE_RESET) == 0, "reset after fuzz");
	CHECK(get_state(d) == VFIO_DEVICE_STATE_RUNNING, "RUNNING after fuzz");
	sys_write(d->sysfs, "load_us_per_mib", "25000");
	sys_write(d->sysfs, "state_size", "8388608");
	{
		struct blob b = { 0 };
		char ds[128], dd[128];
		int w, stop;

		digest(d, ds, sizeof(ds));
		CHECK(save_stop_copy(d, &b) == 0, "save after fuzz");
		w = resume(peer, b.p, b.len, 1 << 20, &stop, NULL);
		CHECK(w == 0 && stop == 0, "resume after fuzz (%d %d)", w, stop);
		digest(peer, dd, sizeof(dd));
		CHECK(!strcmp(ds, dd), "digests after fuzz differ");
		printf("  save/resume after fuzz: digests %s\n", strcmp(ds, dd) ? "DIFFER" : "equal");
		set_state(d, VFIO_DEVICE_STATE_RUNNING, NULL);
		set_state(peer, VFIO_DEVICE_STATE_RUNNING, NULL);
		free(b.p);
	}
}

/* Several threads race transitions, resets and data fd I/O on one device. */
struct stress_ctx {
	struct dev *d;
	volatile int data_fd;
	volatile int stop;
	pthread_mutex_t lock;
	long ops;
};

static uint64_t trnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void *stress_ctl(void *arg)
{
	struct stress_ctx *c = arg;
	uint64_t s = 0x1234567 + (uintptr_t)arg;

	while (!c->stop) {
		uint64_t r = trnd(&s);
		int fd = -1, old;

		if (r % 10 == 0) {
			ioctl(c->d->fd, VFIO_DEVICE_RESET);
		} else if (set_state(c->d, 1 + r % 7, &fd) == 0 && fd >= 0) {
			pthread_mutex_lock(&c->lock);
			old = c->data_fd;
			c->data_fd = fd;
			pthread_mutex_unlock(&c->lock);
			if (old >= 0)
				close(old);
		}
		__atomic_add_fetch(&c->ops, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void *stress_io(void *arg)
{
	struct stress_ctx *c = arg;
	uint64_t s = 0x9876543 + (uintptr_t)&s;
	uint8_t *buf = malloc(1 << 20);

	while (!c->stop) {
		uint64_t r = trnd(&s);
		int fd;
		struct vfio_precopy_info info = { .argsz = sizeof(info) };

		pthread_mutex_lock(&c->lock);
		fd = c->data_fd >= 0 ? dup(c->data_fd) : -1;
		pthread_mutex_unlock(&c->lock);
		if (fd < 0) {
			usleep(1000);
			continue;
		}
		switch (r % 4) {
		case 0:
		case 1:
			(void)!read(fd, buf, 1 + r % (1 << 20));
			break;
		case 2:
			memset(buf, (int)r, 4096);
			(void)!write(fd, buf, 1 + r % 4096);
			break;
		case 3:
			ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info);
			break;
		}
		close(fd);
		if (r % 7 == 0)
			sys_write(c->d->sysfs, "dirty", "3");
		if (r % 13 == 0) {
			char dg[128];

			digest(c->d, dg, sizeof(dg));
		}
		__atomic_add_fetch(&c->ops, 1, __ATOMIC_RELAXED);
	}
	free(buf);
	return NULL;
}

static void test_stress(struct dev *d, struct dev *peer, int seconds)
{
	struct stress_ctx c = { .d = d, .data_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };
	pthread_t th[4];
	int i;

	sys_write(d->sysfs, "load_us_per_mib", "1000");
	sys_write(d->sysfs, "save_us_per_mib", "1000");
	pthread_create(&th[0], NULL, stress_ctl, &c);
	pthread_create(&th[1], NULL, stress_ctl, &c);
	pthread_create(&th[2], NULL, stress_io, &c);
	pthread_create(&th[3], NULL, stress_io, &c);
	sleep(seconds);
	c.stop = 1;
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	if (c.data_fd >= 0)
		close(c.data_fd);
	printf("  %ld racing operations in %d s\n", c.ops, seconds);
	CHECK(ioctl(d->fd, VFIO_DEVICE_RESET) == 0, "reset after stress");
	CHECK(get_state(d) == VFIO_DEVICE_STATE_RUNNING, "RUNNING after stress");
	sys_write(d->sysfs, "load_us_per_mib", "25000");
	sys_write(d->sysfs, "save_us_per_mib", "2000");
	{
		struct blob b = { 0 };
		char ds[128], dd[128];
		int w, stop;

		digest(d, ds, sizeof(ds));
		CHECK(save_stop_copy(d, &b) == 0, "save after stress");
		w = resume(peer, b.p, b.len, 1 << 20, &stop, NULL);
		CHECK(w == 0 && stop == 0, "resume after stress (%d %d)", w, stop);
		digest(peer, dd, sizeof(dd));
		CHECK(!strcmp(ds, dd), "digests after stress differ");
		printf("  save/resume after stress: digests %s\n", strcmp(ds, dd) ? "DIFFER" : "equal");
		set_state(d, VFIO_DEVICE_STATE_RUNNING, NULL);
		set_state(peer, VFIO_DEVICE_STATE_RUNNING, NULL);
		free(b.p);
	}
}

int main(void)
{
	const char *env = getenv("VFIO_MIG_SIM_DEVICES");
	const char *parent = getenv("VFIO_MIG_SIM_PARENT");
	const char *type = getenv("VFIO_MIG_SIM_TYPE");
	struct dev devs[32];
	int n = 0, i, precopy;
	char *list, *tok, *save = NULL;
	uint64_t fl;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!env || !*env) {
		fprintf(stderr, "VFIO_MIG_SIM_DEVICES is not set (run me through run-in-guest.sh)\n");
		return 2;
	}
	if (!parent)
		parent = "/sys/class/vfio_mig_sim/vfio_mig_sim";
	if (!type)
		type = "vfio_mig_sim-mig";
	list = strdup(env);
	for (tok = strtok_r(list, " ", &save); tok && n < 32; tok = strtok_r(NULL, " ", &save)) {
		memset(&devs[n], 0, sizeof(devs[n]));
		snprintf(devs[n].uuid, sizeof(devs[n].uuid), "%s", tok);
		snprintf(devs[n].sysfs, sizeof(devs[n].sysfs), "/sys/bus/mdev/devices/%s", tok);
		devs[n].fd = devs[n].group = devs[n].container = -1;
		n++;
	}
	if (n < 2) {
		fprintf(stderr, "need at least 2 devices\n");
		return 2;
	}
	for (i = 0; i < n; i++) {
		CHECK(open_dev(&devs[i]) == 0, "open %s", devs[i].uuid);
		if (devs[i].fd < 0)
			return 1;
	}
	printf("opened %d devices\n", n);

	printf("[info] device info, regions, config space, BAR0\n");
	test_info(&devs[0]);

	fl = mig_flags(&devs[0]);
	printf("[flags] migration flags 0x%llx\n", (unsigned long long)fl);
	CHECK((fl & (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P)) ==
	      (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P), "STOP_COPY|P2P");
	precopy = !!(fl & VFIO_MIGRATION_PRE_COPY);
	expect_state(&devs[0], VFIO_DEVICE_STATE_RUNNING);

	printf("[fsm] state arcs and combination transitions (precopy %d)\n", precopy);
	test_fsm(&devs[0], precopy);

	printf("[save/resume] STOP_COPY save, resume into a second device, failures\n");
	test_save_resume(&devs[0], &devs[1]);

	if (precopy) {
		printf("[precopy] PRE_COPY, PRECOPY_INFO, dirty tracking, MIG_DATA_SIZE\n");
		test_precopy(&devs[0], &devs[1]);
	}

	printf("[close] closing the device disables the data fd\n");
	test_close_with_fd(&devs[0]);

	printf("[dma logging] start, report, stop\n");
	test_dma_logging(&devs[0]);

	printf("[reset] a reset during a load, a reset on open and close\n");
	test_reset_during_load(&devs[0], &devs[1], parent);
	test_reset_on_open_close(&devs[0], &devs[1]);

	if (precopy) {
		printf("[no dirtying] a device made with dirty_kib_per_s=0\n");
		test_precopy_without_dirtying(parent, type, &devs[1]);
	}

	if (n >= 4) {
		printf("[concurrency] %d pairs at once\n", n / 2);
		test_concurrency(devs, n & ~1, parent);
	}

	printf("[resize] state size travels with the stream\n");
	test_resize(&devs[0], &devs[1]);

	{
		const char *it = getenv("VFIO_SMOKE_FUZZ");
		int iters = it ? atoi(it) : 3000;

		const char *seed = getenv("VFIO_SMOKE_SEED");
		const char *st = getenv("VFIO_SMOKE_STRESS_S");

		if (seed)
			rng_state = strtoull(seed, NULL, 0) | 1;
		printf("[fuzz] random input\n");
		test_fuzz(&devs[n - 1], &devs[0], iters);
		printf("[stress] racing threads on one device\n");
		test_stress(&devs[n - 1], &devs[0], st ? atoi(st) : 5);
	}

	for (i = 0; i < n; i++)
		close_dev(&devs[i]);
	printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "PASSED", checks, failures);
	return failures ? 1 : 0;
}
