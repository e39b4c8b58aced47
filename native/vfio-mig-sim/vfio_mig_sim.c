// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_sim - a simulated, migratable VFIO PCI function (mdev based).
 *
 * One parent device (/sys/class/vfio_mig_sim/vfio_mig_sim) plays the role of
 * a PF; its mediated devices (type "vfio_mig_sim-mig") play VFs.  Each one
 * presents itself to user space as a vfio-pci device with a PCI config region
 * and a 4 KiB BAR0, sits behind the emulated IOMMU, and implements the VFIO
 * migration uAPI v2 through the vfio core helpers, behaving the way an
 * mlx5_vfio_pci VF does as seen from user space:
 *
 *  - device state of configurable size, content derived from a seed,
 *    streamed as 16-byte-header records {le64 size, le32 flags, le32 tag};
 *  - save reads block until the "firmware" has produced the data,
 *    PRE_COPY gives initial bytes then -ENOMSG, with a dirty rate; as on mlx5,
 *    what was dirtied becomes readable only after VFIO_MIG_GET_PRECOPY_INFO;
 *  - resume writes are parsed in order and every completed record is loaded
 *    synchronously inside write(), taking a per-parent load slot;
 *  - a misordered or corrupt stream fails that write and poisons the fd; RESUMING->STOP
 *    accepts what came (an incomplete last record is dropped) unless strict_resume;
 *  - a reset (VFIO_DEVICE_RESET, and opening and closing the device) is a VF's FLR: the
 *    state goes back to its power-on content; a reset during a load waits for that write.
 *  - DMA logging (6.2+) through the core's vfio_log_ops: the device's own writes to IOVA
 *    space (sysfs dma_write) are tracked in the logged ranges and reported read-and-clear.
 *
 * Stream format (all little endian), one record = hdr + payload:
 *   hdr     { u64 size (payload bytes); u32 flags (bit0 OPTIONAL); u32 tag }
 *   tag 1   SIZE_HINT (optional)  payload: u64 estimated stop-copy bytes
 *   tag 2   BEGIN   { magic, seq, version, page_size, u64 state_size,
 *                     u64 bar0_size, u64 seed }
 *   tag 3   CHUNK   { magic, seq, region (0 state, 1 BAR0), crc32(data),
 *                     u64 offset, u64 length } + data
 *   tag 4   END     { magic, seq, nrecords before END, crc32(state|BAR0),
 *                     u64 stream bytes before END, u64 state_size }
 * Every non-optional record carries a sequence number starting at 0.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/version.h>
#include <linux/device.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/semaphore.h>
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/bitmap.h>
#include <linux/crc32.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/sched/signal.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/mdev.h>
#include <crypto/sha2.h>
#if __has_include(<linux/unaligned.h>)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#define SIM_NAME		"vfio_mig_sim"
#define SIM_PAGE		4096ULL
#define SIM_BAR0_SIZE		4096
#define SIM_CFG_SIZE		256
#define SIM_VENDOR_ID		0x1b36	/* Red Hat, Inc. (QEMU range) */
#define SIM_DEVICE_ID		0x7a6d
#define SIM_MAX_STATE		(1ULL << 30)
#define SIM_MAX_RECORD		(64ULL << 20)

#define SIM_REC_OPTIONAL	1U
#define SIM_TAG_SIZE_HINT	1U
#define SIM_TAG_BEGIN		2U
#define SIM_TAG_CHUNK		3U
#define SIM_TAG_END		4U

#define SIM_MAGIC_BEGIN		0x4e47424dU	/* "MBGN" */
#define SIM_MAGIC_CHUNK		0x4b48434dU	/* "MCHK" */
#define SIM_MAGIC_END		0x444e454dU	/* "MEND" */
#define SIM_VERSION		1U

#define SIM_OFFSET_SHIFT	40
#define SIM_OFFSET_MASK		((1ULL << SIM_OFFSET_SHIFT) - 1)

#ifdef VFIO_MIGRATION_PRE_COPY
#define SIM_HAVE_PRECOPY 1
#else
#define SIM_HAVE_PRECOPY 0
#endif

#ifdef VFIO_DEVICE_FEATURE_DMA_LOGGING_START
#define SIM_HAVE_DMA_LOGGING 1
#include <linux/interval_tree.h>
#include <linux/iova_bitmap.h>
#else
#define SIM_HAVE_DMA_LOGGING 0
#endif
/* DMA logging: at most this many tracked pages per device (512 KiB of bitmap); larger ranges get larger pages */
#define SIM_LOG_MAX_PAGES	(1ULL << 22)

struct sim_rec_hdr {
	__le64 size;
	__le32 flags;
	__le32 tag;
} __packed;

struct sim_begin {
	__le32 magic;
	__le32 seq;
	__le32 version;
	__le32 page_size;
	__le64 state_size;
	__le64 bar0_size;
	__le64 seed;
} __packed;

struct sim_chunk {
	__le32 magic;
	__le32 seq;
	__le32 region;
	__le32 crc;
	__le64 offset;
	__le64 length;
} __packed;

struct sim_end {
	__le32 magic;
	__le32 seq;
	__le32 nrecords;
	__le32 state_crc;
	__le64 stream_bytes;
	__le64 state_size;
} __packed;

/* ---------------------------------------------------------------- params */

static unsigned long state_size = 8UL << 20;
module_param(state_size, ulong, 0644);
MODULE_PARM_DESC(state_size, "default device state size in bytes for new devices (rounded up to 4 KiB; default 8 MiB)");

static unsigned long max_state_size = 256UL << 20;
module_param(max_state_size, ulong, 0644);
MODULE_PARM_DESC(max_state_size, "upper bound for any device state size (default 256 MiB, at most 1 GiB)");

static unsigned int record_kib = 8192;
module_param(record_kib, uint, 0644);
MODULE_PARM_DESC(record_kib, "max state bytes per CHUNK record in KiB, like mlx5's 8 MiB chunks (default 8192)");

static unsigned int load_us_per_mib = 25000;
module_param(load_us_per_mib, uint, 0644);
MODULE_PARM_DESC(load_us_per_mib, "default load delay per MiB of record data in us (default 25000: ~200 ms for 8 MiB)");

static unsigned int save_us_per_mib = 2000;
module_param(save_us_per_mib, uint, 0644);
MODULE_PARM_DESC(save_us_per_mib, "default save (firmware preparation) delay per MiB in us (default 2000)");

static unsigned int dirty_kib_per_s = 1024;
module_param(dirty_kib_per_s, uint, 0644);
MODULE_PARM_DESC(dirty_kib_per_s, "default dirty rate while in PRE_COPY/PRE_COPY_P2P in KiB/s (default 1024)");

static unsigned int max_concurrent_loads = 4;
module_param(max_concurrent_loads, uint, 0444);
MODULE_PARM_DESC(max_concurrent_loads, "loads that may run at once across all devices of the parent (default 4)");

static unsigned int max_devices = 32;
module_param(max_devices, uint, 0444);
MODULE_PARM_DESC(max_devices, "maximum number of mdev instances (default 32)");

static bool strict_resume;
module_param(strict_resume, bool, 0644);
MODULE_PARM_DESC(strict_resume, "RESUMING->STOP fails with EIO and leaves the device in ERROR after an incomplete or refused stream (default off: as mlx5, it succeeds and an incomplete last record is dropped)");

static bool reset_on_open_close = true;
module_param(reset_on_open_close, bool, 0644);
MODULE_PARM_DESC(reset_on_open_close, "reset the device when its fd is opened and when it is closed, as vfio-pci does for a VF (default on)");

#define SIM_MAX_DELAY_US_PER_MIB	2000000U	/* 2 s per MiB */

/* ---------------------------------------------------------------- types */

struct sim_parent {
	struct device dev;
	struct mdev_parent mparent;
	struct semaphore load_sem;
	unsigned int max_loads;
	atomic_t active_loads;
	atomic_t peak_loads;
	atomic64_t total_loads;
	atomic64_t total_bytes_loaded;
};

struct sim_dev;

/* One IOVA range of DMA logging: a bit per tracked page, set when the device writes there. */
struct sim_log_range {
	u64 start;		/* page aligned (the tracker's page) */
	u64 pages;
	unsigned long *dirty;
};

struct sim_migf {
	struct file *filp;
	struct sim_dev *sd;		/* valid while !disabled (under lock) */
	struct mutex lock;
	bool disabled;
	bool poisoned;
	bool resuming;

	/* ---- save side ---- */
	bool precopy;			/* session opened in PRE_COPY */
	bool final;			/* STOP_COPY: emit everything, then EOF */
	bool hint_sent, begin_sent, bar_sent, end_sent;
	u64 npages;			/* state pages at session start */
	unsigned long *init_bm;		/* pages of the initial pass (data_lock) */
	unsigned long *dirty_bm;	/* pages dirtied after being sent, not yet saved (data_lock) */
	unsigned long *snap_bm;		/* dirty pages the last PRECOPY_INFO saved, to be read (data_lock) */
	u64 init_left, dirty_left, snap_left;	/* popcounts of the bitmaps (data_lock) */
	u8 *rec;			/* current record buffer */
	size_t rec_cap, rec_len, rec_pos;
	bool rec_initial;
	ktime_t rec_ready;		/* simulated firmware completion time */
	u32 seq;
	u32 nrecords;
	u64 stream_bytes;		/* bytes of records produced before END */
	u64 record_max;			/* CHUNK data bytes cap for this session */
	u32 save_us;
	ktime_t dirty_stamp;
	u64 dirty_carry;		/* bytes (scaled) not yet turned into pages */

	/* ---- resume side ---- */
	u8 hdr[sizeof(struct sim_rec_hdr)];
	size_t hdr_have;
	u64 r_size;
	u32 r_flags, r_tag;
	u8 *payload;
	size_t payload_cap;
	u64 payload_have;
	bool skipping;
	bool begun, complete;
	u32 expect_seq;
	u32 r_nrecords;
	u64 bytes_in;			/* bytes of completed records */
	u64 total_written;
};

struct sim_dev {
	struct vfio_device vdev;
	struct mdev_device *mdev;
	struct sim_parent *parent;

	struct mutex state_mutex;	/* migration state, sessions, config; unlocked by sim_state_unlock() */
	spinlock_t reset_lock;		/* deferred_reset */
	bool deferred_reset;		/* a reset came while state_mutex was held */
	enum vfio_device_mig_state mig_state;
	struct sim_migf *save_migf;	/* also read under data_lock */
	struct sim_migf *resume_migf;

	struct mutex data_lock;		/* state buffer, BAR0, dirty tracking */
	u8 *state;
	u64 state_size;
	u64 seed;
	u64 rng;
	/* what a reset regenerates: set at creation and by the sysfs seed/state_size, not by a load */
	u64 power_on_seed;
	u64 power_on_size;
	u8 bar0[SIM_BAR0_SIZE];

	u8 cfg[SIM_CFG_SIZE];
	u8 cfg_wmask[SIM_CFG_SIZE];

