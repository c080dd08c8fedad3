//go:build linux && cgo && rdma

// SPDX-License-Identifier: Apache-2.0
/*
 * emu.c — an emulated RDMA verbs device ("emu0".."emu3") for tests.
 *
 * WHAT IS EMULATED
 *
 * Reliable-connected (RC) queue pairs doing one-sided RDMA READ and RDMA
 * WRITE between processes of one host, with the verbs semantics a transport
 * relies on: protection domains, memory regions with lkey/rkey, access flags
 * and bounds; the RC state machine with the attribute masks of the IB spec;
 * send-queue depth and SGE limits; completions in post order per QP, with
 * the error classes of hardware (local protection, remote access, retry
 * exceeded after the transport timeout, flush); CQ overrun; fault injection;
 * READ depth: each device's max_qp_rd_atom and max_qp_init_rd_atom (16, or
 * what tq_emu_set_rd_atom set) bound max_dest_rd_atomic and max_rd_atomic,
 * and an RDMA READ from a QP whose max_rd_atomic exceeds its responder QP's
 * max_dest_rd_atomic completes with IBV_WC_REM_INV_REQ_ERR.
 * The objects are the public libibverbs structs (each emulated object embeds
 * one as its FIRST member), and open_device fills context->ops so that the
 * inline ibv_post_send and ibv_poll_cq of <infiniband/verbs.h> dispatch to
 * this file. The other verbs are reached through tq_emu_verbs().
 *
 * HOW CROSS-PROCESS ACCESS WORKS (no CPU on the target)
 *
 * Every opened context creates a registry: a memfd (MFD_CLOEXEC) it owns,
 * mapped shared, holding a header (magic, version, pid, open flag) and fixed
 * tables of MR slots and QP slots (struct emu_reg below). The owner writes a
 * slot under a sequence counter (odd while writing; the final store is a
 * release store) and readers take a consistent copy with acquire loads
 * (emu_seq_read), so a reader in another process never sees a torn slot.
 * The port GID says where the registry is:
 *
 *	fe80:0000:0000:0000 : pid (4 bytes, big endian) : registry fd (4 bytes, BE)
 *
 * At INIT->RTR a QP maps its peer's registry read-only by opening
 * /proc/<pid>/fd/<fd>, and opens a pidfd on the peer for liveness. An RDMA
 * WR is executed synchronously inside ibv_post_send by the initiator: it
 * checks the peer QP and the rkey in the peer's registry, opens the peer's
 * backing file through /proc/<pid>/fd/<n> (n is published in the MR slot),
 * checks st_dev/st_ino, maps it MAP_SHARED, copies the bytes and pushes the
 * completion. The target process runs no code at all.
 *
 * Remote-accessible memory (IBV_ACCESS_REMOTE_READ/WRITE) must therefore lie
 * in one file-backed MAP_SHARED mapping (a memfd in practice). reg_mr finds
 * the file in /proc/self/maps and an fd of this process open on it by
 * scanning /proc/self/fd; it keeps a dup of that fd (so the caller may close
 * its own fd afterwards) and publishes the dup's number. If no fd of the
 * process is open on the file, reg_mr fails with EINVAL. Local-only MRs may
 * be any memory.
 *
 * OWNERSHIP OF POINTERS
 *
 * - tq_emu_verbs() returns a pointer to a static table; never freed.
 * - get_device_list returns a malloc'd NULL-terminated array owned by the
 *   caller (free it with free_device_list); the devices it points to are
 *   static and live for the whole process.
 * - open_device returns a context the caller owns until close_device; the
 *   context owns its registry memfd and mapping, its peer-registry mappings
 *   and its cache of mappings of peers' memory (struct emu_rmap).
 * - alloc_pd/reg_mr/reg_dmabuf_mr/create_cq/create_qp return objects owned by
 *   the caller until the matching dealloc/dereg/destroy; each holds a
 *   pointer to its context (and MRs/QPs to their PD, QPs to their CQs), which
 *   therefore must outlive it: the destroy of a parent with live children
 *   fails with EBUSY.
 * - An MR does not own the memory it describes (reg_mr), except the dup of
 *   the backing fd (remote MRs) and, for reg_dmabuf_mr, the dup of the fd
 *   and the mapping of it, which dereg_mr closes and unmaps.
 * - A QP holds a counted reference to the peer (registry mapping + pidfd)
 *   from INIT->RTR until it goes to RESET or is destroyed. Mappings of a
 *   peer's memory are cached per context, keyed by (pid, st_dev, st_ino),
 *   and unmapped when no QP of the context is attached to that pid any more,
 *   or at close_device.
 * - CQ entries point to their QP; destroy_qp and modify_qp(RESET) remove
 *   the QP's entries from its CQ (as mlx5 does), so those pointers never
 *   dangle. Work requests and SGE lists are read only during post_send; the
 *   caller keeps them.
 *
 * THREADS
 *
 * Every entry point may be called from any thread. post_send holds its QP's
 * lock for the whole chain (posts on one QP are serialized, posts on
 * different QPs run in parallel); poll_cq holds its CQ's lock. Lock order:
 * QP -> context -> rmap, and QP -> CQ. Creating and destroying an object
 * while another thread uses it is the caller's error, as with hardware.
 *
 * RETURN CONVENTION (as libibverbs)
 *
 * Functions returning int return 0 or a positive errno value (errno is set
 * to it too); functions returning a pointer return NULL with errno set.
 * ibv_post_send returns the errno value and sets *bad_wr. poll_cq returns
 * the number of completions, or -1 with errno EOVERFLOW once its CQ has
 * overrun.
 *
 * WHAT DIFFERS FROM HARDWARE
 *
 * - Linux only; the peers must share a pid namespace and /proc, and the
 *   initiator must be allowed to open the target's /proc/<pid>/fd (same uid
 *   and a dumpable target, or root).
 * - Remote memory must be a file-backed shared mapping (see above); a peer
 *   that shrinks that file under a registered MR makes the initiator take
 *   SIGBUS, where hardware would report an error.
 * - Copies happen synchronously inside ibv_post_send; completions are
 *   visible as soon as post_send returns, except that a WR whose peer is
 *   unreachable completes with IBV_WC_RETRY_EXC_ERR only after the transport
 *   timeout of its QP, 4.096 us * 2^timeout * (retry_cnt + 1) (timeout 0,
 *   infinite on hardware, and anything longer is capped at 10 s); the later
 *   completions of that QP wait behind it, those of other QPs on the same
 *   CQ do not. There is no receive queue,
 *   no SEND/RECV, atomics, immediate data, completion channels, SRQ, memory
 *   windows or UD; post_recv returns EOPNOTSUPP and req_notify_cq returns
 *   EOPNOTSUPP.
 * - Routing is by GID only: ah_attr.is_global must be 1 with the peer's
 *   emulated GID in grh.dgid; dlid, sl, PSNs and MTU are checked for range
 *   and recorded but play no part. Ordering across QPs is not emulated.
 * - A QP that runs into an error is in the ERR state as soon as post_send
 *   returns, even while its retry-exceeded completion is still delayed.
 * - Zero-length WRs check no rkey (as the IB spec says) and move nothing.
 * - Objects must only be used through tq_emu_verbs() and the inline fast
 *   verbs: passing them to libibverbs library functions is undefined.
 * - A process forked after open_device must not use the parent's contexts.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "tqverbs.h"

#define EMU_NDEV 4
#define EMU_MAGIC 0x5451454d55524547ULL /* "TQEMUREG" */
#define EMU_VERSION 2
#define EMU_MR_BITS 12
#define EMU_MAX_MR (1u << EMU_MR_BITS)
#define EMU_QP_BITS 10
#define EMU_MAX_QP (1u << EMU_QP_BITS)
#define EMU_MAX_QP_WR 16384
#define EMU_MAX_SGE 32
#define EMU_MAX_CQ 4096
#define EMU_MAX_CQE (1 << 20)
#define EMU_MAX_PD 4096
#define EMU_MAX_INLINE 256
#define EMU_MAX_RD_ATOM 16
#define EMU_MAX_MSG (1ull << 31)
#define EMU_MAX_MR_SIZE (1ull << 40)
#define EMU_RKEY_BIT 0x80000000u
#define EMU_TIMEOUT_CAP_NS 10000000000ull
#define EMU_SEQ_TRIES 100000

#define EMU_ACCESS_KNOWN                                                      \
	(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |                   \
	 IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC |                  \
	 IBV_ACCESS_RELAXED_ORDERING)
#define EMU_ACCESS_REMOTE (IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE)

/*
 * The registry, in a memfd shared with whoever opens /proc/<pid>/fd/<fd>.
 * Only the owner writes; the layout is fixed by EMU_VERSION.
 */
struct emu_reg_mr {
	uint32_t seq;		/* odd while the owner writes the slot */
	uint32_t valid;
	uint32_t lkey;
	uint32_t rkey;
	uint32_t pd_id;
	uint32_t access;
	int32_t fd;		/* owner's fd on the backing file; -1: local */
	uint32_t pad;
	uint64_t addr;		/* the MR's address as WRs name it (iova) */
	uint64_t length;
	uint64_t host;		/* owner's virtual address of addr */
	uint64_t dev;		/* st_dev, st_ino of the backing file */
	uint64_t ino;
	uint64_t offset;	/* file offset of addr */
};

struct emu_reg_qp {
	uint32_t seq;		/* odd while the owner writes the slot */
	uint32_t state;		/* 0: free slot; else enum ibv_qp_state + 1 */
	uint32_t qpn;
	uint32_t pd_id;
	uint32_t access;	/* qp_access_flags */
	uint32_t dest_qpn;
	uint32_t max_dest_rd_atomic; /* RDMA READs it serves at once */
	uint8_t dest_gid[16];
};

struct emu_reg {
	uint64_t magic;
	uint32_t version;
	uint32_t pid;
	uint32_t open;		/* 1 from open_device until close_device */
	uint32_t max_mr;
	uint32_t max_qp;
	uint32_t pad;
	struct emu_reg_mr mr[EMU_MAX_MR];
	struct emu_reg_qp qp[EMU_MAX_QP];
};