	/* per-device knobs (sysfs) */
	u32 load_us_per_mib;
	u32 save_us_per_mib;
	u32 dirty_kib_per_s;

	/* counters */
	atomic64_t bytes_loaded;
	atomic64_t loads;
	atomic64_t bytes_saved;
	atomic64_t saves;
	atomic64_t dirtied_pages;
	atomic_t peak_concurrent_loads;
	atomic64_t load_us_total;

	/* fault injection: the next N loads / saved chunks fail with -EIO */
	atomic_t inject_load_errors;
	atomic_t inject_save_errors;

	/* DMA logging (dirty page tracking of the device's own writes to IOVA space) */
	struct mutex log_lock;		/* the fields below; taken after state_mutex */
	bool log_on;
	u64 log_page;			/* the page size the tracker chose */
	u32 log_nranges;
	struct sim_log_range *log_ranges;
	atomic64_t dma_pages_written;	/* pages the device wrote (sysfs dma_write), logged or not */
};

static struct sim_parent *sim_parent;

static const struct file_operations sim_save_fops;
static const struct file_operations sim_resume_fops;

/* ---------------------------------------------------------------- helpers */

static u64 sim_rng_next(u64 *s)
{
	/* xorshift64* */
	u64 x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static u64 sim_mix(u64 a, u64 b)
{
	u64 s = a ^ (b * 0x9E3779B97F4A7C15ULL) ^ 0xD1B54A32D192ED03ULL;

	if (!s)
		s = 1;
	sim_rng_next(&s);
	sim_rng_next(&s);
	return s ? s : 1;
}

static void sim_fill_page(u8 *page, u64 seed, u64 index)
{
	u64 s = sim_mix(seed, index);
	u64 *w = (u64 *)page;
	unsigned int i;

	for (i = 0; i < SIM_PAGE / 8; i++)
		w[i] = cpu_to_le64(sim_rng_next(&s));
}

/* data_lock held */
static void sim_generate(struct sim_dev *sd)
{
	u64 p, npages = sd->state_size / SIM_PAGE;
	u64 s;
	unsigned int i;

	for (p = 0; p < npages; p++) {
		sim_fill_page(sd->state + p * SIM_PAGE, sd->seed, p);
		if ((p & 255) == 255)
			cond_resched();
	}
	s = sim_mix(sd->seed, ~0ULL);
	for (i = 0; i < SIM_BAR0_SIZE / 8; i++)
		((u64 *)sd->bar0)[i] = cpu_to_le64(sim_rng_next(&s));
	sd->rng = sim_mix(sd->seed, 0x5eed);
}

static u32 sim_state_crc(struct sim_dev *sd)
{
	u32 crc = ~0U;
	u64 off = 0;

	while (off < sd->state_size) {
		u64 n = min_t(u64, sd->state_size - off, 1ULL << 20);

		crc = crc32_le(crc, sd->state + off, n);
		off += n;
		cond_resched();
	}
	crc = crc32_le(crc, sd->bar0, SIM_BAR0_SIZE);
	return ~crc;
}

static bool sim_state_is_running(enum vfio_device_mig_state st)
{
	switch (st) {
	case VFIO_DEVICE_STATE_RUNNING:
	case VFIO_DEVICE_STATE_RUNNING_P2P:
#if SIM_HAVE_PRECOPY
	case VFIO_DEVICE_STATE_PRE_COPY:
	case VFIO_DEVICE_STATE_PRE_COPY_P2P:
#endif
		return true;
	default:
		return false;
	}
}

/* data_lock held: page p has changed; track it for an active pre-copy. */
static void sim_mark_dirty(struct sim_dev *sd, u64 p)
{
	struct sim_migf *m = sd->save_migf;

	atomic64_inc(&sd->dirtied_pages);
	if (!m || !m->precopy || m->final || p >= m->npages)
		return;
	/* a page still to be read goes out with its new content anyway */
	if (test_bit(p, m->init_bm) || test_bit(p, m->snap_bm))
		return;
	if (!test_and_set_bit(p, m->dirty_bm))
		m->dirty_left++;
}

#if SIM_HAVE_PRECOPY
/*
 * m->lock held: the "firmware" saves what was dirtied since the last save, and the
 * reader may now read it.  As on mlx5, this happens only on VFIO_MIG_GET_PRECOPY_INFO
 * (which starts the next incremental save) and on the move to STOP_COPY: a reader
 * that only retries on -ENOMSG never sees new pre-copy data.
 */
static void sim_save_dirty(struct sim_migf *m)
{
	mutex_lock(&m->sd->data_lock);
	bitmap_or(m->snap_bm, m->snap_bm, m->dirty_bm, m->npages);
	bitmap_zero(m->dirty_bm, m->npages);
	m->snap_left = bitmap_weight(m->snap_bm, m->npages);
	m->dirty_left = 0;
	mutex_unlock(&m->sd->data_lock);
}
#endif

/* data_lock held */
static void sim_dirty_pages(struct sim_dev *sd, u64 count)
{
	u64 npages = sd->state_size / SIM_PAGE;
	u64 i;

	if (count > npages)
		count = npages;
	for (i = 0; i < count; i++) {
		u64 p = sim_rng_next(&sd->rng) % npages;
		u64 *w = (u64 *)(sd->state + p * SIM_PAGE);
		u64 s = sim_rng_next(&sd->rng) | 1;
		unsigned int j;

		for (j = 0; j < SIM_PAGE / 8; j++)
			w[j] ^= cpu_to_le64(sim_rng_next(&s));
		sim_mark_dirty(sd, p);
		if ((i & 255) == 255)
			cond_resched();
	}
}

/*
 * Called with m->lock held, !m->disabled: turn the time spent in PRE_COPY
 * into dirtied pages (the "guest" keeps writing while the device runs).
 */
static void sim_apply_dirty_rate(struct sim_migf *m)
{
	struct sim_dev *sd = m->sd;
	ktime_t now = ktime_get();
	u64 ns, bytes;

	if (!m->precopy || m->final)
		return;
	ns = ktime_to_ns(ktime_sub(now, m->dirty_stamp));
	m->dirty_stamp = now;
	if (!sd->dirty_kib_per_s)
		return;
	/* at most one second's worth per call: keeps the product below 2^64 */
	if (ns > NSEC_PER_SEC)
		ns = NSEC_PER_SEC;
	/* bytes scaled by 1e9 to keep the fraction between calls */
	m->dirty_carry += ns * (u64)sd->dirty_kib_per_s * 1024ULL;
	bytes = div64_u64(m->dirty_carry, NSEC_PER_SEC);
	if (bytes < SIM_PAGE)
		return;
	m->dirty_carry -= div64_u64(bytes, SIM_PAGE) * SIM_PAGE * NSEC_PER_SEC;
	mutex_lock(&sd->data_lock);
	sim_dirty_pages(sd, div64_u64(bytes, SIM_PAGE));
	mutex_unlock(&sd->data_lock);
}

/*
 * Sleeps until t.  Killable, not interruptible: the delays model firmware that
 * finishes what it started, and ordinary signals (e.g. the .NET runtime's thread
 * suspension) must not fail a migration.  The hung-task detector ignores
 * killable sleeps.  Returns -EINTR only for a fatal signal.
 */
static int sim_wait_until(ktime_t t)
{
	for (;;) {
		s64 us = ktime_us_delta(t, ktime_get());

		if (us <= 0)
			return 0;
		if (fatal_signal_pending(current))
			return -EINTR;
		if (us < 2000)
			usleep_range(us, us + 50);
		else
			schedule_timeout_killable(usecs_to_jiffies(min_t(s64, us, 100000)));
	}
}

static u64 sim_scaled_us(u64 bytes, u32 us_per_mib)
{
	return div64_u64(bytes * us_per_mib + (1ULL << 20) - 1, 1ULL << 20);
}

/* ---------------------------------------------------------------- migf */

static void sim_migf_free_buffers(struct sim_migf *m)
{
	kvfree(m->rec);
	m->rec = NULL;
	m->rec_cap = m->rec_len = m->rec_pos = 0;
	kvfree(m->payload);
	m->payload = NULL;
	m->payload_cap = 0;
	bitmap_free(m->init_bm);
	m->init_bm = NULL;
	bitmap_free(m->dirty_bm);
	m->dirty_bm = NULL;
	bitmap_free(m->snap_bm);
	m->snap_bm = NULL;
}

/* sd->state_mutex held: cut the file off the device. */
static void sim_disable_migf(struct sim_dev *sd, struct sim_migf *m)
{
	if (!m)
		return;
	mutex_lock(&m->lock);
	mutex_lock(&sd->data_lock);
	if (sd->save_migf == m)
		sd->save_migf = NULL;
	mutex_unlock(&sd->data_lock);
	m->disabled = true;
	m->sd = NULL;
	sim_migf_free_buffers(m);
	mutex_unlock(&m->lock);
	if (sd->resume_migf == m)
		sd->resume_migf = NULL;
	fput(m->filp);	/* the device's reference */
}

static void sim_disable_all(struct sim_dev *sd)
{
	struct sim_migf *m;

	m = sd->save_migf;
	if (m)
		sim_disable_migf(sd, m);
	m = sd->resume_migf;
	if (m)
		sim_disable_migf(sd, m);
}

/*
 * data_lock held: the state a freshly reset VF has: its power-on size and the content its
 * power-on seed generates; whatever was loaded or dirtied since is gone.  Should the buffer
 * for another size not be had, the content is regenerated at the current size.
 */
static void sim_power_on_state(struct sim_dev *sd)
{
	if (sd->state_size != sd->power_on_size) {
		u8 *n = vzalloc(sd->power_on_size);

		if (n) {
			vfree(sd->state);
			sd->state = n;
			sd->state_size = sd->power_on_size;
		} else {
			pr_warn_ratelimited(SIM_NAME ": reset: no memory for a %llu-byte state, keeping %llu bytes\n",
					    sd->power_on_size, sd->state_size);
		}
	}
	sd->seed = sd->power_on_seed;
	sim_generate(sd);
}

/*
 * state_mutex held: a function level reset, as vfio-pci does to a VF: sessions end (their
 * fds give ENODEV), the device is RUNNING, command register and BAR address are cleared,
 * and the state is the power-on state.
 */
static void sim_reset_locked(struct sim_dev *sd)
{
	sim_disable_all(sd);
	sd->mig_state = VFIO_DEVICE_STATE_RUNNING;
	put_unaligned_le16(0, sd->cfg + PCI_COMMAND);
	put_unaligned_le32(PCI_BASE_ADDRESS_SPACE_MEMORY | PCI_BASE_ADDRESS_MEM_TYPE_32,
			   sd->cfg + PCI_BASE_ADDRESS_0);
	mutex_lock(&sd->data_lock);
	sim_power_on_state(sd);
	mutex_unlock(&sd->data_lock);
}

/*
 * Every holder of state_mutex releases it here.  A reset that came while the mutex was held
 * (e.g. by a resume write in the middle of a load) was deferred; it is applied now, before
 * anyone else gets the device, as mlx5 does: a reset never aborts a load in progress.
 */
static void sim_state_unlock(struct sim_dev *sd)
{
again:
	spin_lock(&sd->reset_lock);
	if (sd->deferred_reset) {
		sd->deferred_reset = false;
		spin_unlock(&sd->reset_lock);
		sim_reset_locked(sd);
		goto again;
	}
	mutex_unlock(&sd->state_mutex);
	spin_unlock(&sd->reset_lock);
}

/* VFIO_DEVICE_RESET: at once when the device is idle, else when the current holder is done. */
static void sim_reset(struct sim_dev *sd)
{
	spin_lock(&sd->reset_lock);
	sd->deferred_reset = true;
	if (!mutex_trylock(&sd->state_mutex)) {
		spin_unlock(&sd->reset_lock);
		return;
	}
	spin_unlock(&sd->reset_lock);
	sim_state_unlock(sd);
}

static int sim_release_file(struct inode *inode, struct file *filp)
{
	struct sim_migf *m = filp->private_data;

	/* the device holds a file reference while the session is live */
	mutex_lock(&m->lock);
	m->disabled = true;
	sim_migf_free_buffers(m);
	mutex_unlock(&m->lock);
	mutex_destroy(&m->lock);
	kfree(m);
	return 0;
}

static struct sim_migf *sim_migf_create(struct sim_dev *sd, bool resuming)
{
	struct sim_migf *m;
	struct file *f;

	m = kzalloc(sizeof(*m), GFP_KERNEL_ACCOUNT);
	if (!m)
		return ERR_PTR(-ENOMEM);
	mutex_init(&m->lock);
	m->sd = sd;
	m->resuming = resuming;
	f = anon_inode_getfile(resuming ? "vfio_mig_sim_resume" : "vfio_mig_sim_save",
			       resuming ? &sim_resume_fops : &sim_save_fops, m,
			       resuming ? O_WRONLY : O_RDONLY);
	if (IS_ERR(f)) {
		mutex_destroy(&m->lock);
		kfree(m);
		return ERR_CAST(f);
	}
	stream_open(f->f_inode, f);
	m->filp = f;
	return m;
}

/* state_mutex held */
static struct sim_migf *sim_save_start(struct sim_dev *sd, bool precopy)
{
	struct sim_migf *m;
	u64 rk = record_kib;
	int ret = -ENOMEM;

	m = sim_migf_create(sd, false);
	if (IS_ERR(m))
		return m;
	if (rk < 4)
		rk = 4;
	m->record_max = min_t(u64, rk * 1024ULL, SIM_MAX_RECORD);
	m->record_max = round_up(m->record_max, SIM_PAGE);
	m->save_us = min(sd->save_us_per_mib, SIM_MAX_DELAY_US_PER_MIB);
	m->precopy = precopy;
	m->final = !precopy;
	m->dirty_stamp = ktime_get();

	mutex_lock(&sd->data_lock);
	m->npages = sd->state_size / SIM_PAGE;
	m->init_bm = bitmap_zalloc(m->npages, GFP_KERNEL_ACCOUNT);
	m->dirty_bm = bitmap_zalloc(m->npages, GFP_KERNEL_ACCOUNT);
	m->snap_bm = bitmap_zalloc(m->npages, GFP_KERNEL_ACCOUNT);
	m->rec_cap = sizeof(struct sim_rec_hdr) + sizeof(struct sim_chunk) + m->record_max;
	m->rec = kvmalloc(m->rec_cap, GFP_KERNEL_ACCOUNT);
	if (!m->init_bm || !m->dirty_bm || !m->snap_bm || !m->rec) {
		mutex_unlock(&sd->data_lock);
		goto err;
	}
	bitmap_fill(m->init_bm, m->npages);
	m->init_left = m->npages;
	sd->save_migf = m;
	mutex_unlock(&sd->data_lock);
	get_file(m->filp);	/* one for the device, one returned to the core */
	atomic64_inc(&sd->saves);
	return m;
err:
	sim_migf_free_buffers(m);
	fput(m->filp);
	return ERR_PTR(ret);
}

/* state_mutex held */
static struct sim_migf *sim_resume_start(struct sim_dev *sd)
{
	struct sim_migf *m = sim_migf_create(sd, true);

	if (IS_ERR(m))
		return m;
	get_file(m->filp);
	sd->resume_migf = m;
	return m;
}

/* ---------------------------------------------------------------- save */

static void sim_put_hdr(u8 *p, u64 size, u32 flags, u32 tag)
{
	struct sim_rec_hdr h = {
		.size = cpu_to_le64(size),
		.flags = cpu_to_le32(flags),
		.tag = cpu_to_le32(tag),
	};

	memcpy(p, &h, sizeof(h));
}

/* m->lock held, not disabled. Estimate of what STOP_COPY still has to emit. */
static u64 sim_remaining_estimate(struct sim_migf *m, u64 *initial, u64 *dirty)
{
	u64 per = sizeof(struct sim_rec_hdr) + sizeof(struct sim_chunk);
	u64 ini = 0, dir = 0, tail;
	u64 pend = m->rec_len - m->rec_pos;

	if (!m->hint_sent)
		ini += sizeof(struct sim_rec_hdr) + 8;
	if (!m->begin_sent)
		ini += sizeof(struct sim_rec_hdr) + sizeof(struct sim_begin);
	ini += m->init_left * SIM_PAGE +
	       (m->init_left ? div64_u64(m->init_left * SIM_PAGE, m->record_max) + 1 : 0) * per;
	dir += (m->dirty_left + m->snap_left) * (SIM_PAGE + per);
	if (m->rec_initial)
		ini += pend;
	else
		dir += pend;
	tail = 0;
	if (!m->bar_sent)
		tail += per + SIM_BAR0_SIZE;
	if (!m->end_sent)
		tail += sizeof(struct sim_rec_hdr) + sizeof(struct sim_end);
	if (initial)
		*initial = ini;
	if (dirty)
		*dirty = dir;
	return ini + dir + tail;
}

/*
 * m->lock held, not disabled, current record fully consumed.
 * Returns 1 if a record was produced, 0 at end of stream, -ENOMSG when a
 * pre-copy session has nothing more right now.
 */
static int sim_next_record(struct sim_migf *m)
{
	struct sim_dev *sd = m->sd;
	u8 *r = m->rec;
	u64 delay_bytes = 0;

	m->rec_len = m->rec_pos = 0;
	m->rec_initial = true;

	if (!m->hint_sent) {
		__le64 v = cpu_to_le64(sim_remaining_estimate(m, NULL, NULL));

		sim_put_hdr(r, 8, SIM_REC_OPTIONAL, SIM_TAG_SIZE_HINT);
		memcpy(r + sizeof(struct sim_rec_hdr), &v, 8);
		m->rec_len = sizeof(struct sim_rec_hdr) + 8;
		m->hint_sent = true;
	} else if (!m->begin_sent) {
		struct sim_begin b = {
			.magic = cpu_to_le32(SIM_MAGIC_BEGIN),
			.seq = cpu_to_le32(m->seq++),
			.version = cpu_to_le32(SIM_VERSION),
			.page_size = cpu_to_le32(SIM_PAGE),
			.state_size = cpu_to_le64(m->npages * SIM_PAGE),
			.bar0_size = cpu_to_le64(SIM_BAR0_SIZE),
			.seed = cpu_to_le64(sd->seed),
		};

		sim_put_hdr(r, sizeof(b), 0, SIM_TAG_BEGIN);
		memcpy(r + sizeof(struct sim_rec_hdr), &b, sizeof(b));
		m->rec_len = sizeof(struct sim_rec_hdr) + sizeof(b);
		m->begin_sent = true;
	} else if (m->init_left || m->snap_left || (m->final && !m->bar_sent)) {
		struct sim_chunk c = { .magic = cpu_to_le32(SIM_MAGIC_CHUNK) };
		u8 *data = r + sizeof(struct sim_rec_hdr) + sizeof(c);
		u64 off, len;

		if (atomic_add_unless(&sd->inject_save_errors, -1, 0))
			return -EIO;	/* the "firmware" failed to save: poisons the fd */

		mutex_lock(&sd->data_lock);
		if (m->init_left || m->snap_left) {
			unsigned long *bm = m->init_left ? m->init_bm : m->snap_bm;
			u64 *left = m->init_left ? &m->init_left : &m->snap_left;
			u64 p = find_first_bit(bm, m->npages);
			u64 maxp = div64_u64(m->record_max, SIM_PAGE);
			u64 n = 0;

			m->rec_initial = (bm == m->init_bm);
			while (p + n < m->npages && n < maxp && test_bit(p + n, bm)) {
				clear_bit(p + n, bm);
				n++;
			}
			if (WARN_ON_ONCE(n == 0 || n > *left)) {
				mutex_unlock(&sd->data_lock);
				return -EIO;
			}
			*left -= n;
			off = p * SIM_PAGE;
			len = n * SIM_PAGE;
			/* the state size cannot change while a session exists */
			memcpy(data, sd->state + off, len);
			c.region = cpu_to_le32(0);
		} else {
			off = 0;
			len = SIM_BAR0_SIZE;
			memcpy(data, sd->bar0, len);
			c.region = cpu_to_le32(1);
			m->bar_sent = true;
			m->rec_initial = false;
		}
		mutex_unlock(&sd->data_lock);
		c.seq = cpu_to_le32(m->seq++);
		c.crc = cpu_to_le32(~crc32_le(~0U, data, len));
		c.offset = cpu_to_le64(off);
		c.length = cpu_to_le64(len);
		sim_put_hdr(r, sizeof(c) + len, 0, SIM_TAG_CHUNK);
		memcpy(r + sizeof(struct sim_rec_hdr), &c, sizeof(c));
		m->rec_len = sizeof(struct sim_rec_hdr) + sizeof(c) + len;
		delay_bytes = len;
		atomic64_add(len, &sd->bytes_saved);
	} else if (!m->final) {
		return -ENOMSG;
	} else if (!m->end_sent) {
		struct sim_end e = {
			.magic = cpu_to_le32(SIM_MAGIC_END),
			.seq = cpu_to_le32(m->seq++),
			.nrecords = cpu_to_le32(m->nrecords),
			.stream_bytes = cpu_to_le64(m->stream_bytes),
			.state_size = cpu_to_le64(m->npages * SIM_PAGE),
		};

		mutex_lock(&sd->data_lock);
		e.state_crc = cpu_to_le32(sim_state_crc(sd));
		mutex_unlock(&sd->data_lock);
		sim_put_hdr(r, sizeof(e), 0, SIM_TAG_END);
		memcpy(r + sizeof(struct sim_rec_hdr), &e, sizeof(e));
		m->rec_len = sizeof(struct sim_rec_hdr) + sizeof(e);
		m->end_sent = true;
		m->rec_initial = false;
	} else {
		return 0;
	}
	m->nrecords++;
	m->stream_bytes += m->rec_len;
	m->rec_ready = ktime_add_us(ktime_get(), sim_scaled_us(delay_bytes, m->save_us));
	return 1;
}

static ssize_t sim_save_read(struct file *filp, char __user *buf, size_t len, loff_t *pos)
{
	struct sim_migf *m = filp->private_data;
	ssize_t done = 0;
	int ret = 0;

	if (pos)
		return -ESPIPE;
	mutex_lock(&m->lock);
	if (m->disabled || !m->sd) {
		ret = -ENODEV;
		goto out;
	}
	if (m->poisoned) {
		ret = -EIO;
		goto out;
	}
	sim_apply_dirty_rate(m);
	while (len) {
		size_t n;

		if (m->rec_pos == m->rec_len) {
			ret = sim_next_record(m);
			if (ret <= 0)
				break;
			ret = 0;
		}
		if (ktime_before(ktime_get(), m->rec_ready)) {
			if (done)
				break;	/* hand out what we have; don't block again */
			if (filp->f_flags & O_NONBLOCK) {
				ret = -EAGAIN;
				break;
			}
			ret = sim_wait_until(m->rec_ready);
			if (ret)
				break;
		}
		n = min_t(size_t, len, m->rec_len - m->rec_pos);
		if (copy_to_user(buf, m->rec + m->rec_pos, n)) {
			ret = -EFAULT;
			break;
		}
		m->rec_pos += n;
		buf += n;
		len -= n;
		done += n;
	}
	if (ret < 0 && ret != -ENOMSG && ret != -EINTR && ret != -EFAULT && ret != -EAGAIN)
		m->poisoned = true;
out:
	mutex_unlock(&m->lock);
	return done ? done : ret;
}

static long sim_save_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
#if SIM_HAVE_PRECOPY
	struct sim_migf *m = filp->private_data;
	unsigned long minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	struct vfio_precopy_info info;
	long ret = 0;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;
	mutex_lock(&m->lock);
	if (m->disabled || !m->sd) {
		ret = -ENODEV;
		goto out;
	}
	if (!m->precopy || m->final) {
		ret = -EINVAL;
		goto out;
	}
	if (m->poisoned) {
		ret = -EIO;
		goto out;
	}
	sim_apply_dirty_rate(m);
	sim_save_dirty(m);
	mutex_lock(&m->sd->data_lock);
	sim_remaining_estimate(m, &info.initial_bytes, &info.dirty_bytes);
	mutex_unlock(&m->sd->data_lock);
	info.flags = 0;
out:
	mutex_unlock(&m->lock);
	if (!ret && copy_to_user((void __user *)arg, &info, minsz))
		ret = -EFAULT;
	return ret;
#else
	return -ENOTTY;
#endif
}