struct emu_device {
	struct ibv_device ibdev;
};

/* A peer's registry, shared by the QPs of a context attached to it. */
struct emu_peer {
	struct emu_peer *next;
	int refs;
	pid_t pid;
	int pidfd;			/* -1: use kill(pid, 0) */
	dev_t dev;			/* of the registry file */
	ino_t ino;
	const struct emu_reg *reg;	/* NULL: peer was gone at attach */
	size_t reglen;
};

/* A mapping of a peer's backing file (its remote-accessible memory). */
struct emu_rmap {
	struct emu_rmap *next;
	pid_t pid;
	dev_t dev;
	ino_t ino;
	uint8_t *base;
	size_t len;
	bool writable;
};

struct emu_context {
	struct ibv_context ibctx;
	pthread_mutex_t lock;		/* everything below but rmaps */
	pthread_rwlock_t rmap_lock;	/* rmaps */
	int regfd;
	struct emu_reg *reg;
	size_t reglen;
	union ibv_gid gid;
	uint16_t lid;
	uint32_t next_pd_id;
	int npd, nmr, ncq, nqp;
	unsigned int mr_hint, qp_hint;
	struct emu_mr *mrs[EMU_MAX_MR];
	struct emu_qp *qps[EMU_MAX_QP];
	struct emu_peer *peers;
	struct emu_rmap *rmaps;
	int any_fault;			/* atomic: a fault below is armed */
	int fault_post_count, fault_post_after, fault_post_err;
	int fault_comp_count, fault_comp_err;
	int fault_overrun;		/* atomic */
	int fault_reg_count, fault_reg_err;
	/* max_qp_rd_atom, max_qp_init_rd_atom: the device's at open
	 * (tq_emu_set_rd_atom). */
	int max_rd_atom, max_init_rd_atom;
};

struct emu_pd {
	struct ibv_pd ibpd;
	uint32_t id;
	int nmr, nqp;			/* under the context lock */
};

struct emu_mr {
	struct ibv_mr ibmr;
	unsigned int slot;
	int fd;				/* our dup of the backing fd, or -1 */
	void *map;			/* reg_dmabuf_mr: our mapping, or NULL */
	size_t maplen;
};

struct emu_cqe {
	struct ibv_wc wc;
	uint64_t ready_ns;		/* 0: ready now; else not before */
	struct emu_qp *qp;
	uint64_t seq;			/* the WR's post number on its QP */
};

struct emu_cq {
	struct ibv_cq ibcq;
	pthread_mutex_t lock;
	struct emu_cqe *ring;
	uint32_t cap;			/* a power of two */
	uint32_t head, count;
	uint32_t ndelayed;		/* entries with ready_ns != 0 */
	int overrun;			/* atomic */
	int nqp;			/* under the context lock */
};

struct emu_qp {
	struct ibv_qp ibqp;
	pthread_mutex_t lock;		/* everything below */
	unsigned int slot;
	struct emu_pd *pd;
	struct emu_cq *send_cq, *recv_cq;
	struct ibv_qp_cap cap;
	int sq_sig_all;
	enum ibv_qp_state state;
	struct ibv_qp_attr attr;	/* last values set by modify_qp */
	uint64_t timeout_ns;
	uint64_t last_ready_ns;		/* ready time of its latest entry */
	struct emu_peer *peer;
	uint64_t posted;		/* WRs accepted */
	uint64_t retired;		/* atomic: post number polled */
};

/* Per post_send call. */
struct emu_post {
	int alive;			/* -1 unknown, 0 dead, 1 alive */
	uint8_t *host[EMU_MAX_SGE];
};

static int emu_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
			 struct ibv_send_wr **bad_wr);

static struct emu_device emu_devices[EMU_NDEV] = {
#define EMU_DEV(n)                                                            \
	{ .ibdev = { .node_type = IBV_NODE_CA,                                \
		     .transport_type = IBV_TRANSPORT_IB,                      \
		     .name = "emu" #n,                                        \
		     .dev_name = "uverbs-emu" #n,                             \
		     .dev_path = "/nonexistent/tq-emu/uverbs-emu" #n,         \
		     .ibdev_path = "/nonexistent/tq-emu/emu" #n } }
	EMU_DEV(0), EMU_DEV(1), EMU_DEV(2), EMU_DEV(3),
#undef EMU_DEV
};

/* Live objects of the process, for tq_emu_counts. */
static int emu_live_contexts, emu_live_pds, emu_live_mrs, emu_live_cqs,
	emu_live_qps, emu_live_rmaps;
static uint32_t emu_key_gen, emu_qpn_gen;

static void emu_count(int *counter, int delta)
{
	__atomic_add_fetch(counter, delta, __ATOMIC_RELAXED);
}

static int emu_fail(int err)
{
	errno = err;
	return err;
}

static uint64_t emu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- seqlock on registry slots (first member of a slot is its seq) ---- */

static void emu_seq_begin(uint32_t *seq)
{
	__atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

static void emu_seq_end(uint32_t *seq)
{
	__atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_RELEASE);
}

/*
 * Copies a slot consistently. A writer that died mid-write leaves the slot
 * odd forever: after EMU_SEQ_TRIES the slot reads as absent.
 */
static bool emu_seq_read(const void *slot, void *out, size_t len)
{
	const uint32_t *seq = slot;
	int i;

	for (i = 0; i < EMU_SEQ_TRIES; i++) {
		uint32_t s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);

		if (s1 & 1) {
			sched_yield();
			continue;
		}
		memcpy(out, slot, len);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(seq, __ATOMIC_RELAXED) == s1)
			return true;
	}
	return false;
}

/* ---- object lookups ---- */

static struct emu_context *emu_ctx(struct ibv_context *ibctx)
{
	if (!ibctx || ibctx->ops.post_send != emu_post_send)
		return NULL;
	return (struct emu_context *)ibctx;
}

static struct emu_pd *emu_pd_of(struct ibv_pd *ibpd)
{
	if (!ibpd || !emu_ctx(ibpd->context))
		return NULL;
	return (struct emu_pd *)ibpd;
}

static struct emu_cq *emu_cq_of(struct ibv_cq *ibcq)
{
	if (!ibcq || !emu_ctx(ibcq->context))
		return NULL;
	return (struct emu_cq *)ibcq;
}

static struct emu_qp *emu_qp_of(struct ibv_qp *ibqp)
{
	if (!ibqp || !emu_ctx(ibqp->context))
		return NULL;
	return (struct emu_qp *)ibqp;
}

/* Per device: max_qp_rd_atom and max_qp_init_rd_atom for contexts opened
 * from now on (tq_emu_set_rd_atom); 0: EMU_MAX_RD_ATOM. */
static int emu_rd_atom[EMU_NDEV], emu_init_rd_atom[EMU_NDEV];

static int emu_dev_index(struct ibv_device *dev)
{
	int i;

	for (i = 0; i < EMU_NDEV; i++)
		if (dev == &emu_devices[i].ibdev)
			return i;
	return -1;
}

/* ---- devices ---- */

static struct ibv_device **emu_get_device_list(int *num)
{
	struct ibv_device **list = calloc(EMU_NDEV + 1, sizeof(*list));
	int i;

	if (!list)
		return NULL;
	for (i = 0; i < EMU_NDEV; i++)
		list[i] = &emu_devices[i].ibdev;
	if (num)
		*num = EMU_NDEV;
	return list;
}

static void emu_free_device_list(struct ibv_device **list)
{
	free(list);
}

static const char *emu_get_device_name(struct ibv_device *dev)
{
	if (emu_dev_index(dev) < 0) {
		errno = ENODEV;
		return NULL;
	}
	return dev->name;
}

static int emu_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
			 struct ibv_recv_wr **bad_wr)
{
	(void)qp;
	*bad_wr = wr;
	return emu_fail(EOPNOTSUPP);
}

static int emu_req_notify_cq(struct ibv_cq *cq, int solicited_only)
{
	(void)cq;
	(void)solicited_only;
	return emu_fail(EOPNOTSUPP);
}

static int emu_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc);

static struct ibv_context *emu_open_device(struct ibv_device *dev)
{
	struct emu_context *ctx;
	long page = sysconf(_SC_PAGESIZE);
	pid_t pid = getpid();
	unsigned int i;
	int idx = emu_dev_index(dev), err;

	if (idx < 0) {
		errno = ENODEV;
		return NULL;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return NULL;
	ctx->regfd = memfd_create("tq-emu-registry", MFD_CLOEXEC);
	if (ctx->regfd < 0)
		goto err_free;
	ctx->reglen = (sizeof(struct emu_reg) + page - 1) & ~(size_t)(page - 1);
	if (ftruncate(ctx->regfd, ctx->reglen))
		goto err_close;
	ctx->reg = mmap(NULL, ctx->reglen, PROT_READ | PROT_WRITE, MAP_SHARED,
			ctx->regfd, 0);
	if (ctx->reg == MAP_FAILED)
		goto err_close;
	ctx->reg->magic = EMU_MAGIC;
	ctx->reg->version = EMU_VERSION;
	ctx->reg->pid = (uint32_t)pid;
	ctx->reg->max_mr = EMU_MAX_MR;
	ctx->reg->max_qp = EMU_MAX_QP;
	for (i = 0; i < EMU_MAX_MR; i++)
		ctx->reg->mr[i].fd = -1;
	__atomic_store_n(&ctx->reg->open, 1, __ATOMIC_RELEASE);

	ctx->gid.raw[0] = 0xfe;
	ctx->gid.raw[1] = 0x80;
	for (i = 0; i < 4; i++) {
		ctx->gid.raw[8 + i] = (uint8_t)((uint32_t)pid >> (24 - 8 * i));
		ctx->gid.raw[12 + i] =
			(uint8_t)((uint32_t)ctx->regfd >> (24 - 8 * i));
	}
	ctx->lid = (uint16_t)((uint32_t)pid % 0xbfff + 1);
	ctx->max_rd_atom = __atomic_load_n(&emu_rd_atom[idx], __ATOMIC_RELAXED);
	if (!ctx->max_rd_atom)
		ctx->max_rd_atom = EMU_MAX_RD_ATOM;
	ctx->max_init_rd_atom =
		__atomic_load_n(&emu_init_rd_atom[idx], __ATOMIC_RELAXED);
	if (!ctx->max_init_rd_atom)
		ctx->max_init_rd_atom = EMU_MAX_RD_ATOM;
	ctx->next_pd_id = 1;
	pthread_mutex_init(&ctx->lock, NULL);
	pthread_rwlock_init(&ctx->rmap_lock, NULL);

	ctx->ibctx.device = dev;
	ctx->ibctx.ops.post_send = emu_post_send;
	ctx->ibctx.ops.post_recv = emu_post_recv;
	ctx->ibctx.ops.poll_cq = emu_poll_cq;
	ctx->ibctx.ops.req_notify_cq = emu_req_notify_cq;
	ctx->ibctx.cmd_fd = -1;
	ctx->ibctx.async_fd = -1;
	ctx->ibctx.num_comp_vectors = 1;
	ctx->ibctx.abi_compat = NULL; /* not an extended verbs_context */
	pthread_mutex_init(&ctx->ibctx.mutex, NULL);
	emu_count(&emu_live_contexts, 1);
	return &ctx->ibctx;

err_close:
	err = errno;
	close(ctx->regfd);
	errno = err;
err_free:
	err = errno;
	free(ctx);
	errno = err;
	return NULL;
}

static void emu_rmaps_drop(struct emu_context *ctx, pid_t pid, bool all)
{
	struct emu_rmap **pp = &ctx->rmaps, *m;

	pthread_rwlock_wrlock(&ctx->rmap_lock);
	while ((m = *pp)) {
		if (all || m->pid == pid) {
			*pp = m->next;
			munmap(m->base, m->len);
			free(m);
			emu_count(&emu_live_rmaps, -1);
		} else {
			pp = &m->next;
		}
	}
	pthread_rwlock_unlock(&ctx->rmap_lock);
}

static int emu_close_device(struct ibv_context *ibctx)
{
	struct emu_context *ctx = emu_ctx(ibctx);

	if (!ctx)
		return emu_fail(EINVAL);
	pthread_mutex_lock(&ctx->lock);
	if (ctx->npd || ctx->nmr || ctx->ncq || ctx->nqp || ctx->peers) {
		pthread_mutex_unlock(&ctx->lock);
		return emu_fail(EBUSY);
	}
	pthread_mutex_unlock(&ctx->lock);
	__atomic_store_n(&ctx->reg->open, 0, __ATOMIC_RELEASE);
	emu_rmaps_drop(ctx, 0, true);
	munmap(ctx->reg, ctx->reglen);
	close(ctx->regfd);
	pthread_rwlock_destroy(&ctx->rmap_lock);
	pthread_mutex_destroy(&ctx->lock);
	pthread_mutex_destroy(&ctx->ibctx.mutex);
	free(ctx);
	emu_count(&emu_live_contexts, -1);
	return 0;
}

static int emu_query_device(struct ibv_context *ibctx,
			    struct ibv_device_attr *attr)
{
	struct emu_context *ctx = emu_ctx(ibctx);
	uint64_t guid;

	if (!ctx || !attr)
		return emu_fail(EINVAL);
	guid = 0x0200000000000000ull | ((uint64_t)ctx->reg->pid << 16) |
	       (uint64_t)emu_dev_index(ibctx->device);
	*attr = (struct ibv_device_attr){
		.fw_ver = "tq-emu 1",
		.node_guid = htobe64(guid),
		.sys_image_guid = htobe64(guid),
		.max_mr_size = EMU_MAX_MR_SIZE,
		.page_size_cap = 0xfffff000,
		.vendor_id = 0,
		.vendor_part_id = 0,
		.hw_ver = 1,
		.max_qp = EMU_MAX_QP,
		.max_qp_wr = EMU_MAX_QP_WR,
		.device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN,
		.max_sge = EMU_MAX_SGE,
		.max_sge_rd = EMU_MAX_SGE,
		.max_cq = EMU_MAX_CQ,
		.max_cqe = EMU_MAX_CQE,
		.max_mr = EMU_MAX_MR,
		.max_pd = EMU_MAX_PD,
		.max_qp_rd_atom = ctx->max_rd_atom,
		.max_res_rd_atom = ctx->max_rd_atom * EMU_MAX_QP,
		.max_qp_init_rd_atom = ctx->max_init_rd_atom,
		.atomic_cap = IBV_ATOMIC_NONE,
		.max_pkeys = 1,
		.local_ca_ack_delay = 16,
		.phys_port_cnt = 1,
	};
	return 0;
}

static int emu_query_port(struct ibv_context *ibctx, uint8_t port,
			  struct ibv_port_attr *attr)
{
	struct emu_context *ctx = emu_ctx(ibctx);

	if (!ctx || !attr || port != 1)
		return emu_fail(EINVAL);
	*attr = (struct ibv_port_attr){
		.state = IBV_PORT_ACTIVE,
		.max_mtu = IBV_MTU_4096,
		.active_mtu = IBV_MTU_4096,
		.gid_tbl_len = 1,
		.max_msg_sz = (uint32_t)EMU_MAX_MSG,
		.pkey_tbl_len = 1,
		.lid = ctx->lid,
		.sm_lid = 1,
		.max_vl_num = 1,
		.active_width = 2,	/* 4x */
		.active_speed = 32,	/* EDR */
		.phys_state = 5,	/* LinkUp */
		.link_layer = IBV_LINK_LAYER_INFINIBAND,
	};
	return 0;
}

static int emu_query_gid(struct ibv_context *ibctx, uint8_t port, int index,
			 union ibv_gid *gid)
{
	struct emu_context *ctx = emu_ctx(ibctx);

	if (!ctx || !gid || port != 1 || index != 0)
		return emu_fail(EINVAL);
	*gid = ctx->gid;
	return 0;
}

/* ---- protection domains ---- */

static struct ibv_pd *emu_alloc_pd(struct ibv_context *ibctx)
{
	struct emu_context *ctx = emu_ctx(ibctx);
	struct emu_pd *pd;

	if (!ctx) {
		errno = EINVAL;
		return NULL;
	}
	pd = calloc(1, sizeof(*pd));
	if (!pd)
		return NULL;
	pthread_mutex_lock(&ctx->lock);
	if (ctx->npd >= EMU_MAX_PD) {
		pthread_mutex_unlock(&ctx->lock);
		free(pd);
		errno = ENOMEM;
		return NULL;
	}
	pd->id = ctx->next_pd_id++;
	ctx->npd++;
	pthread_mutex_unlock(&ctx->lock);
	pd->ibpd.context = ibctx;
	pd->ibpd.handle = pd->id;
	emu_count(&emu_live_pds, 1);
	return &pd->ibpd;
}

static int emu_dealloc_pd(struct ibv_pd *ibpd)
{
	struct emu_pd *pd = emu_pd_of(ibpd);
	struct emu_context *ctx;

	if (!pd)
		return emu_fail(EINVAL);
	ctx = emu_ctx(ibpd->context);
	pthread_mutex_lock(&ctx->lock);
	if (pd->nmr || pd->nqp) {
		pthread_mutex_unlock(&ctx->lock);
		return emu_fail(EBUSY);
	}
	ctx->npd--;
	pthread_mutex_unlock(&ctx->lock);
	free(pd);
	emu_count(&emu_live_pds, -1);
	return 0;
}

/* ---- memory regions ---- */

struct emu_backing {
	int fd;			/* our dup, or -1 */
	uint64_t dev, ino, offset;
};

/*
 * Finds the file behind [addr, addr+len) in /proc/self/maps (one shared
 * file mapping, possibly split in several contiguous VMAs) and an fd of this
 * process open on it; dups that fd into b->fd.
 */
static int emu_find_backing(uintptr_t addr, size_t len, struct emu_backing *b)
{
	unsigned long start, end, off, ino, want_end = 0, want_ino = 0;
	unsigned int maj, min, want_maj = 0, want_min = 0;
	uint64_t file_off = 0, need = (uint64_t)addr + len;
	char perms[8], *line = NULL;
	size_t cap = 0;
	bool found = false, done = false;
	struct dirent *de;
	struct stat st;
	FILE *f;
	DIR *d;
	int fd;

	f = fopen("/proc/self/maps", "re");
	if (!f)
		return errno;
	while (!done && getline(&line, &cap, f) > 0) {
		if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &start, &end,
			   perms, &off, &maj, &min, &ino) != 7)
			continue;
		if (!found) {
			if (addr < start || addr >= end)
				continue;
			if (perms[3] != 's' || ino == 0)
				break;
			found = true;
			want_maj = maj;
			want_min = min;
			want_ino = ino;
			file_off = off + (addr - start);
			want_end = end;
			done = need <= end;
			continue;
		}
		/* A continuation must be the next VMA of the same file. */
		if (start != want_end || perms[3] != 's' || ino != want_ino ||
		    maj != want_maj || min != want_min ||
		    off != file_off + (start - addr))
			break;
		want_end = end;
		done = need <= end;
	}
	free(line);
	fclose(f);
	if (!found || !done)
		return EINVAL;

	d = opendir("/proc/self/fd");
	if (!d)
		return errno;
	b->fd = -1;
	while ((de = readdir(d))) {
		char *endp;
		long n = strtol(de->d_name, &endp, 10);

		if (*endp || endp == de->d_name || n == dirfd(d))
			continue;
		if (fstat((int)n, &st) || !S_ISREG(st.st_mode))
			continue;
		if (st.st_ino != want_ino ||
		    st.st_dev != makedev(want_maj, want_min))
			continue;
		if ((uint64_t)st.st_size < file_off + len)
			break;
		fd = fcntl((int)n, F_DUPFD_CLOEXEC, 0);
		if (fd >= 0) {
			b->fd = fd;
			b->dev = st.st_dev;
			b->ino = st.st_ino;
			b->offset = file_off;
		}
		break;
	}
	closedir(d);
	return b->fd >= 0 ? 0 : EINVAL;
}