static const struct file_operations sim_save_fops = {
	.owner = THIS_MODULE,
	.read = sim_save_read,
	.unlocked_ioctl = sim_save_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = sim_release_file,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 12, 0)
	.llseek = no_llseek,
#endif
};

/* ---------------------------------------------------------------- resume */

/* m->lock held. Validate a complete header and prepare for its payload. */
static int sim_resume_header(struct sim_migf *m)
{
	struct sim_rec_hdr h;
	u64 size;
	u32 flags, tag;
	u64 limit;

	memcpy(&h, m->hdr, sizeof(h));
	size = le64_to_cpu(h.size);
	flags = le32_to_cpu(h.flags);
	tag = le32_to_cpu(h.tag);
	m->skipping = false;

	switch (tag) {
	case SIM_TAG_SIZE_HINT:
		if (size != 8)
			return -EINVAL;
		break;
	case SIM_TAG_BEGIN:
		if (size != sizeof(struct sim_begin))
			return -EINVAL;
		break;
	case SIM_TAG_END:
		if (size != sizeof(struct sim_end))
			return -EINVAL;
		break;
	case SIM_TAG_CHUNK:
		limit = sizeof(struct sim_chunk) +
			min_t(u64, SIM_MAX_RECORD, max_t(u64, m->sd->state_size, SIM_BAR0_SIZE));
		if (size <= sizeof(struct sim_chunk) || size > limit)
			return -EINVAL;
		break;
	default:
		if (!(flags & SIM_REC_OPTIONAL) || size > SIM_MAX_RECORD)
			return -EINVAL;
		m->skipping = true;	/* unknown optional record: skip it */
		break;
	}
	if (flags & ~SIM_REC_OPTIONAL)
		return -EINVAL;
	m->r_size = size;
	m->r_flags = flags;
	m->r_tag = tag;
	m->payload_have = 0;
	if (!m->skipping && size > m->payload_cap) {
		kvfree(m->payload);
		m->payload_cap = 0;
		m->payload = kvmalloc(size, GFP_KERNEL_ACCOUNT);
		if (!m->payload)
			return -ENOMEM;
		m->payload_cap = size;
	}
	return 0;
}