static int emu_check_access(int access)
{
	if (access & ~EMU_ACCESS_KNOWN)
		return EINVAL;
	if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) &&
	    !(access & IBV_ACCESS_LOCAL_WRITE))
		return EINVAL;
	return 0;
}

/* Publishes mr (whose fd/map fields are set) in a free slot. */
static int emu_mr_publish(struct emu_pd *pd, struct emu_mr *mr, uint64_t addr,
			  uint64_t host, size_t length, int access,
			  const struct emu_backing *b)
{
	struct emu_context *ctx = emu_ctx(pd->ibpd.context);
	struct emu_reg_mr *s;
	uint32_t gen, lkey;
	unsigned int i, idx;

	pthread_mutex_lock(&ctx->lock);
	for (i = 0; i < EMU_MAX_MR; i++) {
		idx = (ctx->mr_hint + i) % EMU_MAX_MR;
		if (!ctx->mrs[idx])
			break;
	}
	if (i == EMU_MAX_MR) {
		pthread_mutex_unlock(&ctx->lock);
		return ENOMEM;
	}
	ctx->mr_hint = idx + 1;
	gen = __atomic_add_fetch(&emu_key_gen, 1, __ATOMIC_RELAXED) %
		      ((1u << (31 - EMU_MR_BITS)) - 1) + 1;
	lkey = gen << EMU_MR_BITS | idx;
	mr->slot = idx;
	mr->ibmr = (struct ibv_mr){
		.context = pd->ibpd.context,
		.pd = &pd->ibpd,
		.addr = (void *)(uintptr_t)addr,
		.length = length,
		.handle = idx,
		.lkey = lkey,
		.rkey = lkey | EMU_RKEY_BIT,
	};
	s = &ctx->reg->mr[idx];
	emu_seq_begin(&s->seq);
	s->valid = 1;
	s->lkey = mr->ibmr.lkey;
	s->rkey = mr->ibmr.rkey;
	s->pd_id = pd->id;
	s->access = (uint32_t)access;
	s->fd = b ? b->fd : -1;
	s->addr = addr;
	s->length = length;
	s->host = host;
	s->dev = b ? b->dev : 0;
	s->ino = b ? b->ino : 0;
	s->offset = b ? b->offset : 0;
	emu_seq_end(&s->seq);
	ctx->mrs[idx] = mr;
	ctx->nmr++;
	pd->nmr++;
	pthread_mutex_unlock(&ctx->lock);
	emu_count(&emu_live_mrs, 1);
	return 0;
}

/* emu_reg_fault returns the errno an armed TQ_EMU_FAULT_REG_MR fails this
 * registration with, or 0. */
static int emu_reg_fault(struct emu_pd *pd)
{
	struct emu_context *ctx = emu_ctx(pd->ibpd.context);
	int err = 0;

	pthread_mutex_lock(&ctx->lock);
	if (ctx->fault_reg_count > 0) {
		ctx->fault_reg_count--;
		err = ctx->fault_reg_err;
	}
	pthread_mutex_unlock(&ctx->lock);
	return err;
}

static struct ibv_mr *emu_reg_mr(struct ibv_pd *ibpd, void *addr,
				 size_t length, int access)
{
	struct emu_pd *pd = emu_pd_of(ibpd);
	struct emu_backing b = { .fd = -1 };
	struct emu_mr *mr;
	int err;

	if (!pd || length == 0 || length > EMU_MAX_MR_SIZE ||
	    (uintptr_t)addr + length < (uintptr_t)addr) {
		errno = EINVAL;
		return NULL;
	}
	err = emu_check_access(access);
	if (!err)
		err = emu_reg_fault(pd);
	if (err)
		goto err_out;
	if (access & EMU_ACCESS_REMOTE) {
		err = emu_find_backing((uintptr_t)addr, length, &b);
		if (err)
			goto err_out;
	}
	mr = calloc(1, sizeof(*mr));
	if (!mr) {
		err = ENOMEM;
		goto err_close;
	}
	mr->fd = b.fd;
	err = emu_mr_publish(pd, mr, (uintptr_t)addr, (uintptr_t)addr, length,
			     access, b.fd >= 0 ? &b : NULL);
	if (err)
		goto err_free;
	return &mr->ibmr;

err_free:
	free(mr);
err_close:
	if (b.fd >= 0)
		close(b.fd);
err_out:
	errno = err;
	return NULL;
}

static struct ibv_mr *emu_reg_dmabuf_mr(struct ibv_pd *ibpd, uint64_t offset,
					size_t length, uint64_t iova, int fd,
					int access)
{
	struct emu_pd *pd = emu_pd_of(ibpd);
	struct emu_backing b = { .fd = -1 };
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), pgoff;
	struct emu_mr *mr;
	struct stat st;
	int err, prot = PROT_READ;

	if (!pd || length == 0 || length > EMU_MAX_MR_SIZE || fd < 0 ||
	    offset + length < offset || iova + length < iova) {
		errno = EINVAL;
		return NULL;
	}
	err = emu_check_access(access);
	if (!err)
		err = emu_reg_fault(pd);
	if (err)
		goto err_out;
	if (fstat(fd, &st)) {
		err = errno;
		goto err_out;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset + length) {
		err = EINVAL;
		goto err_out;
	}
	mr = calloc(1, sizeof(*mr));
	if (!mr) {
		err = ENOMEM;
		goto err_out;
	}
	b.fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (b.fd < 0) {
		err = errno;
		goto err_free;
	}
	b.dev = st.st_dev;
	b.ino = st.st_ino;
	b.offset = offset;
	pgoff = offset & ~(page - 1);
	mr->maplen = length + (offset - pgoff);
	if (access & IBV_ACCESS_LOCAL_WRITE)
		prot |= PROT_WRITE;
	mr->map = mmap(NULL, mr->maplen, prot, MAP_SHARED, b.fd, (off_t)pgoff);
	if (mr->map == MAP_FAILED) {
		err = errno;
		goto err_close;
	}
	mr->fd = b.fd;
	err = emu_mr_publish(pd, mr, iova,
			     (uintptr_t)mr->map + (offset - pgoff), length,
			     access, &b);
	if (err)
		goto err_unmap;
	return &mr->ibmr;

err_unmap:
	munmap(mr->map, mr->maplen);
err_close:
	close(b.fd);
err_free:
	free(mr);
err_out:
	errno = err;
	return NULL;
}

static int emu_dereg_mr(struct ibv_mr *ibmr)
{
	struct emu_context *ctx = ibmr ? emu_ctx(ibmr->context) : NULL;
	struct emu_mr *mr = (struct emu_mr *)ibmr;
	struct emu_reg_mr *s;

	if (!ctx)
		return emu_fail(EINVAL);
	pthread_mutex_lock(&ctx->lock);
	if (mr->slot >= EMU_MAX_MR || ctx->mrs[mr->slot] != mr) {
		pthread_mutex_unlock(&ctx->lock);
		return emu_fail(EINVAL);
	}
	s = &ctx->reg->mr[mr->slot];
	emu_seq_begin(&s->seq);
	s->valid = 0;
	s->fd = -1;
	emu_seq_end(&s->seq);
	ctx->mrs[mr->slot] = NULL;
	ctx->nmr--;
	((struct emu_pd *)ibmr->pd)->nmr--;
	pthread_mutex_unlock(&ctx->lock);
	if (mr->map)
		munmap(mr->map, mr->maplen);
	if (mr->fd >= 0)
		close(mr->fd);
	free(mr);
	emu_count(&emu_live_mrs, -1);
	return 0;
}

/* ---- completion queues ---- */

static struct ibv_cq *emu_create_cq(struct ibv_context *ibctx, int cqe,
				    void *cq_context,
				    struct ibv_comp_channel *channel,
				    int comp_vector)
{
	struct emu_context *ctx = emu_ctx(ibctx);
	struct emu_cq *cq;
	uint32_t cap = 1;
	int err;

	if (!ctx || cqe < 1 || cqe > EMU_MAX_CQE || comp_vector != 0) {
		errno = EINVAL;
		return NULL;
	}
	if (channel) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	while (cap < (uint32_t)cqe)
		cap <<= 1;
	cq = calloc(1, sizeof(*cq));
	if (!cq)
		return NULL;
	cq->ring = calloc(cap, sizeof(*cq->ring));
	if (!cq->ring)
		goto err_free;
	pthread_mutex_lock(&ctx->lock);
	if (ctx->ncq >= EMU_MAX_CQ) {
		pthread_mutex_unlock(&ctx->lock);
		errno = ENOMEM;
		goto err_ring;
	}
	ctx->ncq++;
	pthread_mutex_unlock(&ctx->lock);
	cq->cap = cap;
	pthread_mutex_init(&cq->lock, NULL);
	cq->ibcq.context = ibctx;
	cq->ibcq.cq_context = cq_context;
	cq->ibcq.cqe = (int)cap;
	pthread_mutex_init(&cq->ibcq.mutex, NULL);
	pthread_cond_init(&cq->ibcq.cond, NULL);
	emu_count(&emu_live_cqs, 1);
	return &cq->ibcq;

err_ring:
	free(cq->ring);
err_free:
	err = errno;
	free(cq);
	errno = err;
	return NULL;
}

static int emu_destroy_cq(struct ibv_cq *ibcq)
{
	struct emu_cq *cq = emu_cq_of(ibcq);
	struct emu_context *ctx;

	if (!cq)
		return emu_fail(EINVAL);
	ctx = emu_ctx(ibcq->context);
	pthread_mutex_lock(&ctx->lock);
	if (cq->nqp) {
		pthread_mutex_unlock(&ctx->lock);
		return emu_fail(EBUSY);
	}
	ctx->ncq--;
	pthread_mutex_unlock(&ctx->lock);
	pthread_cond_destroy(&cq->ibcq.cond);
	pthread_mutex_destroy(&cq->ibcq.mutex);
	pthread_mutex_destroy(&cq->lock);
	free(cq->ring);
	free(cq);
	emu_count(&emu_live_cqs, -1);
	return 0;
}

/*
 * Completions leave in ring order, except that an entry whose ready time
 * has not come stays, and so do the entries behind it of the same QP
 * (their ready times are never earlier, see emu_push): order is kept per
 * QP, as on hardware, and one QP waiting out a transport timeout does not
 * hold back the others sharing its CQ.
 */
static int emu_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc)
{
	struct emu_cq *cq = (struct emu_cq *)ibcq;
	uint32_t i, kept = 0, count, mask = cq->cap - 1;
	uint64_t now;
	int got = 0;

	if (n < 0) {
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&cq->lock);
	if (__atomic_load_n(&cq->overrun, __ATOMIC_RELAXED)) {
		pthread_mutex_unlock(&cq->lock);
		errno = EOVERFLOW;
		return -1;
	}
	if (!cq->ndelayed) {
		while (got < n && cq->count) {
			struct emu_cqe *e = &cq->ring[cq->head];

			wc[got++] = e->wc;
			__atomic_store_n(&e->qp->retired, e->seq,
					 __ATOMIC_RELEASE);
			cq->head = (cq->head + 1) & mask;
			cq->count--;
		}
		goto out;
	}
	now = emu_now_ns();
	count = cq->count;
	for (i = 0; i < count; i++) {
		struct emu_cqe *e = &cq->ring[(cq->head + i) & mask];

		if (got < n && e->ready_ns <= now) {
			wc[got++] = e->wc;
			__atomic_store_n(&e->qp->retired, e->seq,
					 __ATOMIC_RELEASE);
			if (e->ready_ns)
				cq->ndelayed--;
			continue;
		}
		if (kept != i)
			cq->ring[(cq->head + kept) & mask] = *e;
		kept++;
	}
	cq->count = kept;
out:
	pthread_mutex_unlock(&cq->lock);
	return got;
}

/* Removes the entries of qp from cq, keeping the order of the others. */
static void emu_cq_purge(struct emu_cq *cq, struct emu_qp *qp)
{
	uint32_t i, kept = 0, mask = cq->cap - 1;

	pthread_mutex_lock(&cq->lock);
	for (i = 0; i < cq->count; i++) {
		struct emu_cqe *e = &cq->ring[(cq->head + i) & mask];

		if (e->qp == qp) {
			if (e->ready_ns)
				cq->ndelayed--;
			continue;
		}
		cq->ring[(cq->head + kept) & mask] = *e;
		kept++;
	}
	cq->count = kept;
	pthread_mutex_unlock(&cq->lock);
}

/* ---- queue pairs ---- */

static void emu_qp_publish(struct emu_qp *qp)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);
	struct emu_reg_qp *s = &ctx->reg->qp[qp->slot];

	emu_seq_begin(&s->seq);
	s->state = (uint32_t)qp->state + 1;
	s->qpn = qp->ibqp.qp_num;
	s->pd_id = qp->pd->id;
	s->access = qp->attr.qp_access_flags;
	s->dest_qpn = qp->attr.dest_qp_num;
	s->max_dest_rd_atomic = qp->attr.max_dest_rd_atomic;
	memcpy(s->dest_gid, qp->attr.ah_attr.grh.dgid.raw, 16);
	emu_seq_end(&s->seq);
}

/* Under qp->lock. */
static void emu_qp_set_state(struct emu_qp *qp, enum ibv_qp_state state)
{
	qp->state = state;
	qp->ibqp.state = state;
	emu_qp_publish(qp);
}

/* Under qp->lock: a QP whose CQ has overrun is in the error state. */
static void emu_qp_sync(struct emu_qp *qp)
{
	if (qp->state != IBV_QPS_RESET && qp->state != IBV_QPS_ERR &&
	    __atomic_load_n(&qp->send_cq->overrun, __ATOMIC_RELAXED))
		emu_qp_set_state(qp, IBV_QPS_ERR);
}

static struct ibv_qp *emu_create_qp(struct ibv_pd *ibpd,
				    struct ibv_qp_init_attr *init)
{
	struct emu_pd *pd = emu_pd_of(ibpd);
	struct emu_context *ctx;
	struct emu_cq *scq, *rcq;
	struct emu_qp *qp;
	unsigned int i, idx;
	uint32_t gen;

	if (!pd || !init) {
		errno = EINVAL;
		return NULL;
	}
	if (init->qp_type != IBV_QPT_RC || init->srq) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	ctx = emu_ctx(ibpd->context);
	scq = emu_cq_of(init->send_cq);
	rcq = init->recv_cq ? emu_cq_of(init->recv_cq) : scq;
	if (!scq || !rcq || scq->ibcq.context != ibpd->context ||
	    rcq->ibcq.context != ibpd->context ||
	    init->cap.max_send_wr > EMU_MAX_QP_WR ||
	    init->cap.max_recv_wr > EMU_MAX_QP_WR ||
	    init->cap.max_send_sge > EMU_MAX_SGE ||
	    init->cap.max_recv_sge > EMU_MAX_SGE ||
	    init->cap.max_inline_data > EMU_MAX_INLINE) {
		errno = EINVAL;
		return NULL;
	}
	qp = calloc(1, sizeof(*qp));
	if (!qp)
		return NULL;
	pthread_mutex_lock(&ctx->lock);
	for (i = 0; i < EMU_MAX_QP; i++) {
		idx = (ctx->qp_hint + i) % EMU_MAX_QP;
		if (!ctx->qps[idx])
			break;
	}
	if (i == EMU_MAX_QP) {
		pthread_mutex_unlock(&ctx->lock);
		free(qp);
		errno = ENOMEM;
		return NULL;
	}
	ctx->qp_hint = idx + 1;
	gen = __atomic_add_fetch(&emu_qpn_gen, 1, __ATOMIC_RELAXED) %
		      ((1u << (24 - EMU_QP_BITS)) - 1) + 1;
	pthread_mutex_init(&qp->lock, NULL);
	qp->slot = idx;
	qp->pd = pd;
	qp->send_cq = scq;
	qp->recv_cq = rcq;
	qp->cap = init->cap;
	qp->sq_sig_all = init->sq_sig_all;
	qp->state = IBV_QPS_RESET;
	qp->ibqp.context = ibpd->context;
	qp->ibqp.qp_context = init->qp_context;
	qp->ibqp.pd = ibpd;
	qp->ibqp.send_cq = &scq->ibcq;
	qp->ibqp.recv_cq = &rcq->ibcq;
	qp->ibqp.handle = idx;
	qp->ibqp.qp_num = gen << EMU_QP_BITS | idx;
	qp->ibqp.state = IBV_QPS_RESET;
	qp->ibqp.qp_type = IBV_QPT_RC;
	pthread_mutex_init(&qp->ibqp.mutex, NULL);
	pthread_cond_init(&qp->ibqp.cond, NULL);
	emu_qp_publish(qp);
	ctx->qps[idx] = qp;
	ctx->nqp++;
	pd->nqp++;
	scq->nqp++;
	rcq->nqp++;
	pthread_mutex_unlock(&ctx->lock);
	emu_count(&emu_live_qps, 1);
	return &qp->ibqp;
}

/* A pidfd, readable once the process has exited; -1 if unsupported. */
static int emu_pidfd_open(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int)syscall(SYS_pidfd_open, pid, 0);
#else
	(void)pid;
	return -1;
#endif
}

/* Under the context lock. */
static void emu_peer_put(struct emu_context *ctx, struct emu_peer *peer)
{
	struct emu_peer **pp, *p;
	pid_t pid = peer->pid;

	if (--peer->refs)
		return;
	for (pp = &ctx->peers; *pp != peer; pp = &(*pp)->next)
		;
	*pp = peer->next;
	if (peer->reg) {
		munmap((void *)peer->reg, peer->reglen);
		emu_count(&emu_live_rmaps, -1);
	}
	if (peer->pidfd >= 0)
		close(peer->pidfd);
	free(peer);
	for (p = ctx->peers; p; p = p->next)
		if (p->pid == pid)
			return;
	/* No QP of ours talks to that process any more. */
	emu_rmaps_drop(ctx, pid, false);
}

/*
 * Under the context lock: attaches to the registry the GID names. A GID of
 * another form is EINVAL; a process or registry fd that no longer exists is
 * a peer that is gone (a peer with reg NULL: its WRs are lost packets).
 */
static int emu_peer_get(struct emu_context *ctx, const union ibv_gid *gid,
			struct emu_peer **out)
{
	static const uint8_t prefix[8] = { 0xfe, 0x80 };
	struct emu_peer *peer, *p;
	struct stat st, st2;
	char path[64];
	uint32_t pid = 0, fdn = 0;
	void *map;
	int i, fd, err;