/* m->lock held: a device "firmware" load of one chunk. */
static int sim_load_chunk(struct sim_migf *m, const struct sim_chunk *c, const u8 *data)
{
	struct sim_dev *sd = m->sd;
	struct sim_parent *par = sd->parent;
	u32 region = le32_to_cpu(c->region);
	u64 off = le64_to_cpu(c->offset);
	u64 len = le64_to_cpu(c->length);
	u64 us;
	int active, peak, ret;
	ktime_t t0;

	if (len != m->r_size - sizeof(*c))
		return -EINVAL;
	if (region == 0) {
		if (off > sd->state_size || len > sd->state_size - off)
			return -EINVAL;
	} else if (region == 1) {
		if (off > SIM_BAR0_SIZE || len > SIM_BAR0_SIZE - off)
			return -EINVAL;
	} else {
		return -EINVAL;
	}
	if ((~crc32_le(~0U, data, len)) != le32_to_cpu(c->crc))
		return -EIO;

	ret = down_killable(&par->load_sem);
	if (ret)
		return -EINTR;
	active = atomic_inc_return(&par->active_loads);
	peak = atomic_read(&par->peak_loads);
	while (active > peak && atomic_cmpxchg(&par->peak_loads, peak, active) != peak)
		peak = atomic_read(&par->peak_loads);
	peak = atomic_read(&sd->peak_concurrent_loads);
	while (active > peak &&
	       atomic_cmpxchg(&sd->peak_concurrent_loads, peak, active) != peak)
		peak = atomic_read(&sd->peak_concurrent_loads);

	t0 = ktime_get();
	us = sim_scaled_us(len, min(sd->load_us_per_mib, SIM_MAX_DELAY_US_PER_MIB));
	ret = sim_wait_until(ktime_add_us(t0, us));
	if (ret) {
		atomic_dec(&par->active_loads);
		up(&par->load_sem);
		return ret;
	}
	if (atomic_add_unless(&sd->inject_load_errors, -1, 0)) {
		/* the "firmware" rejects the image after working on it */
		atomic_dec(&par->active_loads);
		up(&par->load_sem);
		return -EIO;
	}
	mutex_lock(&sd->data_lock);
	if (region == 0)
		memcpy(sd->state + off, data, len);
	else
		memcpy(sd->bar0 + off, data, len);
	mutex_unlock(&sd->data_lock);
	atomic64_add(ktime_us_delta(ktime_get(), t0), &sd->load_us_total);

	atomic_dec(&par->active_loads);
	up(&par->load_sem);

	atomic64_add(len, &sd->bytes_loaded);
	atomic64_inc(&sd->loads);
	atomic64_add(len, &par->total_bytes_loaded);
	atomic64_inc(&par->total_loads);
	return 0;
}

/* m->lock held: payload complete */
static int sim_resume_record(struct sim_migf *m)
{
	struct sim_dev *sd = m->sd;
	u8 *p = m->payload;
	int ret = 0;

	if (m->skipping || m->r_tag == SIM_TAG_SIZE_HINT)
		goto done;

	switch (m->r_tag) {
	case SIM_TAG_BEGIN: {
		struct sim_begin b;
		u64 ss;

		memcpy(&b, p, sizeof(b));
		ss = le64_to_cpu(b.state_size);
		if (m->begun || le32_to_cpu(b.magic) != SIM_MAGIC_BEGIN ||
		    le32_to_cpu(b.seq) != m->expect_seq ||
		    le32_to_cpu(b.version) != SIM_VERSION ||
		    le32_to_cpu(b.page_size) != SIM_PAGE ||
		    le64_to_cpu(b.bar0_size) != SIM_BAR0_SIZE ||
		    !ss || ss % SIM_PAGE || ss > min_t(u64, max_state_size, SIM_MAX_STATE))
			return -EINVAL;
		mutex_lock(&sd->data_lock);
		if (ss != sd->state_size) {
			u8 *n = vzalloc(ss);

			if (!n) {
				mutex_unlock(&sd->data_lock);
				return -ENOMEM;
			}
			vfree(sd->state);
			sd->state = n;
			sd->state_size = ss;
		}
		sd->seed = le64_to_cpu(b.seed);
		mutex_unlock(&sd->data_lock);
		m->begun = true;
		break;
	}
	case SIM_TAG_CHUNK: {
		struct sim_chunk c;

		memcpy(&c, p, sizeof(c));
		if (!m->begun || le32_to_cpu(c.magic) != SIM_MAGIC_CHUNK ||
		    le32_to_cpu(c.seq) != m->expect_seq)
			return -EINVAL;
		ret = sim_load_chunk(m, &c, p + sizeof(c));
		if (ret)
			return ret;
		break;
	}
	case SIM_TAG_END: {
		struct sim_end e;
		u32 crc;

		memcpy(&e, p, sizeof(e));
		if (!m->begun || le32_to_cpu(e.magic) != SIM_MAGIC_END ||
		    le32_to_cpu(e.seq) != m->expect_seq ||
		    le32_to_cpu(e.nrecords) != m->r_nrecords ||
		    le64_to_cpu(e.stream_bytes) != m->bytes_in ||
		    le64_to_cpu(e.state_size) != sd->state_size)
			return -EINVAL;
		mutex_lock(&sd->data_lock);
		crc = sim_state_crc(sd);
		mutex_unlock(&sd->data_lock);
		if (crc != le32_to_cpu(e.state_crc))
			return -EIO;
		m->complete = true;
		break;
	}
	default:
		return -EINVAL;
	}
	m->expect_seq++;
done:
	m->r_nrecords++;
	m->bytes_in += sizeof(struct sim_rec_hdr) + m->r_size;
	m->hdr_have = 0;
	return 0;
}

static ssize_t sim_resume_write(struct file *filp, const char __user *buf, size_t len,
				loff_t *pos)
{
	struct sim_migf *m = filp->private_data;
	struct sim_dev *sd;
	ssize_t done = 0;
	int ret = 0;

	if (pos)
		return -ESPIPE;
	mutex_lock(&m->lock);
	if (m->disabled || !m->sd || m->poisoned) {
		mutex_unlock(&m->lock);
		return -ENODEV;
	}
	sd = m->sd;
	get_device(&sd->vdev.device);	/* sd outlives the device's close while we wait */
	mutex_unlock(&m->lock);
	/*
	 * As on mlx5, the write holds the device's state mutex while it loads: transitions wait
	 * for it, and a reset that comes meanwhile is applied once the write returns.
	 */
	mutex_lock(&sd->state_mutex);
	mutex_lock(&m->lock);
	if (m->disabled || !m->sd || m->poisoned) {
		ret = -ENODEV;
		goto out;
	}
	while (len) {
		size_t n;

		if (m->complete) {
			ret = -EINVAL;	/* bytes after the END record */
			break;
		}
		if (m->hdr_have < sizeof(m->hdr)) {
			n = min(len, sizeof(m->hdr) - m->hdr_have);
			if (copy_from_user(m->hdr + m->hdr_have, buf, n)) {
				ret = -EFAULT;
				break;
			}
			m->hdr_have += n;
			if (m->hdr_have == sizeof(m->hdr)) {
				ret = sim_resume_header(m);
				if (ret)
					break;
			}
		} else {
			n = min_t(u64, len, m->r_size - m->payload_have);
			if (!m->skipping &&
			    copy_from_user(m->payload + m->payload_have, buf, n)) {
				ret = -EFAULT;
				break;
			}
			m->payload_have += n;
		}
		buf += n;
		len -= n;
		done += n;
		m->total_written += n;
		if (m->hdr_have == sizeof(m->hdr) && m->payload_have == m->r_size) {
			ret = sim_resume_record(m);
			if (ret)
				break;
		}
	}
	if (ret) {
		/* like mlx5: any failure poisons the stream */
		m->poisoned = true;
		kvfree(m->payload);
		m->payload = NULL;
		m->payload_cap = 0;
		done = 0;
	}
out:
	mutex_unlock(&m->lock);
	sim_state_unlock(sd);
	put_device(&sd->vdev.device);
	return ret ? ret : done;
}

static const struct file_operations sim_resume_fops = {
	.owner = THIS_MODULE,
	.write = sim_resume_write,
	.release = sim_release_file,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 12, 0)
	.llseek = no_llseek,
#endif
};

/* ---------------------------------------------------------------- state machine */

/* state_mutex held. One arc of the FSM. */
static struct file *sim_step(struct sim_dev *sd, enum vfio_device_mig_state next)
{
	enum vfio_device_mig_state cur = sd->mig_state;
	struct sim_migf *m;

	if ((cur == VFIO_DEVICE_STATE_RUNNING && next == VFIO_DEVICE_STATE_RUNNING_P2P) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && next == VFIO_DEVICE_STATE_RUNNING) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && next == VFIO_DEVICE_STATE_STOP) ||
	    (cur == VFIO_DEVICE_STATE_STOP && next == VFIO_DEVICE_STATE_RUNNING_P2P))
		return NULL;

	if (cur == VFIO_DEVICE_STATE_STOP && next == VFIO_DEVICE_STATE_STOP_COPY) {
		m = sim_save_start(sd, false);
		return IS_ERR(m) ? ERR_CAST(m) : m->filp;
	}
	if (cur == VFIO_DEVICE_STATE_STOP_COPY && next == VFIO_DEVICE_STATE_STOP) {
		sim_disable_migf(sd, sd->save_migf);
		return NULL;
	}
	if (cur == VFIO_DEVICE_STATE_STOP && next == VFIO_DEVICE_STATE_RESUMING) {
		m = sim_resume_start(sd);
		return IS_ERR(m) ? ERR_CAST(m) : m->filp;
	}
	if (cur == VFIO_DEVICE_STATE_RESUMING && next == VFIO_DEVICE_STATE_STOP) {
		bool ok;

		m = sd->resume_migf;
		if (!m)
			return NULL;
		mutex_lock(&m->lock);
		ok = !m->poisoned && (m->complete || m->total_written == 0);
		mutex_unlock(&m->lock);
		sim_disable_migf(sd, m);
		/*
		 * mlx5 loads every record as it completes and leaves RESUMING whatever came
		 * before (an incomplete last record is dropped): the writer must check the
		 * stream itself.  strict_resume refuses it here instead.
		 */
		if (!ok && READ_ONCE(strict_resume)) {
			/* the device state is garbage now: it must be reset */
			sd->mig_state = VFIO_DEVICE_STATE_ERROR;
			return ERR_PTR(-EIO);
		}
		return NULL;
	}
#if SIM_HAVE_PRECOPY
	if ((cur == VFIO_DEVICE_STATE_RUNNING && next == VFIO_DEVICE_STATE_PRE_COPY) ||
	    (cur == VFIO_DEVICE_STATE_RUNNING_P2P && next == VFIO_DEVICE_STATE_PRE_COPY_P2P)) {
		m = sim_save_start(sd, true);
		return IS_ERR(m) ? ERR_CAST(m) : m->filp;
	}
	if ((cur == VFIO_DEVICE_STATE_PRE_COPY && next == VFIO_DEVICE_STATE_PRE_COPY_P2P) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P && next == VFIO_DEVICE_STATE_PRE_COPY))
		return NULL;
	if ((cur == VFIO_DEVICE_STATE_PRE_COPY && next == VFIO_DEVICE_STATE_RUNNING) ||
	    (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P && next == VFIO_DEVICE_STATE_RUNNING_P2P)) {
		sim_disable_migf(sd, sd->save_migf);
		return NULL;
	}
	if ((cur == VFIO_DEVICE_STATE_PRE_COPY || cur == VFIO_DEVICE_STATE_PRE_COPY_P2P) &&
	    next == VFIO_DEVICE_STATE_STOP_COPY) {
		m = sd->save_migf;
		if (!m)
			return ERR_PTR(-EINVAL);
		mutex_lock(&m->lock);
		if (!m->disabled) {
			sim_apply_dirty_rate(m);
			sim_save_dirty(m);	/* the final save takes everything still dirty */
			m->final = true;
		}
		mutex_unlock(&m->lock);
		return NULL;	/* same fd keeps streaming */
	}
#endif
	return ERR_PTR(-EINVAL);
}

static struct file *sim_set_state(struct vfio_device *vdev, enum vfio_device_mig_state new)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	enum vfio_device_mig_state next;
	struct file *res = NULL;
	int ret;

	mutex_lock(&sd->state_mutex);
	/* from ERROR only VFIO_DEVICE_RESET leads out (the helper WARNs on it) */
	if (sd->mig_state == VFIO_DEVICE_STATE_ERROR) {
		sim_state_unlock(sd);
		return ERR_PTR(-EINVAL);
	}
#if SIM_HAVE_PRECOPY
	/*
	 * STOP_COPY -> PRE_COPY(_P2P) is a blocked arc.  vfio_mig_get_next_state()
	 * of kernels without the upstream fix ("vfio: Terminate the skip loop on
	 * the ERROR sentinel") spins forever on it for a PRE_COPY capable device:
	 * refuse it before asking the helper.
	 */
	if (sd->mig_state == VFIO_DEVICE_STATE_STOP_COPY &&
	    (new == VFIO_DEVICE_STATE_PRE_COPY || new == VFIO_DEVICE_STATE_PRE_COPY_P2P)) {
		sim_state_unlock(sd);
		return ERR_PTR(-EINVAL);
	}
#endif
	while (new != sd->mig_state) {
		ret = vfio_mig_get_next_state(vdev, sd->mig_state, new, &next);
		if (ret) {
			res = ERR_PTR(ret);
			break;
		}
		res = sim_step(sd, next);
		if (IS_ERR(res))
			break;
		sd->mig_state = next;
		if (WARN_ON(res && new != next)) {
			fput(res);
			res = ERR_PTR(-EINVAL);
			break;
		}
	}
	sim_state_unlock(sd);
	return res;
}

static int sim_get_state(struct vfio_device *vdev, enum vfio_device_mig_state *st)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);

	mutex_lock(&sd->state_mutex);
	*st = sd->mig_state;
	sim_state_unlock(sd);
	return 0;
}

#ifdef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
static int sim_get_data_size(struct vfio_device *vdev, unsigned long *len)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	struct sim_migf *m;
	u64 est;

	mutex_lock(&sd->state_mutex);
	m = sd->save_migf;
	if (m) {
		mutex_lock(&m->lock);
		mutex_lock(&sd->data_lock);
		est = sim_remaining_estimate(m, NULL, NULL);
		mutex_unlock(&sd->data_lock);
		mutex_unlock(&m->lock);
	} else {
		u64 rec = max_t(u64, (u64)record_kib * 1024, SIM_PAGE);

		mutex_lock(&sd->data_lock);
		est = sd->state_size + SIM_BAR0_SIZE +
		      (div64_u64(sd->state_size, rec) + 4) *
		      (sizeof(struct sim_rec_hdr) + sizeof(struct sim_chunk)) + 8;
		mutex_unlock(&sd->data_lock);
	}
	sim_state_unlock(sd);
	*len = est;
	return 0;
}
#endif

static const struct vfio_migration_ops sim_mig_ops = {
	.migration_set_state = sim_set_state,
	.migration_get_state = sim_get_state,
#ifdef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
	.migration_get_data_size = sim_get_data_size,
#endif
};

/* ---------------------------------------------------------------- DMA logging */

#if SIM_HAVE_DMA_LOGGING

/* log_lock held */
static void sim_log_free(struct sim_dev *sd)
{
	u32 i;

	for (i = 0; i < sd->log_nranges; i++)
		kvfree(sd->log_ranges[i].dirty);
	kfree(sd->log_ranges);
	sd->log_ranges = NULL;
	sd->log_nranges = 0;
	sd->log_on = false;
	sd->log_page = 0;
}

/* tracker pages of `page` bytes that cover [start, last] */
static u64 sim_log_span(u64 start, u64 last, u64 page)
{
	u64 first = round_down(start, page);
	u64 end = round_down(last, page);

	return div64_u64(end - first, page) + 1;
}

/*
 * The device starts tracking its writes to the given IOVA ranges.  As on mlx5: a second
 * start without a stop is refused, and the page size may be raised (the core copies the one
 * chosen back to user space): here so that the bitmaps stay within SIM_LOG_MAX_PAGES.
 */
static int sim_log_start(struct vfio_device *vdev, struct rb_root_cached *ranges, u32 nnodes,
			 u64 *page_size)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	struct interval_tree_node *n;
	u64 page = *page_size, total;
	u32 i;
	int ret = 0;

	if (!nnodes || page < SIM_PAGE || !is_power_of_2(page))
		return -EINVAL;
	mutex_lock(&sd->log_lock);
	if (sd->log_on) {
		ret = -EINVAL;
		goto out;
	}
	for (;;) {
		total = 0;
		for (n = interval_tree_iter_first(ranges, 0, ULONG_MAX); n;
		     n = interval_tree_iter_next(n, 0, ULONG_MAX)) {
			if (n->last < n->start) {
				ret = -EINVAL;
				goto out;
			}
			total += sim_log_span(n->start, n->last, page);
			if (total > SIM_LOG_MAX_PAGES)
				break;
		}
		if (total <= SIM_LOG_MAX_PAGES)
			break;
		if (page >= (1ULL << 62)) {
			ret = -E2BIG;
			goto out;
		}
		page <<= 1;
	}
	sd->log_ranges = kcalloc(nnodes, sizeof(*sd->log_ranges), GFP_KERNEL_ACCOUNT);
	if (!sd->log_ranges) {
		ret = -ENOMEM;
		goto out;
	}
	i = 0;
	for (n = interval_tree_iter_first(ranges, 0, ULONG_MAX); n && i < nnodes;
	     n = interval_tree_iter_next(n, 0, ULONG_MAX), i++) {
		struct sim_log_range *r = &sd->log_ranges[i];

		r->start = round_down(n->start, page);
		r->pages = sim_log_span(n->start, n->last, page);
		r->dirty = kvcalloc(BITS_TO_LONGS(r->pages), sizeof(unsigned long), GFP_KERNEL_ACCOUNT);
		sd->log_nranges = i + 1;
		if (!r->dirty) {
			sim_log_free(sd);
			ret = -ENOMEM;
			goto out;
		}
	}
	sd->log_page = page;
	sd->log_on = true;
	*page_size = page;