	if (memcmp(gid->raw, prefix, 8))
		return EINVAL;
	for (i = 0; i < 4; i++) {
		pid = pid << 8 | gid->raw[8 + i];
		fdn = fdn << 8 | gid->raw[12 + i];
	}
	if (pid == 0 || pid > INT_MAX || fdn > INT_MAX)
		return EINVAL;
	peer = calloc(1, sizeof(*peer));
	if (!peer)
		return ENOMEM;
	peer->refs = 1;
	peer->pid = (pid_t)pid;
	peer->pidfd = -1;
	snprintf(path, sizeof(path), "/proc/%u/fd/%u", pid, fdn);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		if (err != ENOENT && err != ESRCH)
			goto err_free;
		goto gone;
	}
	if (fstat(fd, &st)) {
		err = errno;
		goto err_close;
	}
	for (p = ctx->peers; p; p = p->next) {
		if (p->reg && p->pid == (pid_t)pid && p->dev == st.st_dev &&
		    p->ino == st.st_ino) {
			p->refs++;
			close(fd);
			free(peer);
			*out = p;
			return 0;
		}
	}
	if (!S_ISREG(st.st_mode) ||
	    (size_t)st.st_size < sizeof(struct emu_reg)) {
		err = EINVAL;
		goto err_close;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		err = errno;
		goto err_close;
	}
	peer->reg = map;
	peer->reglen = (size_t)st.st_size;
	peer->dev = st.st_dev;
	peer->ino = st.st_ino;
	close(fd);
	if (peer->reg->magic != EMU_MAGIC ||
	    peer->reg->version != EMU_VERSION || peer->reg->pid != pid ||
	    peer->reg->max_mr != EMU_MAX_MR ||
	    peer->reg->max_qp != EMU_MAX_QP) {
		err = EINVAL;
		goto err_unmap;
	}
	peer->pidfd = emu_pidfd_open((pid_t)pid);
	/* The pid could have been reused between open and pidfd_open. */
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st2) || st2.st_dev != st.st_dev ||
	    st2.st_ino != st.st_ino) {
		if (fd >= 0)
			close(fd);
		if (peer->pidfd >= 0)
			close(peer->pidfd);
		munmap(map, peer->reglen);
		peer->reg = NULL;
		peer->pidfd = -1;
		goto gone;
	}
	close(fd);
	emu_count(&emu_live_rmaps, 1);
gone:
	peer->next = ctx->peers;
	ctx->peers = peer;
	*out = peer;
	return 0;

err_unmap:
	munmap(map, peer->reglen);
	goto err_free;
err_close:
	close(fd);
err_free:
	free(peer);
	return err;
}

/* Required and optional attributes of each RC transition (IB spec 11.2.4). */
static bool emu_transition_ok(enum ibv_qp_state cur, enum ibv_qp_state next,
			      int mask)
{
	int req = 0, opt = 0;

	mask &= ~IBV_QP_STATE;
	if (next == IBV_QPS_RESET || next == IBV_QPS_ERR)
		return cur <= IBV_QPS_ERR && cur != IBV_QPS_SQD &&
		       cur != IBV_QPS_SQE && mask == 0;
	switch (cur) {
	case IBV_QPS_RESET:
		if (next != IBV_QPS_INIT)
			return false;
		req = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
		break;
	case IBV_QPS_INIT:
		if (next == IBV_QPS_INIT) {
			opt = IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			      IBV_QP_ACCESS_FLAGS;
		} else if (next == IBV_QPS_RTR) {
			req = IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
			      IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
			      IBV_QP_MIN_RNR_TIMER;
			opt = IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS |
			      IBV_QP_PKEY_INDEX;
		} else {
			return false;
		}
		break;
	case IBV_QPS_RTR:
		if (next != IBV_QPS_RTS)
			return false;
		req = IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
		      IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC;
		opt = IBV_QP_CUR_STATE | IBV_QP_ALT_PATH |
		      IBV_QP_ACCESS_FLAGS | IBV_QP_MIN_RNR_TIMER |
		      IBV_QP_PATH_MIG_STATE;
		break;
	case IBV_QPS_RTS:
		if (next != IBV_QPS_RTS)
			return false;
		opt = IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH |
		      IBV_QP_PATH_MIG_STATE | IBV_QP_MIN_RNR_TIMER;
		break;
	default:
		return false;
	}
	return (mask & req) == req && !(mask & ~(req | opt));
}

/* Checks the values of the attributes named in mask. */
static bool emu_attr_ok(const struct emu_context *ctx,
			const struct ibv_qp_attr *a, int mask)
{
	if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index != 0)
		return false;
	if ((mask & IBV_QP_PORT) && a->port_num != 1)
		return false;
	if ((mask & IBV_QP_ACCESS_FLAGS) &&
	    (a->qp_access_flags & ~(unsigned int)(IBV_ACCESS_REMOTE_WRITE |
						  IBV_ACCESS_REMOTE_READ |
						  IBV_ACCESS_REMOTE_ATOMIC)))
		return false;
	if ((mask & IBV_QP_PATH_MTU) &&
	    (a->path_mtu < IBV_MTU_256 || a->path_mtu > IBV_MTU_4096))
		return false;
	if ((mask & IBV_QP_DEST_QPN) &&
	    (a->dest_qp_num == 0 || a->dest_qp_num > 0xffffff))
		return false;
	if ((mask & IBV_QP_RQ_PSN) && a->rq_psn > 0xffffff)
		return false;
	if ((mask & IBV_QP_SQ_PSN) && a->sq_psn > 0xffffff)
		return false;
	if ((mask & IBV_QP_MAX_DEST_RD_ATOMIC) &&
	    a->max_dest_rd_atomic > ctx->max_rd_atom)
		return false;
	if ((mask & IBV_QP_MAX_QP_RD_ATOMIC) &&
	    a->max_rd_atomic > ctx->max_init_rd_atom)
		return false;
	if ((mask & IBV_QP_MIN_RNR_TIMER) && a->min_rnr_timer > 31)
		return false;
	if ((mask & IBV_QP_TIMEOUT) && a->timeout > 31)
		return false;
	if ((mask & IBV_QP_RETRY_CNT) && a->retry_cnt > 7)
		return false;
	if ((mask & IBV_QP_RNR_RETRY) && a->rnr_retry > 7)
		return false;
	if ((mask & IBV_QP_AV) &&
	    (!a->ah_attr.is_global || a->ah_attr.port_num > 1 ||
	     a->ah_attr.grh.sgid_index != 0))
		return false;
	if ((mask & IBV_QP_CUR_STATE) && a->cur_qp_state != IBV_QPS_RTR &&
	    a->cur_qp_state != IBV_QPS_RTS)
		return false;
	return !(mask & (IBV_QP_ALT_PATH | IBV_QP_PATH_MIG_STATE));
}

/* 4.096 us * 2^timeout * (retry_cnt + 1); timeout 0 is infinite: capped. */
static uint64_t emu_timeout_ns(uint8_t timeout, uint8_t retry_cnt)
{
	double ns;

	if (timeout == 0)
		return EMU_TIMEOUT_CAP_NS;
	ns = 4096.0 * (double)(1ull << timeout) * (retry_cnt + 1);
	return ns > (double)EMU_TIMEOUT_CAP_NS ? EMU_TIMEOUT_CAP_NS
					       : (uint64_t)ns;
}

/* Under qp->lock: back to RESET, detached, with no completions queued. */
static void emu_qp_reset(struct emu_qp *qp)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);

	if (qp->peer) {
		pthread_mutex_lock(&ctx->lock);
		emu_peer_put(ctx, qp->peer);
		pthread_mutex_unlock(&ctx->lock);
		qp->peer = NULL;
	}
	emu_cq_purge(qp->send_cq, qp);
	if (qp->recv_cq != qp->send_cq)
		emu_cq_purge(qp->recv_cq, qp);
	qp->posted = 0;
	__atomic_store_n(&qp->retired, 0, __ATOMIC_RELAXED);
	qp->attr = (struct ibv_qp_attr){ .qp_state = IBV_QPS_RESET };
	qp->timeout_ns = 0;
	qp->last_ready_ns = 0;
	emu_qp_set_state(qp, IBV_QPS_RESET);
}

static int emu_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
			 int mask)
{
	struct emu_qp *qp = emu_qp_of(ibqp);
	struct emu_context *ctx;
	enum ibv_qp_state next;
	struct emu_peer *peer = NULL;
	struct ibv_qp_attr *a = &qp->attr;
	int err;

	if (!qp || !attr)
		return emu_fail(EINVAL);
	ctx = emu_ctx(ibqp->context);
	pthread_mutex_lock(&qp->lock);
	emu_qp_sync(qp);
	next = (mask & IBV_QP_STATE) ? attr->qp_state : qp->state;
	if ((mask & IBV_QP_CUR_STATE) && attr->cur_qp_state != qp->state) {
		err = EINVAL;
		goto out;
	}
	if (!emu_transition_ok(qp->state, next, mask) ||
	    !emu_attr_ok(ctx, attr, mask)) {
		err = EINVAL;
		goto out;
	}
	if (next == IBV_QPS_RESET) {
		emu_qp_reset(qp);
		err = 0;
		goto out;
	}
	if (mask & IBV_QP_AV) {
		pthread_mutex_lock(&ctx->lock);
		err = emu_peer_get(ctx, &attr->ah_attr.grh.dgid, &peer);
		pthread_mutex_unlock(&ctx->lock);
		if (err)
			goto out;
		a->ah_attr = attr->ah_attr;
		qp->peer = peer;
	}
	if (mask & IBV_QP_PKEY_INDEX)
		a->pkey_index = attr->pkey_index;
	if (mask & IBV_QP_PORT)
		a->port_num = attr->port_num;
	if (mask & IBV_QP_ACCESS_FLAGS)
		a->qp_access_flags = attr->qp_access_flags;
	if (mask & IBV_QP_PATH_MTU)
		a->path_mtu = attr->path_mtu;
	if (mask & IBV_QP_DEST_QPN)
		a->dest_qp_num = attr->dest_qp_num;
	if (mask & IBV_QP_RQ_PSN)
		a->rq_psn = attr->rq_psn;
	if (mask & IBV_QP_SQ_PSN)
		a->sq_psn = attr->sq_psn;
	if (mask & IBV_QP_MAX_DEST_RD_ATOMIC)
		a->max_dest_rd_atomic = attr->max_dest_rd_atomic;
	if (mask & IBV_QP_MAX_QP_RD_ATOMIC)
		a->max_rd_atomic = attr->max_rd_atomic;
	if (mask & IBV_QP_MIN_RNR_TIMER)
		a->min_rnr_timer = attr->min_rnr_timer;
	if (mask & IBV_QP_TIMEOUT)
		a->timeout = attr->timeout;
	if (mask & IBV_QP_RETRY_CNT)
		a->retry_cnt = attr->retry_cnt;
	if (mask & IBV_QP_RNR_RETRY)
		a->rnr_retry = attr->rnr_retry;
	if (mask & (IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT))
		qp->timeout_ns = emu_timeout_ns(a->timeout, a->retry_cnt);
	a->qp_state = next;
	emu_qp_set_state(qp, next);
	err = 0;
out:
	pthread_mutex_unlock(&qp->lock);
	return err ? emu_fail(err) : 0;
}