out:
	mutex_unlock(&sd->log_lock);
	return ret;
}

static int sim_log_stop(struct vfio_device *vdev)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);

	mutex_lock(&sd->log_lock);
	sim_log_free(sd);
	mutex_unlock(&sd->log_lock);
	return 0;
}

/*
 * Reports the pages written in [iova, iova + length) into the core's bitmap and clears
 * them.  A tracker page only partly inside the window is reported but stays dirty: the
 * next window (or report) covers the rest; reporting a page twice is harmless, missing
 * one is not.
 */
static int sim_log_read_and_clear(struct vfio_device *vdev, unsigned long iova,
				  unsigned long length, struct iova_bitmap *dirty)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	u64 end = (u64)iova + length;	/* the core checked it does not overflow */
	u32 i;
	int ret = 0;

	mutex_lock(&sd->log_lock);
	if (!sd->log_on) {
		ret = -EINVAL;
		goto out;
	}
	for (i = 0; i < sd->log_nranges; i++) {
		struct sim_log_range *r = &sd->log_ranges[i];
		u64 p;

		for_each_set_bit(p, r->dirty, r->pages) {
			u64 a = r->start + p * sd->log_page;
			u64 b = a + sd->log_page;
			u64 lo = max_t(u64, a, iova), hi = min_t(u64, b, end);

			if (lo >= hi)
				continue;
			iova_bitmap_set(dirty, lo, hi - lo);
			if (lo == a && hi == b)
				clear_bit(p, r->dirty);
		}
	}
out:
	mutex_unlock(&sd->log_lock);
	return ret;
}

static const struct vfio_log_ops sim_log_ops = {
	.log_start = sim_log_start,
	.log_stop = sim_log_stop,
	.log_read_and_clear = sim_log_read_and_clear,
};

/*
 * state_mutex held: the device writes [iova, iova + length) of IOVA space (a running device
 * DMAs into the memory it was given); the pages in a logged range become dirty.
 */
static void sim_dma_write(struct sim_dev *sd, u64 iova, u64 length)
{
	u64 last = iova + length - 1;
	u32 i;

	atomic64_add(sim_log_span(iova, last, SIM_PAGE), &sd->dma_pages_written);
	mutex_lock(&sd->log_lock);
	for (i = 0; sd->log_on && i < sd->log_nranges; i++) {
		struct sim_log_range *r = &sd->log_ranges[i];
		u64 rlast = r->start + r->pages * sd->log_page - 1;
		u64 lo, hi, p;

		if (last < r->start || iova > rlast)
			continue;
		lo = div64_u64(max(iova, r->start) - r->start, sd->log_page);
		hi = div64_u64(min(last, rlast) - r->start, sd->log_page);
		for (p = lo; p <= hi; p++) {
			set_bit(p, r->dirty);
			if ((p & 1023) == 1023)
				cond_resched();
		}
	}
	mutex_unlock(&sd->log_lock);
}
#endif

/* ---------------------------------------------------------------- PCI emulation */

static void sim_cfg_init(struct sim_dev *sd)
{
	u8 *c = sd->cfg, *w = sd->cfg_wmask;

	memset(c, 0, SIM_CFG_SIZE);
	memset(w, 0, SIM_CFG_SIZE);
	put_unaligned_le16(SIM_VENDOR_ID, c + PCI_VENDOR_ID);
	put_unaligned_le16(SIM_DEVICE_ID, c + PCI_DEVICE_ID);
	put_unaligned_le16(0, c + PCI_COMMAND);
	put_unaligned_le16(0, c + PCI_STATUS);
	c[PCI_REVISION_ID] = 1;
	c[PCI_CLASS_PROG] = 0;
	put_unaligned_le16(0xff00, c + PCI_CLASS_DEVICE);	/* unassigned class */
	c[PCI_HEADER_TYPE] = PCI_HEADER_TYPE_NORMAL;
	put_unaligned_le32(PCI_BASE_ADDRESS_SPACE_MEMORY | PCI_BASE_ADDRESS_MEM_TYPE_32,
			   c + PCI_BASE_ADDRESS_0);
	put_unaligned_le16(SIM_VENDOR_ID, c + PCI_SUBSYSTEM_VENDOR_ID);
	put_unaligned_le16(SIM_DEVICE_ID, c + PCI_SUBSYSTEM_ID);
	c[PCI_INTERRUPT_PIN] = 0;

	w[PCI_COMMAND] = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	w[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8;
	/* BAR0: 4 KiB, address bits 31:12 writable */
	w[PCI_BASE_ADDRESS_0 + 1] = 0xf0;
	w[PCI_BASE_ADDRESS_0 + 2] = 0xff;
	w[PCI_BASE_ADDRESS_0 + 3] = 0xff;
	w[PCI_INTERRUPT_LINE] = 0xff;
}

static ssize_t sim_cfg_rw(struct sim_dev *sd, char __user *ubuf, size_t count, u64 off,
			  bool write)
{
	u8 tmp[SIM_CFG_SIZE];
	size_t i;

	if (off >= SIM_CFG_SIZE)
		return -EINVAL;
	count = min_t(size_t, count, SIM_CFG_SIZE - off);
	mutex_lock(&sd->state_mutex);
	if (write) {
		if (copy_from_user(tmp, ubuf, count)) {
			sim_state_unlock(sd);
			return -EFAULT;
		}
		for (i = 0; i < count; i++) {
			u8 w = sd->cfg_wmask[off + i];

			sd->cfg[off + i] = (sd->cfg[off + i] & ~w) | (tmp[i] & w);
		}
	} else {
		memcpy(tmp, sd->cfg + off, count);
		if (copy_to_user(ubuf, tmp, count)) {
			sim_state_unlock(sd);
			return -EFAULT;
		}
	}
	sim_state_unlock(sd);
	return count;
}

static ssize_t sim_bar0_rw(struct sim_dev *sd, char __user *ubuf, size_t count, u64 off,
			   bool write)
{
	ssize_t ret = count;

	if (off >= SIM_BAR0_SIZE)
		return -EINVAL;
	count = min_t(size_t, count, SIM_BAR0_SIZE - off);
	ret = count;
	mutex_lock(&sd->state_mutex);
	/* a stopped device does not change its state: MMIO writes are refused */
	if (write && !sim_state_is_running(sd->mig_state)) {
		sim_state_unlock(sd);
		return -EBUSY;
	}
	mutex_lock(&sd->data_lock);
	if (write) {
		if (copy_from_user(sd->bar0 + off, ubuf, count))
			ret = -EFAULT;
	} else {
		if (copy_to_user(ubuf, sd->bar0 + off, count))
			ret = -EFAULT;
	}
	mutex_unlock(&sd->data_lock);
	sim_state_unlock(sd);
	return ret;
}

static ssize_t sim_rw(struct vfio_device *vdev, char __user *ubuf, size_t count,
		      loff_t *ppos, bool write)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	u64 pos = *ppos;
	u64 index = pos >> SIM_OFFSET_SHIFT;
	u64 off = pos & SIM_OFFSET_MASK;
	ssize_t ret;

	if (*ppos < 0 || !count)
		return *ppos < 0 ? -EINVAL : 0;
	switch (index) {
	case VFIO_PCI_CONFIG_REGION_INDEX:
		ret = sim_cfg_rw(sd, ubuf, count, off, write);
		break;
	case VFIO_PCI_BAR0_REGION_INDEX:
		ret = sim_bar0_rw(sd, ubuf, count, off, write);
		break;
	default:
		return -EINVAL;
	}
	if (ret > 0)
		*ppos += ret;
	return ret;
}

static ssize_t sim_read(struct vfio_device *vdev, char __user *buf, size_t count, loff_t *ppos)
{
	return sim_rw(vdev, buf, count, ppos, false);
}

static ssize_t sim_write(struct vfio_device *vdev, const char __user *buf, size_t count,
			 loff_t *ppos)
{
	return sim_rw(vdev, (char __user *)buf, count, ppos, true);
}

static long sim_ioctl(struct vfio_device *vdev, unsigned int cmd, unsigned long arg)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	void __user *uarg = (void __user *)arg;
	unsigned long minsz;

	switch (cmd) {
	case VFIO_DEVICE_GET_INFO: {
		struct vfio_device_info info;

		minsz = offsetofend(struct vfio_device_info, num_irqs);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
		info.num_regions = VFIO_PCI_NUM_REGIONS;
		info.num_irqs = VFIO_PCI_NUM_IRQS;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_REGION_INFO: {
		struct vfio_region_info info;

		minsz = offsetofend(struct vfio_region_info, offset);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		if (info.index >= VFIO_PCI_NUM_REGIONS)
			return -EINVAL;
		info.offset = (u64)info.index << SIM_OFFSET_SHIFT;
		info.cap_offset = 0;
		switch (info.index) {
		case VFIO_PCI_CONFIG_REGION_INDEX:
			info.size = SIM_CFG_SIZE;
			info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
			break;
		case VFIO_PCI_BAR0_REGION_INDEX:
			info.size = SIM_BAR0_SIZE;
			info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
			break;
		default:
			info.size = 0;
			info.flags = 0;
			break;
		}
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_IRQ_INFO: {
		struct vfio_irq_info info;

		minsz = offsetofend(struct vfio_irq_info, count);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz || info.index >= VFIO_PCI_NUM_IRQS)
			return -EINVAL;
		info.flags = 0;
		info.count = 0;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_SET_IRQS:
		return -EINVAL;	/* no interrupts */
	case VFIO_DEVICE_RESET:
		sim_reset(sd);
		return 0;
	}
	return -ENOTTY;
}

static int sim_open_device(struct vfio_device *vdev)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);

	mutex_lock(&sd->state_mutex);
	if (READ_ONCE(reset_on_open_close))
		sim_reset_locked(sd);
	else
		sd->mig_state = VFIO_DEVICE_STATE_RUNNING;
	sim_state_unlock(sd);
	return 0;
}

static void sim_close_device(struct vfio_device *vdev)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);

	mutex_lock(&sd->state_mutex);
	if (READ_ONCE(reset_on_open_close)) {
		sim_reset_locked(sd);
	} else {
		sim_disable_all(sd);
		sd->mig_state = VFIO_DEVICE_STATE_RUNNING;
	}