static int emu_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
			int mask, struct ibv_qp_init_attr *init)
{
	struct emu_qp *qp = emu_qp_of(ibqp);

	(void)mask; /* everything is returned, as providers do */
	if (!qp || !attr)
		return emu_fail(EINVAL);
	pthread_mutex_lock(&qp->lock);
	emu_qp_sync(qp);
	*attr = qp->attr;
	attr->qp_state = qp->state;
	attr->cur_qp_state = qp->state;
	attr->cap = qp->cap;
	if (init)
		*init = (struct ibv_qp_init_attr){
			.qp_context = ibqp->qp_context,
			.send_cq = ibqp->send_cq,
			.recv_cq = ibqp->recv_cq,
			.cap = qp->cap,
			.qp_type = IBV_QPT_RC,
			.sq_sig_all = qp->sq_sig_all,
		};
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

static int emu_destroy_qp(struct ibv_qp *ibqp)
{
	struct emu_qp *qp = emu_qp_of(ibqp);
	struct emu_context *ctx;
	struct emu_reg_qp *s;

	if (!qp)
		return emu_fail(EINVAL);
	ctx = emu_ctx(ibqp->context);
	pthread_mutex_lock(&qp->lock);
	emu_qp_reset(qp);
	pthread_mutex_unlock(&qp->lock);
	pthread_mutex_lock(&ctx->lock);
	s = &ctx->reg->qp[qp->slot];
	emu_seq_begin(&s->seq);
	s->state = 0;
	s->qpn = 0;
	emu_seq_end(&s->seq);
	ctx->qps[qp->slot] = NULL;
	ctx->nqp--;
	qp->pd->nqp--;
	qp->send_cq->nqp--;
	qp->recv_cq->nqp--;
	pthread_mutex_unlock(&ctx->lock);
	pthread_cond_destroy(&qp->ibqp.cond);
	pthread_mutex_destroy(&qp->ibqp.mutex);
	pthread_mutex_destroy(&qp->lock);
	free(qp);
	emu_count(&emu_live_qps, -1);
	return 0;
}

/* ---- the data path ---- */

/* Under qp->lock: queues a completion (or overruns the CQ). */
static void emu_push(struct emu_qp *qp, const struct ibv_send_wr *wr,
		     enum ibv_wc_status status, uint32_t len, uint64_t delay)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);
	struct emu_cq *cq = qp->send_cq;
	struct emu_cqe *e;

	pthread_mutex_lock(&cq->lock);
	if (__atomic_load_n(&cq->overrun, __ATOMIC_RELAXED))
		goto out;
	if (cq->count == cq->cap ||
	    __atomic_load_n(&ctx->fault_overrun, __ATOMIC_RELAXED)) {
		__atomic_store_n(&cq->overrun, 1, __ATOMIC_RELAXED);
		goto out;
	}
	e = &cq->ring[(cq->head + cq->count) & (cq->cap - 1)];
	e->wc = (struct ibv_wc){
		.wr_id = wr->wr_id,
		.status = status,
		.opcode = wr->opcode == IBV_WR_RDMA_READ ? IBV_WC_RDMA_READ
							 : IBV_WC_RDMA_WRITE,
		.vendor_err = 0,
		.byte_len = status == IBV_WC_SUCCESS ? len : 0,
		.qp_num = qp->ibqp.qp_num,
	};
	e->ready_ns = delay ? emu_now_ns() + delay : 0;
	if (e->ready_ns < qp->last_ready_ns)
		e->ready_ns = qp->last_ready_ns; /* keep the QP's order */
	qp->last_ready_ns = e->ready_ns;
	if (e->ready_ns)
		cq->ndelayed++;
	e->qp = qp;
	e->seq = qp->posted;
	cq->count++;
out:
	pthread_mutex_unlock(&cq->lock);
	emu_qp_sync(qp);
}

static bool emu_peer_alive(struct emu_peer *peer)
{
	struct pollfd pfd = { .fd = peer->pidfd, .events = POLLIN };

	if (!peer->reg)
		return false;
	if (peer->pidfd >= 0) {
		int r;

		/* A signal (Go preempts its threads with SIGURG) is no death. */
		do
			r = poll(&pfd, 1, 0);
		while (r < 0 && errno == EINTR);
		if (r >= 0)
			return r == 0;
	}
	return kill(peer->pid, 0) == 0 || errno == EPERM;
}

/* Checks the local SGEs; fills p->host. */
static enum ibv_wc_status emu_local(struct emu_qp *qp,
				    const struct ibv_send_wr *wr,
				    struct emu_post *p, uint64_t *total)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);
	bool inl = wr->send_flags & IBV_SEND_INLINE;
	struct emu_reg_mr s;
	int i;

	*total = 0;
	for (i = 0; i < wr->num_sge; i++) {
		const struct ibv_sge *sge = &wr->sg_list[i];

		*total += sge->length;
		if (inl) {
			p->host[i] = (uint8_t *)(uintptr_t)sge->addr;
			continue;
		}
		if (!emu_seq_read(&ctx->reg->mr[sge->lkey & (EMU_MAX_MR - 1)],
				  &s, sizeof(s)))
			return IBV_WC_LOC_PROT_ERR;
		if (!s.valid || s.lkey != sge->lkey || s.pd_id != qp->pd->id)
			return IBV_WC_LOC_PROT_ERR;
		if (sge->addr < s.addr || sge->addr - s.addr > s.length ||
		    sge->length > s.length - (sge->addr - s.addr))
			return IBV_WC_LOC_PROT_ERR;
		if (wr->opcode == IBV_WR_RDMA_READ && sge->length &&
		    !(s.access & IBV_ACCESS_LOCAL_WRITE))
			return IBV_WC_LOC_PROT_ERR;
		p->host[i] = (uint8_t *)(uintptr_t)(s.host +
						    (sge->addr - s.addr));
	}
	if (*total > EMU_MAX_MSG)
		return IBV_WC_LOC_LEN_ERR;
	return IBV_WC_SUCCESS;
}

/* A mapping of the peer's file covering [0, need), from the cache or new. */
static uint8_t *emu_rmap_get(struct emu_context *ctx, struct emu_peer *peer,
			     const struct emu_reg_mr *s, uint64_t need,
			     bool write)
{
	struct emu_rmap *m;
	uint8_t *base = NULL;
	char path[64];
	struct stat st;
	int fd, prot = PROT_READ | PROT_WRITE;
	void *map;

	pthread_rwlock_rdlock(&ctx->rmap_lock);
	for (m = ctx->rmaps; m; m = m->next)
		if (m->pid == peer->pid && m->dev == s->dev &&
		    m->ino == s->ino && m->len >= need &&
		    (m->writable || !write))
			break;
	base = m ? m->base : NULL;
	pthread_rwlock_unlock(&ctx->rmap_lock);
	if (base)
		return base;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)peer->pid, s->fd);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && !write) {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		prot = PROT_READ;
	}
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) || st.st_dev != s->dev || st.st_ino != s->ino ||
	    (uint64_t)st.st_size < need || st.st_size == 0)
		goto out_close;
	m = calloc(1, sizeof(*m));
	if (!m)
		goto out_close;
	map = mmap(NULL, (size_t)st.st_size, prot, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		free(m);
		goto out_close;
	}
	*m = (struct emu_rmap){
		.pid = peer->pid,
		.dev = st.st_dev,
		.ino = st.st_ino,
		.base = map,
		.len = (size_t)st.st_size,
		.writable = prot & PROT_WRITE,
	};
	/* Older, smaller mappings stay: another thread may be copying. */
	pthread_rwlock_wrlock(&ctx->rmap_lock);
	m->next = ctx->rmaps;
	ctx->rmaps = m;
	pthread_rwlock_unlock(&ctx->rmap_lock);
	emu_count(&emu_live_rmaps, 1);
	base = map;
out_close:
	close(fd);
	return base;
}

/*
 * The responder's side, done by the initiator: peer QP, rkey, then the
 * copy. *delay is set for a lost packet (retry exceeded).
 */
static enum ibv_wc_status emu_remote(struct emu_qp *qp,
				     const struct ibv_send_wr *wr,
				     struct emu_post *p, uint64_t total,
				     uint64_t *delay)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);
	struct emu_peer *peer = qp->peer;
	bool write = wr->opcode == IBV_WR_RDMA_WRITE;
	uint32_t need_access = write ? IBV_ACCESS_REMOTE_WRITE
				     : IBV_ACCESS_REMOTE_READ;
	uint64_t raddr = wr->wr.rdma.remote_addr, off;
	uint32_t rkey = wr->wr.rdma.rkey;
	struct emu_reg_qp rq;
	struct emu_reg_mr s;
	uint8_t *base;
	int i;

	if (p->alive < 0)
		p->alive = emu_peer_alive(peer);
	if (!p->alive ||
	    !__atomic_load_n(&peer->reg->open, __ATOMIC_ACQUIRE) ||
	    !emu_seq_read(&peer->reg->qp[qp->attr.dest_qp_num &
					 (EMU_MAX_QP - 1)],
			  &rq, sizeof(rq)) ||
	    rq.qpn != qp->attr.dest_qp_num ||
	    (rq.state != IBV_QPS_RTR + 1 && rq.state != IBV_QPS_RTS + 1) ||
	    rq.dest_qpn != qp->ibqp.qp_num ||
	    memcmp(rq.dest_gid, ctx->gid.raw, 16))
		goto lost;
	/* More READs in flight than the responder has resources for: it
	 * NAKs the one that overflows them (invalid request). Reads here
	 * run one at a time, so the emulator refuses the configuration
	 * itself, on every READ. */
	if (!write && qp->attr.max_rd_atomic > rq.max_dest_rd_atomic)
		return IBV_WC_REM_INV_REQ_ERR;
	if (total == 0)
		return IBV_WC_SUCCESS;
	if (!emu_seq_read(&peer->reg->mr[rkey & (EMU_MAX_MR - 1)], &s,
			  sizeof(s)) ||
	    !s.valid || s.rkey != rkey || s.pd_id != rq.pd_id ||
	    !(s.access & need_access) || !(rq.access & need_access) ||
	    s.fd < 0 || raddr < s.addr || raddr - s.addr > s.length ||
	    total > s.length - (raddr - s.addr))
		return IBV_WC_REM_ACCESS_ERR;
	off = s.offset + (raddr - s.addr);
	if (off < s.offset || off + total < off)
		return IBV_WC_REM_ACCESS_ERR;
	base = emu_rmap_get(ctx, peer, &s, off + total, write);
	if (!base) {
		if (!emu_peer_alive(peer))
			goto lost;
		return IBV_WC_REM_OP_ERR;
	}
	for (i = 0; i < wr->num_sge; i++) {
		uint32_t len = wr->sg_list[i].length;

		if (write)
			memcpy(base + off, p->host[i], len);
		else
			memcpy(p->host[i], base + off, len);
		off += len;
	}
	return IBV_WC_SUCCESS;
lost:
	*delay = qp->timeout_ns ? qp->timeout_ns : EMU_TIMEOUT_CAP_NS;
	return IBV_WC_RETRY_EXC_ERR;
}

/* Under qp->lock: one accepted WR, run to its completion. */
static void emu_execute(struct emu_qp *qp, const struct ibv_send_wr *wr,
			struct emu_post *p)
{
	struct emu_context *ctx = emu_ctx(qp->ibqp.context);
	bool signaled = qp->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
	enum ibv_wc_status st = IBV_WC_SUCCESS;
	uint64_t total = 0, delay = 0;

	if (qp->state == IBV_QPS_ERR) {
		emu_push(qp, wr, IBV_WC_WR_FLUSH_ERR, 0, 0);
		return;
	}
	if (__atomic_load_n(&ctx->any_fault, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&ctx->lock);
		if (ctx->fault_comp_count > 0) {
			ctx->fault_comp_count--;
			st = (enum ibv_wc_status)ctx->fault_comp_err;
		}
		pthread_mutex_unlock(&ctx->lock);
	}
	if (st == IBV_WC_SUCCESS)
		st = emu_local(qp, wr, p, &total);
	if (st == IBV_WC_SUCCESS)
		st = emu_remote(qp, wr, p, total, &delay);
	if (st != IBV_WC_SUCCESS) {
		emu_qp_set_state(qp, IBV_QPS_ERR);
		emu_push(qp, wr, st, 0, delay);
	} else if (signaled) {
		emu_push(qp, wr, st, (uint32_t)total, 0);
	}
}

static int emu_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
			 struct ibv_send_wr **bad_wr)
{
	struct emu_qp *qp = (struct emu_qp *)ibqp;
	struct emu_context *ctx = emu_ctx(ibqp->context);
	struct emu_post p = { .alive = -1 };
	struct ibv_send_wr *w;
	int i, n, fail_at = -1, fail_err = 0, err = 0;

	pthread_mutex_lock(&qp->lock);
	emu_qp_sync(qp);
	if (qp->state != IBV_QPS_RTS && qp->state != IBV_QPS_ERR) {
		*bad_wr = wr;
		err = EINVAL;
		goto out;
	}
	if (wr && __atomic_load_n(&ctx->any_fault, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&ctx->lock);
		if (ctx->fault_post_count > 0) {
			ctx->fault_post_count--;
			fail_at = ctx->fault_post_after;
			fail_err = ctx->fault_post_err;
		}
		pthread_mutex_unlock(&ctx->lock);
		for (n = 0, w = wr; w; w = w->next)
			n++;
		if (fail_at >= n)
			fail_at = n - 1;
	}
	for (i = 0; wr; wr = wr->next, i++) {
		uint64_t inl = 0;
		int j;

		if (i == fail_at) {
			err = fail_err;
			break;
		}
		if ((wr->opcode != IBV_WR_RDMA_READ &&
		     wr->opcode != IBV_WR_RDMA_WRITE) ||
		    wr->num_sge < 0 ||
		    (uint32_t)wr->num_sge > qp->cap.max_send_sge ||
		    (wr->num_sge && !wr->sg_list)) {
			err = EINVAL;
			break;
		}
		if (wr->send_flags & IBV_SEND_INLINE) {
			for (j = 0; j < wr->num_sge; j++)
				inl += wr->sg_list[j].length;
			if (wr->opcode != IBV_WR_RDMA_WRITE ||
			    inl > qp->cap.max_inline_data) {
				err = EINVAL;
				break;
			}
		}
		if (qp->posted - __atomic_load_n(&qp->retired,
						 __ATOMIC_ACQUIRE) >=
		    qp->cap.max_send_wr) {
			err = ENOMEM;
			break;
		}
		qp->posted++;
		emu_execute(qp, wr, &p);
	}
	if (err)
		*bad_wr = wr;
out:
	pthread_mutex_unlock(&qp->lock);
	return err ? emu_fail(err) : 0;
}

/* ---- the public entry points ---- */

static const struct tq_verbs emu_verbs = {
	.name = "emulated",
	.get_device_list = emu_get_device_list,
	.free_device_list = emu_free_device_list,
	.get_device_name = emu_get_device_name,
	.open_device = emu_open_device,
	.close_device = emu_close_device,
	.query_device = emu_query_device,
	.query_port = emu_query_port,
	.query_gid = emu_query_gid,
	.alloc_pd = emu_alloc_pd,
	.dealloc_pd = emu_dealloc_pd,
	.reg_mr = emu_reg_mr,
	.reg_dmabuf_mr = emu_reg_dmabuf_mr,
	.dereg_mr = emu_dereg_mr,
	.create_cq = emu_create_cq,
	.destroy_cq = emu_destroy_cq,
	.create_qp = emu_create_qp,
	.modify_qp = emu_modify_qp,
	.query_qp = emu_query_qp,
	.destroy_qp = emu_destroy_qp,
};

const struct tq_verbs *tq_emu_verbs(void)
{
	return &emu_verbs;
}

int tq_emu_set_rd_atom(const char *name, int rd_atom, int init_rd_atom)
{
	int i;

	if (rd_atom < 0 || rd_atom > 255 || init_rd_atom < 0 ||
	    init_rd_atom > 255)
		goto inval;
	for (i = 0; i < EMU_NDEV; i++) {
		if (strcmp(emu_devices[i].ibdev.name, name) == 0) {
			__atomic_store_n(&emu_rd_atom[i], rd_atom,
					 __ATOMIC_RELAXED);
			__atomic_store_n(&emu_init_rd_atom[i], init_rd_atom,
					 __ATOMIC_RELAXED);
			return 0;
		}
	}
inval:
	errno = EINVAL;
	return -1;
}

int tq_emu_inject(struct ibv_context *ibctx, int kind, int after, int count,
		  int err)
{
	struct emu_context *ctx = emu_ctx(ibctx);

	if (!ctx)
		goto inval;
	pthread_mutex_lock(&ctx->lock);
	switch (kind) {
	case TQ_EMU_FAULT_NONE:
		ctx->fault_post_count = 0;
		ctx->fault_comp_count = 0;
		ctx->fault_reg_count = 0;
		__atomic_store_n(&ctx->fault_overrun, 0, __ATOMIC_RELAXED);
		break;
	case TQ_EMU_FAULT_POST:
		if (count < 0 || after < 0 || err <= 0)
			goto inval_unlock;
		ctx->fault_post_count = count;
		ctx->fault_post_after = after;
		ctx->fault_post_err = err;
		break;
	case TQ_EMU_FAULT_COMPLETION:
		if (count < 0 || err <= IBV_WC_SUCCESS || err > 255)
			goto inval_unlock;
		ctx->fault_comp_count = count;
		ctx->fault_comp_err = err;
		break;
	case TQ_EMU_FAULT_CQ_OVERRUN:
		__atomic_store_n(&ctx->fault_overrun, 1, __ATOMIC_RELAXED);
		break;
	case TQ_EMU_FAULT_REG_MR:
		/* Registration is no hot path: any_fault does not cover it. */
		if (count < 0 || err <= 0)
			goto inval_unlock;
		ctx->fault_reg_count = count;
		ctx->fault_reg_err = err;
		break;
	default:
		goto inval_unlock;
	}
	__atomic_store_n(&ctx->any_fault,
			 ctx->fault_post_count || ctx->fault_comp_count ||
				 ctx->fault_overrun,
			 __ATOMIC_RELEASE);
	pthread_mutex_unlock(&ctx->lock);
	return 0;

inval_unlock:
	pthread_mutex_unlock(&ctx->lock);
inval:
	errno = EINVAL;
	return -1;
}

void tq_emu_counts(struct tq_emu_counts *out)
{
	*out = (struct tq_emu_counts){
		.contexts = __atomic_load_n(&emu_live_contexts, __ATOMIC_RELAXED),
		.pds = __atomic_load_n(&emu_live_pds, __ATOMIC_RELAXED),
		.mrs = __atomic_load_n(&emu_live_mrs, __ATOMIC_RELAXED),
		.cqs = __atomic_load_n(&emu_live_cqs, __ATOMIC_RELAXED),
		.qps = __atomic_load_n(&emu_live_qps, __ATOMIC_RELAXED),
		.remote_maps = __atomic_load_n(&emu_live_rmaps,
					       __ATOMIC_RELAXED),
	};
}