#if SIM_HAVE_DMA_LOGGING
	/* as mlx5: the tracker ends with the user that started it */
	mutex_lock(&sd->log_lock);
	sim_log_free(sd);
	mutex_unlock(&sd->log_lock);
#endif
	sim_state_unlock(sd);
}

static u64 sim_default_seed(struct mdev_device *mdev)
{
	u64 a, b;

	memcpy(&a, mdev->uuid.b, 8);
	memcpy(&b, mdev->uuid.b + 8, 8);
	return sim_mix(a, b);
}

static int sim_init_dev(struct vfio_device *vdev)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);
	struct mdev_device *mdev = to_mdev_device(vdev->dev);
	u64 ss = clamp_t(u64, state_size, SIM_PAGE, min_t(u64, max_state_size, SIM_MAX_STATE));

	sd->mdev = mdev;
	sd->parent = sim_parent;
	mutex_init(&sd->state_mutex);
	mutex_init(&sd->log_lock);
	spin_lock_init(&sd->reset_lock);
	mutex_init(&sd->data_lock);
	sd->mig_state = VFIO_DEVICE_STATE_RUNNING;
	sd->state_size = round_up(ss, SIM_PAGE);
	sd->state = vzalloc(sd->state_size);
	if (!sd->state) {
		mutex_destroy(&sd->state_mutex);
		mutex_destroy(&sd->data_lock);
		mutex_destroy(&sd->log_lock);
		return -ENOMEM;
	}
	sd->seed = sim_default_seed(mdev);
	sd->power_on_seed = sd->seed;
	sd->power_on_size = sd->state_size;
	sd->load_us_per_mib = min(load_us_per_mib, SIM_MAX_DELAY_US_PER_MIB);
	sd->save_us_per_mib = min(save_us_per_mib, SIM_MAX_DELAY_US_PER_MIB);
	sd->dirty_kib_per_s = dirty_kib_per_s;
	sim_generate(sd);
	sim_cfg_init(sd);
	return 0;
}

static void sim_release_dev(struct vfio_device *vdev)
{
	struct sim_dev *sd = container_of(vdev, struct sim_dev, vdev);

	vfree(sd->state);
	sd->state = NULL;
	mutex_destroy(&sd->state_mutex);
	mutex_destroy(&sd->data_lock);
	mutex_destroy(&sd->log_lock);
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
	vfio_free_device(vdev);
#endif
}

static const struct vfio_device_ops sim_vfio_ops = {
	.name = SIM_NAME,
	.init = sim_init_dev,
	.release = sim_release_dev,
	.open_device = sim_open_device,
	.close_device = sim_close_device,
	.read = sim_read,
	.write = sim_write,
	.ioctl = sim_ioctl,
#if IS_ENABLED(CONFIG_IOMMUFD) && LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	.bind_iommufd = vfio_iommufd_emulated_bind,
	.unbind_iommufd = vfio_iommufd_emulated_unbind,
	.attach_ioas = vfio_iommufd_emulated_attach_ioas,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	.detach_ioas = vfio_iommufd_emulated_detach_ioas,
#endif
#endif
};

/* ---------------------------------------------------------------- sysfs (mdev device) */

static struct sim_dev *sim_from_dev(struct device *dev)
{
	return dev_get_drvdata(dev);
}

#define SIM_SHOW_ATOMIC64(name)							\
static ssize_t name##_show(struct device *dev, struct device_attribute *a, char *buf) \
{									\
	return sysfs_emit(buf, "%lld\n",					\
			  (long long)atomic64_read(&sim_from_dev(dev)->name));	\
}									\
static DEVICE_ATTR_RO(name)

SIM_SHOW_ATOMIC64(bytes_loaded);
SIM_SHOW_ATOMIC64(loads);
SIM_SHOW_ATOMIC64(bytes_saved);
SIM_SHOW_ATOMIC64(saves);
SIM_SHOW_ATOMIC64(dirtied_pages);
SIM_SHOW_ATOMIC64(load_us_total);

static ssize_t peak_concurrent_loads_show(struct device *dev, struct device_attribute *a,
					  char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sim_from_dev(dev)->peak_concurrent_loads));
}
static DEVICE_ATTR_RO(peak_concurrent_loads);

static ssize_t reset_counters_store(struct device *dev, struct device_attribute *a,
				    const char *buf, size_t count)
{
	struct sim_dev *sd = sim_from_dev(dev);

	atomic64_set(&sd->bytes_loaded, 0);
	atomic64_set(&sd->loads, 0);
	atomic64_set(&sd->bytes_saved, 0);
	atomic64_set(&sd->saves, 0);
	atomic64_set(&sd->dirtied_pages, 0);
	atomic64_set(&sd->load_us_total, 0);
	atomic_set(&sd->peak_concurrent_loads, 0);
	return count;
}
static DEVICE_ATTR_WO(reset_counters);

static ssize_t digest_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	struct sha256_state *ctx;
	u8 out[SHA256_DIGEST_SIZE];
	u64 off = 0;

	ctx = kmalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	sha256_init(ctx);
	mutex_lock(&sd->data_lock);
	while (off < sd->state_size) {
		u64 n = min_t(u64, sd->state_size - off, 1ULL << 20);

		sha256_update(ctx, sd->state + off, n);
		off += n;
		cond_resched();
	}
	sha256_update(ctx, sd->bar0, SIM_BAR0_SIZE);
	mutex_unlock(&sd->data_lock);
	sha256_final(ctx, out);
	kfree(ctx);
	return sysfs_emit(buf, "%*phN\n", SHA256_DIGEST_SIZE, out);
}
static DEVICE_ATTR_RO(digest);

static ssize_t state_crc_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u32 crc;

	mutex_lock(&sd->data_lock);
	crc = sim_state_crc(sd);
	mutex_unlock(&sd->data_lock);
	return sysfs_emit(buf, "%08x\n", crc);
}
static DEVICE_ATTR_RO(state_crc);

static const char *const sim_state_names[] = {
	[VFIO_DEVICE_STATE_ERROR] = "ERROR",
	[VFIO_DEVICE_STATE_STOP] = "STOP",
	[VFIO_DEVICE_STATE_RUNNING] = "RUNNING",
	[VFIO_DEVICE_STATE_STOP_COPY] = "STOP_COPY",
	[VFIO_DEVICE_STATE_RESUMING] = "RESUMING",
	[VFIO_DEVICE_STATE_RUNNING_P2P] = "RUNNING_P2P",
#if SIM_HAVE_PRECOPY
	[VFIO_DEVICE_STATE_PRE_COPY] = "PRE_COPY",
	[VFIO_DEVICE_STATE_PRE_COPY_P2P] = "PRE_COPY_P2P",
#endif
};

static ssize_t mig_state_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	unsigned int st;

	mutex_lock(&sd->state_mutex);
	st = sd->mig_state;
	sim_state_unlock(sd);
	return sysfs_emit(buf, "%s\n", st < ARRAY_SIZE(sim_state_names) &&
			  sim_state_names[st] ? sim_state_names[st] : "?");
}
static DEVICE_ATTR_RO(mig_state);

/* state_mutex held: only a running device without a resume session changes */
static int sim_may_change(struct sim_dev *sd)
{
	if (!sim_state_is_running(sd->mig_state) || sd->resume_migf)
		return -EBUSY;
	return 0;
}

static ssize_t state_size_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 v;

	mutex_lock(&sd->data_lock);
	v = sd->state_size;
	mutex_unlock(&sd->data_lock);
	return sysfs_emit(buf, "%llu\n", v);
}

static ssize_t state_size_store(struct device *dev, struct device_attribute *a,
				const char *buf, size_t count)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 v;
	u8 *n;
	int ret;

	ret = kstrtou64(buf, 0, &v);
	if (ret)
		return ret;
	if (!v || v > min_t(u64, max_state_size, SIM_MAX_STATE))
		return -EINVAL;
	v = round_up(v, SIM_PAGE);
	mutex_lock(&sd->state_mutex);
	if (sd->save_migf || sd->resume_migf) {
		ret = -EBUSY;
		goto out;
	}
	n = vzalloc(v);
	if (!n) {
		ret = -ENOMEM;
		goto out;
	}
	mutex_lock(&sd->data_lock);
	vfree(sd->state);
	sd->state = n;
	sd->state_size = v;
	sd->power_on_size = v;
	sd->power_on_seed = sd->seed;
	sim_generate(sd);
	mutex_unlock(&sd->data_lock);
out:
	sim_state_unlock(sd);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(state_size);

static ssize_t seed_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 v;

	mutex_lock(&sd->data_lock);
	v = sd->seed;
	mutex_unlock(&sd->data_lock);
	return sysfs_emit(buf, "0x%016llx\n", v);
}

static ssize_t seed_store(struct device *dev, struct device_attribute *a,
			  const char *buf, size_t count)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 v, p;
	int ret;

	ret = kstrtou64(buf, 0, &v);
	if (ret)
		return ret;
	mutex_lock(&sd->state_mutex);
	ret = sim_may_change(sd);
	if (!ret) {
		mutex_lock(&sd->data_lock);
		sd->seed = v;
		sd->power_on_seed = v;
		sd->power_on_size = sd->state_size;
		sim_generate(sd);
		for (p = 0; p < sd->state_size / SIM_PAGE; p++)
			sim_mark_dirty(sd, p);
		mutex_unlock(&sd->data_lock);
	}
	sim_state_unlock(sd);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(seed);

static ssize_t dirty_show(struct device *dev, struct device_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&sim_from_dev(dev)->dirtied_pages));
}

/* write N: N pseudo-random 4 KiB pages of the state change */
static ssize_t dirty_store(struct device *dev, struct device_attribute *a,
			   const char *buf, size_t count)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 v;
	int ret;

	ret = kstrtou64(buf, 0, &v);
	if (ret)
		return ret;
	mutex_lock(&sd->state_mutex);
	ret = sim_may_change(sd);
	if (!ret) {
		mutex_lock(&sd->data_lock);
		sim_dirty_pages(sd, v);
		mutex_unlock(&sd->data_lock);
	}
	sim_state_unlock(sd);
	return ret ? ret : count;
}
static DEVICE_ATTR_RW(dirty);

#define SIM_U32_KNOB(name, maxv)						\
static ssize_t name##_show(struct device *dev, struct device_attribute *a, char *buf) \
{									\
	return sysfs_emit(buf, "%u\n", READ_ONCE(sim_from_dev(dev)->name));	\
}									\
static ssize_t name##_store(struct device *dev, struct device_attribute *a,	\
			    const char *buf, size_t count)		\
{									\
	u32 v;								\
	int ret = kstrtou32(buf, 0, &v);				\
	if (ret)							\
		return ret;						\
	if (v > (maxv))							\
		return -EINVAL;						\
	WRITE_ONCE(sim_from_dev(dev)->name, v);				\
	return count;							\
}									\
static DEVICE_ATTR_RW(name)

#define SIM_INJECT_ATTR(name)							\
static ssize_t name##_show(struct device *dev, struct device_attribute *a, char *buf) \
{									\
	return sysfs_emit(buf, "%d\n", atomic_read(&sim_from_dev(dev)->name)); \
}									\
static ssize_t name##_store(struct device *dev, struct device_attribute *a,	\
			    const char *buf, size_t count)		\
{									\
	u32 v;								\
	int ret = kstrtou32(buf, 0, &v);				\
	if (ret)							\
		return ret;						\
	if (v > 1000000)						\
		return -EINVAL;						\
	atomic_set(&sim_from_dev(dev)->name, v);			\
	return count;							\
}									\
static DEVICE_ATTR_RW(name)

#if SIM_HAVE_DMA_LOGGING
/* write "IOVA LENGTH": the running device writes there by DMA (what DMA logging tracks) */
static ssize_t dma_write_store(struct device *dev, struct device_attribute *a,
			       const char *buf, size_t count)
{
	struct sim_dev *sd = sim_from_dev(dev);
	unsigned long long iova, length;
	int ret;

	if (sscanf(buf, "%llu %llu", &iova, &length) != 2 && sscanf(buf, "%llx %llx", &iova, &length) != 2)
		return -EINVAL;
	if (!length || iova + length < iova)
		return -EINVAL;
	mutex_lock(&sd->state_mutex);
	ret = sim_state_is_running(sd->mig_state) ? 0 : -EBUSY;
	if (!ret)
		sim_dma_write(sd, iova, length);
	sim_state_unlock(sd);
	return ret ? ret : count;
}
static DEVICE_ATTR_WO(dma_write);

/* "off", or "page_size P ranges R dirty D": the tracker and the pages it holds for the next report */
static ssize_t dma_logging_show(struct device *dev, struct device_attribute *a, char *buf)
{
	struct sim_dev *sd = sim_from_dev(dev);
	u64 dirty = 0;
	ssize_t n;
	u32 i;

	mutex_lock(&sd->log_lock);
	for (i = 0; i < sd->log_nranges; i++)
		dirty += bitmap_weight(sd->log_ranges[i].dirty, sd->log_ranges[i].pages);
	if (sd->log_on)
		n = sysfs_emit(buf, "page_size %llu ranges %u dirty %llu\n", sd->log_page,
			       sd->log_nranges, dirty);
	else
		n = sysfs_emit(buf, "off\n");
	mutex_unlock(&sd->log_lock);
	return n;
}
static DEVICE_ATTR_RO(dma_logging);
SIM_SHOW_ATOMIC64(dma_pages_written);
#endif

SIM_INJECT_ATTR(inject_load_errors);
SIM_INJECT_ATTR(inject_save_errors);

SIM_U32_KNOB(load_us_per_mib, SIM_MAX_DELAY_US_PER_MIB);
SIM_U32_KNOB(save_us_per_mib, SIM_MAX_DELAY_US_PER_MIB);
SIM_U32_KNOB(dirty_kib_per_s, 4U << 20);

static struct attribute *sim_dev_attrs[] = {
	&dev_attr_digest.attr,
	&dev_attr_state_crc.attr,
	&dev_attr_state_size.attr,
	&dev_attr_seed.attr,
	&dev_attr_dirty.attr,
	&dev_attr_mig_state.attr,
	&dev_attr_load_us_per_mib.attr,
	&dev_attr_save_us_per_mib.attr,
	&dev_attr_dirty_kib_per_s.attr,
	&dev_attr_bytes_loaded.attr,
	&dev_attr_loads.attr,
	&dev_attr_bytes_saved.attr,
	&dev_attr_saves.attr,
	&dev_attr_dirtied_pages.attr,
	&dev_attr_load_us_total.attr,
	&dev_attr_peak_concurrent_loads.attr,
	&dev_attr_reset_counters.attr,
	&dev_attr_inject_load_errors.attr,
	&dev_attr_inject_save_errors.attr,
#if SIM_HAVE_DMA_LOGGING
	&dev_attr_dma_write.attr,
	&dev_attr_dma_logging.attr,
	&dev_attr_dma_pages_written.attr,
#endif
	NULL,
};

static const struct attribute_group sim_dev_group = {
	.attrs = sim_dev_attrs,
};

static const struct attribute_group *sim_dev_groups[] = {
	&sim_dev_group,
	NULL,
};

/* ---------------------------------------------------------------- mdev driver */

static int sim_probe(struct mdev_device *mdev)
{
	struct sim_dev *sd;
	int ret;

	sd = vfio_alloc_device(sim_dev, vdev, &mdev->dev, &sim_vfio_ops);
	if (IS_ERR(sd))
		return PTR_ERR(sd);
	sd->vdev.mig_ops = &sim_mig_ops;
	sd->vdev.migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
#if SIM_HAVE_PRECOPY
	sd->vdev.migration_flags |= VFIO_MIGRATION_PRE_COPY;
#endif
#if SIM_HAVE_DMA_LOGGING
	sd->vdev.log_ops = &sim_log_ops;
#endif
	ret = vfio_register_emulated_iommu_dev(&sd->vdev);
	if (ret) {
		vfio_put_device(&sd->vdev);
		return ret;
	}
	dev_set_drvdata(&mdev->dev, sd);
	return 0;
}

static void sim_remove(struct mdev_device *mdev)
{
	struct sim_dev *sd = dev_get_drvdata(&mdev->dev);

	vfio_unregister_group_dev(&sd->vdev);
	vfio_put_device(&sd->vdev);
}

static ssize_t sim_show_description(struct mdev_type *mtype, char *buf)
{
	return sysfs_emit(buf, "simulated migratable PCI function (mlx5-like), state %lu bytes\n",
			  state_size);
}

static struct mdev_type sim_type = {
	.sysfs_name = "mig",
	.pretty_name = "vfio_mig_sim migratable function",
};

static struct mdev_type *sim_types[] = { &sim_type };

static struct mdev_driver sim_mdev_driver = {
	.device_api = VFIO_DEVICE_API_PCI_STRING,
	.probe = sim_probe,
	.remove = sim_remove,
	.show_description = sim_show_description,
	.driver = {
		.name = SIM_NAME,
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
		.dev_groups = sim_dev_groups,
	},
};

/* ---------------------------------------------------------------- parent */

static ssize_t peak_concurrent_loads_parent_show(struct device *dev, struct device_attribute *a,
						 char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sim_parent->peak_loads));
}

static ssize_t peak_concurrent_loads_parent_store(struct device *dev,
						  struct device_attribute *a,
						  const char *buf, size_t count)
{
	atomic_set(&sim_parent->peak_loads, atomic_read(&sim_parent->active_loads));
	return count;
}

static struct device_attribute dev_attr_parent_peak =
	__ATTR(peak_concurrent_loads, 0644, peak_concurrent_loads_parent_show,
	       peak_concurrent_loads_parent_store);

static ssize_t active_loads_show(struct device *dev, struct device_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sim_parent->active_loads));
}
static DEVICE_ATTR_RO(active_loads);

static ssize_t max_concurrent_loads_show(struct device *dev, struct device_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%u\n", sim_parent->max_loads);
}
static DEVICE_ATTR_RO(max_concurrent_loads);

static ssize_t total_loads_show(struct device *dev, struct device_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&sim_parent->total_loads));
}
static DEVICE_ATTR_RO(total_loads);

static ssize_t total_bytes_loaded_show(struct device *dev, struct device_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%lld\n",
			  (long long)atomic64_read(&sim_parent->total_bytes_loaded));
}
static DEVICE_ATTR_RO(total_bytes_loaded);

static struct attribute *sim_parent_attrs[] = {
	&dev_attr_parent_peak.attr,
	&dev_attr_active_loads.attr,
	&dev_attr_max_concurrent_loads.attr,
	&dev_attr_total_loads.attr,
	&dev_attr_total_bytes_loaded.attr,
	NULL,
};

static const struct attribute_group sim_parent_group = {
	.attrs = sim_parent_attrs,
};

static const struct attribute_group *sim_parent_groups[] = {
	&sim_parent_group,
	NULL,
};

static struct class sim_class = {
	.name = SIM_NAME,
};

static void sim_parent_release(struct device *dev)
{
	kfree(container_of(dev, struct sim_parent, dev));
}

static int __init sim_init(void)
{
	int ret;

	if (!max_concurrent_loads || max_concurrent_loads > 1024) {
		pr_err(SIM_NAME ": max_concurrent_loads must be 1..1024\n");
		return -EINVAL;
	}
	if (!max_devices || max_devices > 4096) {
		pr_err(SIM_NAME ": max_devices must be 1..4096\n");
		return -EINVAL;
	}
	if (max_state_size > SIM_MAX_STATE)
		max_state_size = SIM_MAX_STATE;

	ret = class_register(&sim_class);
	if (ret)
		return ret;

	sim_parent = kzalloc(sizeof(*sim_parent), GFP_KERNEL);
	if (!sim_parent) {
		ret = -ENOMEM;
		goto err_class;
	}
	sema_init(&sim_parent->load_sem, max_concurrent_loads);
	sim_parent->max_loads = max_concurrent_loads;
	device_initialize(&sim_parent->dev);
	sim_parent->dev.class = &sim_class;
	sim_parent->dev.release = sim_parent_release;
	sim_parent->dev.groups = sim_parent_groups;
	ret = dev_set_name(&sim_parent->dev, SIM_NAME);
	if (ret)
		goto err_put;
	ret = device_add(&sim_parent->dev);
	if (ret)
		goto err_put;

	sim_mdev_driver.max_instances = max_devices;
	ret = mdev_register_driver(&sim_mdev_driver);
	if (ret)
		goto err_del;
	ret = mdev_register_parent(&sim_parent->mparent, &sim_parent->dev, &sim_mdev_driver,
				   sim_types, ARRAY_SIZE(sim_types));
	if (ret)
		goto err_drv;
	pr_info(SIM_NAME ": ready (state %lu bytes, %u concurrent loads, precopy %s)\n",
		state_size, max_concurrent_loads, SIM_HAVE_PRECOPY ? "yes" : "no");
	return 0;

err_drv:
	mdev_unregister_driver(&sim_mdev_driver);
err_del:
	device_del(&sim_parent->dev);
err_put:
	put_device(&sim_parent->dev);
	sim_parent = NULL;
err_class:
	class_unregister(&sim_class);
	return ret;
}

static void __exit sim_exit(void)
{
	mdev_unregister_parent(&sim_parent->mparent);
	mdev_unregister_driver(&sim_mdev_driver);
	device_unregister(&sim_parent->dev);
	sim_parent = NULL;
	class_unregister(&sim_class);
}

module_init(sim_init);
module_exit(sim_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("vfio-mig toolkit");
MODULE_DESCRIPTION("Simulated migratable VFIO PCI function (mdev) for testing VFIO migration v2");
#if IS_ENABLED(CONFIG_IOMMUFD) && LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
MODULE_IMPORT_NS(IOMMUFD_VFIO);
#endif
