// SPDX-License-Identifier: Apache-2.0
/*
 * emu_selftest.c — tests of the emulated verbs device (emu.c) across two
 * processes, through the table of tq_emu_verbs() and the inline
 * ibv_post_send/ibv_poll_cq of <infiniband/verbs.h>.
 *
 * The parent is the initiator. A forked child (the target) owns a memfd
 * arena registered for remote access, a dmabuf-style MR and two QPs; it
 * sends its endpoint over a socketpair and then sleeps in read() on that
 * socket: every RDMA READ and WRITE of the parent is done without the
 * target running. The target runs only when asked, to report the bytes of
 * its arena ('D'), destroy a QP ('Q'), deregister an MR ('U') or tear down
 * and check its counts ('X'). Later the target is killed with SIGKILL and a
 * new one is forked, to which the parent reconnects.
 *
 * Build and run:
 *   gcc -Wall -Wextra -O2 -g -fsanitize=address,undefined \
 *       -o /tmp/emu_selftest csrc/emu_selftest.c csrc/emu.c -libverbs
 *   /tmp/emu_selftest
 * It prints one line per check and exits 1 if any failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tqverbs.h"

#define ARENA_LEN (1u << 20)
#define MR0_OFF 0u		/* RR|RW|LW, pd */
#define MR0_LEN (512u << 10)
#define MR1_OFF (512u << 10)	/* RR only, pd */
#define MR1_LEN (256u << 10)
#define MR2_OFF (768u << 10)	/* RR|RW|LW, another pd */
#define MR2_LEN (64u << 10)
#define DMA_FILE_LEN (64u << 10)
#define DMA_OFF 4096u
#define DMA_LEN (32u << 10)
#define DMA_IOVA 0x10000000ull
#define LOCAL_LEN (1u << 20)
#define SQ_DEPTH 16
#define SQ_SGE 4
#define TIMEOUT_ATTR 14		/* 4.096us * 2^14 = 67 ms */
#define RETRY_ATTR 1		/* x2: 134 ms before retry exceeded */
#define RETRY_NS (4096ull * (1ull << TIMEOUT_ATTR) * (RETRY_ATTR + 1))

enum { TQP_RW, TQP_RO, TNQP };	/* target QPs: access RR|RW, RR only */
enum { TMR0, TMR1, TMR2, TMR_DMA, TNMR };

/* What one side tells the other to connect. */
struct endpoint {
	union ibv_gid gid;
	uint16_t lid;
	uint32_t qpn[TNQP];
	uint64_t addr[TNMR];
	uint32_t rkey[TNMR];
};

struct cmd {
	char op;
	uint32_t arg;
	uint64_t off, len;
};

static const struct tq_verbs *V;
static int failures, checks;

static void check(bool ok, const char *fmt, ...)
{
	va_list ap;

	checks++;
	if (!ok)
		failures++;
	printf("%s ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static uint8_t pat(uint64_t i)
{
	return (uint8_t)(i * 7 + 3);
}

static uint8_t pat2(uint64_t i)
{
	return (uint8_t)(i * 13 + 5);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int xfer(int fd, void *buf, size_t len, bool out)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = out ? write(fd, p, len) : read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static struct ibv_context *open_dev(const char *name)
{
	struct ibv_device **list;
	struct ibv_context *ctx = NULL;
	int i, n = 0;

	list = V->get_device_list(&n);
	for (i = 0; list && list[i]; i++)
		if (!strcmp(V->get_device_name(list[i]), name))
			ctx = V->open_device(list[i]);
	V->free_device_list(list);
	return ctx;
}

static struct ibv_qp *make_qp(struct ibv_pd *pd, struct ibv_cq *cq, int depth)
{
	struct ibv_qp_init_attr init = {
		.send_cq = cq,
		.recv_cq = cq,
		.cap = { .max_send_wr = (uint32_t)depth,
			 .max_send_sge = SQ_SGE,
			 .max_recv_wr = 1,
			 .max_recv_sge = 1 },
		.qp_type = IBV_QPT_RC,
		.sq_sig_all = 0,
	};

	return V->create_qp(pd, &init);
}

/* RESET -> INIT with the given access flags. */
static int to_init(struct ibv_qp *qp, unsigned int access)
{
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.pkey_index = 0,
		.port_num = 1,
		.qp_access_flags = access,
	};

	return V->modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
					    IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static struct ibv_qp_attr rtr_attr(const union ibv_gid *gid, uint16_t lid,
				   uint32_t dqpn)
{
	return (struct ibv_qp_attr){
		.qp_state = IBV_QPS_RTR,
		.path_mtu = IBV_MTU_4096,
		.dest_qp_num = dqpn,
		.rq_psn = 0,
		.max_dest_rd_atomic = 16,
		.min_rnr_timer = 12,
		.ah_attr = { .is_global = 1,
			     .grh = { .dgid = *gid, .sgid_index = 0,
				      .hop_limit = 1 },
			     .dlid = lid,
			     .port_num = 1 },
	};
}

#define RTR_MASK                                                              \
	(IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |       \
	 IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
#define RTS_MASK                                                              \
	(IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |                   \
	 IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)

static struct ibv_qp_attr rts_attr(void)
{
	return (struct ibv_qp_attr){
		.qp_state = IBV_QPS_RTS,
		.timeout = TIMEOUT_ATTR,
		.retry_cnt = RETRY_ATTR,
		.rnr_retry = 7,
		.sq_psn = 0,
		.max_rd_atomic = 16,
	};
}

/* From any state: RESET, INIT, RTR, RTS towards (gid, dqpn). */
static int connect_qp(struct ibv_qp *qp, const union ibv_gid *gid,
		      uint16_t lid, uint32_t dqpn, unsigned int access)
{
	struct ibv_qp_attr reset = { .qp_state = IBV_QPS_RESET };
	struct ibv_qp_attr rtr = rtr_attr(gid, lid, dqpn), rts = rts_attr();
	int err;

	err = V->modify_qp(qp, &reset, IBV_QP_STATE);
	if (!err)
		err = to_init(qp, access);
	if (!err)
		err = V->modify_qp(qp, &rtr, RTR_MASK);
	if (!err)
		err = V->modify_qp(qp, &rts, RTS_MASK);
	return err;
}

static enum ibv_qp_state qp_state(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr init;

	if (V->query_qp(qp, &a, IBV_QP_STATE, &init))
		return (enum ibv_qp_state)-1;
	return a.qp_state;
}

/* Polls until n completions or timeout_ms; returns how many. */
static int wait_wc(struct ibv_cq *cq, struct ibv_wc *wc, int n, int timeout_ms)
{
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	int got = 0, r;

	while (got < n) {
		r = ibv_poll_cq(cq, n - got, wc + got);
		if (r < 0)
			return r;
		got += r;
		if (got < n) {
			if (now_ns() > end)
				break;
			usleep(200);
		}
	}
	return got;
}

static void set_wr(struct ibv_send_wr *wr, uint64_t id,
		   enum ibv_wr_opcode op, struct ibv_sge *sge, int nsge,
		   uint64_t raddr, uint32_t rkey, unsigned int flags,
		   struct ibv_send_wr *next)
{
	*wr = (struct ibv_send_wr){
		.wr_id = id,
		.next = next,
		.sg_list = sge,
		.num_sge = nsge,
		.opcode = op,
		.send_flags = flags,
		.wr = { .rdma = { .remote_addr = raddr, .rkey = rkey } },
	};
}

/* ---------------- the target process ---------------- */

struct target {
	struct ibv_context *ctx;
	struct ibv_pd *pd, *pd2;
	struct ibv_cq *cq;
	struct ibv_qp *qp[TNQP];
	struct ibv_mr *mr[TNMR];
	uint8_t *arena, *dma;
};

static int target_main(int sock)
{
	const unsigned int rw = IBV_ACCESS_LOCAL_WRITE |
				IBV_ACCESS_REMOTE_READ |
				IBV_ACCESS_REMOTE_WRITE;
	struct target t = { 0 };
	struct endpoint me = { 0 }, peer;
	struct tq_emu_counts c, base;
	struct ibv_port_attr port;
	struct cmd cmd;
	int afd, dfd, i;
	uint64_t k;

	/* A forked child inherits the parent's counts (not its objects). */
	tq_emu_counts(&base);

	afd = memfd_create("target-arena", MFD_CLOEXEC);
	dfd = memfd_create("target-dmabuf", MFD_CLOEXEC);
	if (afd < 0 || dfd < 0 || ftruncate(afd, ARENA_LEN) ||
	    ftruncate(dfd, DMA_FILE_LEN))
		return 10;
	t.arena = mmap(NULL, ARENA_LEN, PROT_READ | PROT_WRITE, MAP_SHARED,
		       afd, 0);
	t.dma = mmap(NULL, DMA_FILE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED,
		     dfd, 0);
	if (t.arena == MAP_FAILED || t.dma == MAP_FAILED)
		return 11;
	for (k = 0; k < ARENA_LEN; k++)
		t.arena[k] = pat(k);
	for (k = 0; k < DMA_FILE_LEN; k++)
		t.dma[k] = pat2(k);

	t.ctx = open_dev("emu1");
	if (!t.ctx)
		return 12;
	t.pd = V->alloc_pd(t.ctx);
	t.pd2 = V->alloc_pd(t.ctx);
	t.cq = V->create_cq(t.ctx, 16, NULL, NULL, 0);
	if (!t.pd || !t.pd2 || !t.cq)
		return 13;
	t.mr[TMR0] = V->reg_mr(t.pd, t.arena + MR0_OFF, MR0_LEN, rw);
	t.mr[TMR1] = V->reg_mr(t.pd, t.arena + MR1_OFF, MR1_LEN,
			       IBV_ACCESS_REMOTE_READ);
	t.mr[TMR2] = V->reg_mr(t.pd2, t.arena + MR2_OFF, MR2_LEN, rw);
	t.mr[TMR_DMA] = V->reg_dmabuf_mr(t.pd, DMA_OFF, DMA_LEN, DMA_IOVA,
					 dfd, rw);
	/* The MRs keep their own dups: the caller's fds may go. */
	close(afd);
	close(dfd);
	for (i = 0; i < TNMR; i++) {
		if (!t.mr[i])
			return 14;
		me.addr[i] = (uintptr_t)t.mr[i]->addr;
		me.rkey[i] = t.mr[i]->rkey;
	}
	for (i = 0; i < TNQP; i++) {
		t.qp[i] = make_qp(t.pd, t.cq, SQ_DEPTH);
		if (!t.qp[i])
			return 15;
		me.qpn[i] = t.qp[i]->qp_num;
	}
	if (V->query_gid(t.ctx, 1, 0, &me.gid) ||
	    V->query_port(t.ctx, 1, &port))
		return 16;
	me.lid = port.lid;
	if (xfer(sock, &me, sizeof(me), true) ||
	    xfer(sock, &peer, sizeof(peer), false))
		return 17;
	if (connect_qp(t.qp[TQP_RW], &peer.gid, peer.lid, peer.qpn[TQP_RW],
		       IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE) ||
	    connect_qp(t.qp[TQP_RO], &peer.gid, peer.lid, peer.qpn[TQP_RO],
		       IBV_ACCESS_REMOTE_READ))
		return 18;
	if (xfer(sock, &(char){ 'R' }, 1, true))
		return 19;

	/* From here the target sleeps in read() while the parent works. */
	while (!xfer(sock, &cmd, sizeof(cmd), false)) {
		switch (cmd.op) {
		case 'D':
			xfer(sock, t.arena + cmd.off, cmd.len, true);
			break;
		case 'd':
			xfer(sock, t.dma + cmd.off, cmd.len, true);
			break;
		case 'Q':
			xfer(sock, &(char){ (char)V->destroy_qp(t.qp[cmd.arg]) },
			     1, true);
			t.qp[cmd.arg] = NULL;
			break;
		case 'U':
			xfer(sock, &(char){ (char)V->dereg_mr(t.mr[cmd.arg]) },
			     1, true);
			t.mr[cmd.arg] = NULL;
			break;
		case 'X': {
			int bad = 0;

			for (i = 0; i < TNQP; i++)
				if (t.qp[i])
					bad |= V->destroy_qp(t.qp[i]);
			for (i = 0; i < TNMR; i++)
				if (t.mr[i])
					bad |= V->dereg_mr(t.mr[i]);
			bad |= V->destroy_cq(t.cq);
			bad |= V->dealloc_pd(t.pd);
			bad |= V->dealloc_pd(t.pd2);
			bad |= V->close_device(t.ctx);
			tq_emu_counts(&c);
			bad |= c.contexts != base.contexts || c.pds != base.pds ||
			       c.mrs != base.mrs || c.cqs != base.cqs ||
			       c.qps != base.qps ||
			       c.remote_maps != base.remote_maps;
			xfer(sock, &(char){ bad ? 'F' : 'K' }, 1, true);
			munmap(t.arena, ARENA_LEN);
			munmap(t.dma, DMA_FILE_LEN);
			return bad ? 20 : 0;
		}
		default:
			return 21;
		}
	}
	return 0;
}

/* ---------------- the initiator ---------------- */

struct target_conn {
	pid_t pid;
	int sock;
	struct endpoint ep;
};

static int start_target(struct target_conn *tc, const struct endpoint *me)
{
	int sv[2];
	char ready;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -1;
	fflush(stdout);
	tc->pid = fork();
	if (tc->pid < 0)
		return -1;
	if (tc->pid == 0) {
		close(sv[0]);
		_exit(target_main(sv[1]));
	}
	close(sv[1]);
	tc->sock = sv[0];
	if (xfer(tc->sock, &tc->ep, sizeof(tc->ep), false) ||
	    xfer(tc->sock, (void *)me, sizeof(*me), true) ||
	    xfer(tc->sock, &ready, 1, false) || ready != 'R')
		return -1;
	return 0;
}

static char target_cmd(struct target_conn *tc, char op, uint32_t arg)
{
	struct cmd c = { .op = op, .arg = arg };
	char r = 0;

	if (xfer(tc->sock, &c, sizeof(c), true) ||
	    xfer(tc->sock, &r, 1, false))
		return -1;
	return r;
}

static bool target_dump(struct target_conn *tc, char op, uint64_t off,
			uint64_t len, uint8_t *out)
{
	struct cmd c = { .op = op, .off = off, .len = len };

	return !xfer(tc->sock, &c, sizeof(c), true) &&
	       !xfer(tc->sock, out, len, false);
}

/* The initiator's objects. */
struct init {
	struct ibv_context *ctx;
	struct ibv_pd *pd, *pd_other;
	struct ibv_cq *cq;
	struct ibv_qp *qp[TNQP];
	uint8_t *local, *ro, *other;
	struct ibv_mr *lmr, *romr, *othermr;
	struct endpoint ep;
};

static void test_devices(void)
{
	struct ibv_device **list;
	int n = 0, i;
	bool names = true;

	check(!strcmp(V->name, "emulated"), "table name is \"emulated\"");
	list = V->get_device_list(&n);
	check(list && n == 4 && !list[4], "get_device_list: 4 devices, NULL-terminated");
	for (i = 0; list && i < 4; i++) {
		char want[8];

		snprintf(want, sizeof(want), "emu%d", i);
		names &= !strcmp(V->get_device_name(list[i]), want) &&
			 !strcmp(list[i]->name, want) &&
			 list[i]->node_type == IBV_NODE_CA &&
			 list[i]->transport_type == IBV_TRANSPORT_IB;
	}
	check(names, "devices are emu0..emu3, CA, transport IB");
	V->free_device_list(list);
}

static void test_queries(struct init *in)
{
	struct ibv_device_attr da;
	struct ibv_port_attr pa;
	union ibv_gid gid;
	uint32_t pid;
	int i;

	int r;

	r = V->query_device(in->ctx, &da);
	check(!r && da.max_qp_wr >= SQ_DEPTH &&
		      da.max_sge >= SQ_SGE && da.max_cqe > 0 &&
		      da.max_mr_size > 0 && da.phys_port_cnt == 1,
	      "query_device: limits (max_qp_wr %d, max_sge %d, max_cqe %d)",
	      da.max_qp_wr, da.max_sge, da.max_cqe);
	r = V->query_port(in->ctx, 1, &pa);
	check(!r && pa.state == IBV_PORT_ACTIVE &&
		      pa.active_mtu == IBV_MTU_4096 && pa.lid != 0 &&
		      pa.gid_tbl_len == 1 &&
		      pa.link_layer == IBV_LINK_LAYER_INFINIBAND,
	      "query_port: active, MTU 4096, LID 0x%x, IB", pa.lid);
	check(V->query_port(in->ctx, 2, &pa) == EINVAL, "query_port(2): EINVAL");
	check(!V->query_gid(in->ctx, 1, 0, &gid), "query_gid");
	for (pid = 0, i = 0; i < 4; i++)
		pid = pid << 8 | gid.raw[8 + i];
	check(gid.raw[0] == 0xfe && gid.raw[1] == 0x80 && pid == (uint32_t)getpid(),
	      "GID is fe80::<pid %u>:<registry fd>", pid);
	check(V->query_gid(in->ctx, 1, 1, &gid) == EINVAL, "query_gid(index 1): EINVAL");
}

static void test_reg_refusals(struct init *in)
{
	struct ibv_mr *mr;
	uint8_t *map;
	int fd;

	errno = 0;
	mr = V->reg_mr(in->pd, in->local, 4096,
		       IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
	check(!mr && errno == EINVAL, "reg_mr: REMOTE_WRITE without LOCAL_WRITE: EINVAL");
	errno = 0;
	mr = V->reg_mr(in->pd, in->local, 4096,
		       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	check(!mr && errno == EINVAL, "reg_mr: remote access on anonymous memory: EINVAL");
	fd = memfd_create("closed", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, 8192))
		return;
	map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	errno = 0;
	mr = V->reg_mr(in->pd, map, 8192, IBV_ACCESS_REMOTE_READ);
	check(!mr && errno == EINVAL,
	      "reg_mr: remote access on a memfd mapping with no fd open: EINVAL");
	munmap(map, 8192);
	errno = 0;
	mr = V->reg_mr(in->pd, in->local, 0, 0);
	check(!mr && errno == EINVAL, "reg_mr: length 0: EINVAL");
	{
		struct ibv_mr *m1 = V->reg_mr(in->pd, in->local, 4096, 0), *m2;
		uint32_t k1 = m1 ? m1->lkey : 0;

		if (m1)
			V->dereg_mr(m1);
		m2 = V->reg_mr(in->pd, in->local, 4096, 0);
		check(m1 && m2 && m2->lkey != k1 && m2->lkey && m2->rkey,
		      "keys are not reused at once after dereg_mr (0x%x, then 0x%x)", k1,
		      m2 ? m2->lkey : 0);
		if (m2)
			V->dereg_mr(m2);
	}
}

static void test_qp_refusals(struct init *in)
{
	struct ibv_qp_init_attr ud = {
		.send_cq = in->cq, .recv_cq = in->cq,
		.cap = { .max_send_wr = 1, .max_send_sge = 1 },
		.qp_type = IBV_QPT_UD,
	};
	struct ibv_qp_init_attr big = {
		.send_cq = in->cq, .recv_cq = in->cq,
		.cap = { .max_send_wr = 1, .max_send_sge = 1000 },
		.qp_type = IBV_QPT_RC,
	};
	struct ibv_cq *cq;

	errno = 0;
	check(!V->create_qp(in->pd, &ud) && errno == EOPNOTSUPP,
	      "create_qp(UD): EOPNOTSUPP");
	errno = 0;
	check(!V->create_qp(in->pd, &big) && errno == EINVAL,
	      "create_qp(max_send_sge 1000 > max_sge): EINVAL");
	big.cap.max_send_sge = 1;
	big.cap.max_send_wr = 1u << 30;
	errno = 0;
	check(!V->create_qp(in->pd, &big) && errno == EINVAL,
	      "create_qp(max_send_wr 2^30 > max_qp_wr): EINVAL");
	cq = V->create_cq(in->ctx, 5, NULL, NULL, 0);
	check(cq && cq->cqe >= 5, "create_cq(5): cqe %d", cq ? cq->cqe : -1);
	if (cq)
		V->destroy_cq(cq);
	errno = 0;
	check(!V->create_cq(in->ctx, 0, NULL, NULL, 0) && errno == EINVAL,
	      "create_cq(0): EINVAL");
}

/* Walks qp up to RTS checking the refusals on the way. */
static void test_state_machine(struct init *in, struct ibv_qp *qp,
			       const struct endpoint *ep)
{
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 8,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr wr[2], *bad = NULL;
	struct ibv_qp_attr a, rtr, rts = rts_attr();
	struct ibv_recv_wr rwr = { 0 }, *rbad = NULL;
	union ibv_gid foreign = { .raw = { 0x20, 0x01, 0x0d, 0xb8 } };
	int r;

	check(qp->qp_num != 0 && qp->qp_num <= 0xffffff && qp->state == IBV_QPS_RESET &&
		      qp_state(qp) == IBV_QPS_RESET,
	      "create_qp: qpn 0x%x in 24 bits, state RESET", qp->qp_num);
	set_wr(&wr[1], 2, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0],
	       ep->rkey[TMR0], IBV_SEND_SIGNALED, NULL);
	set_wr(&wr[0], 1, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0],
	       ep->rkey[TMR0], IBV_SEND_SIGNALED, &wr[1]);
	r = ibv_post_send(qp, wr, &bad);
	check(r == EINVAL && bad == &wr[0], "post in RESET: EINVAL, bad_wr = first WR");

	rtr = rtr_attr(&ep->gid, ep->lid, ep->qpn[TQP_RW]);
	check(V->modify_qp(qp, &rtr, RTR_MASK) == EINVAL, "RESET->RTR: EINVAL");
	a = (struct ibv_qp_attr){ .qp_state = IBV_QPS_INIT, .port_num = 1 };
	check(V->modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT) ==
		      EINVAL,
	      "RESET->INIT without ACCESS_FLAGS: EINVAL");
	check(V->modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
					   IBV_QP_ACCESS_FLAGS | IBV_QP_TIMEOUT) == EINVAL,
	      "RESET->INIT with an attribute not allowed (TIMEOUT): EINVAL");
	a.port_num = 2;
	check(V->modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
					   IBV_QP_ACCESS_FLAGS) == EINVAL,
	      "RESET->INIT with port 2: EINVAL");
	check(to_init(qp, IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE) == 0 &&
		      qp_state(qp) == IBV_QPS_INIT && qp->state == IBV_QPS_INIT,
	      "RESET->INIT");
	bad = NULL;
	check(ibv_post_send(qp, wr, &bad) == EINVAL && bad == &wr[0],
	      "post in INIT: EINVAL, bad_wr = first WR");
	check(V->modify_qp(qp, &rts, RTS_MASK) == EINVAL, "INIT->RTS: EINVAL");
	check(V->modify_qp(qp, &rtr, RTR_MASK & ~IBV_QP_MIN_RNR_TIMER) == EINVAL,
	      "INIT->RTR without MIN_RNR_TIMER: EINVAL");
	rtr.ah_attr.grh.dgid = foreign;
	check(V->modify_qp(qp, &rtr, RTR_MASK) == EINVAL,
	      "INIT->RTR to a GID that is not emulated: EINVAL");
	rtr = rtr_attr(&ep->gid, ep->lid, ep->qpn[TQP_RW]);
	rtr.ah_attr.is_global = 0;
	check(V->modify_qp(qp, &rtr, RTR_MASK) == EINVAL,
	      "INIT->RTR without GRH (is_global 0): EINVAL");
	rtr.ah_attr.is_global = 1;
	check(V->modify_qp(qp, &rtr, RTR_MASK) == 0 && qp_state(qp) == IBV_QPS_RTR,
	      "INIT->RTR");
	bad = NULL;
	check(ibv_post_send(qp, wr, &bad) == EINVAL && bad == &wr[0],
	      "post in RTR: EINVAL, bad_wr = first WR");
	check(V->modify_qp(qp, &rts, RTS_MASK & ~IBV_QP_TIMEOUT) == EINVAL,
	      "RTR->RTS without TIMEOUT: EINVAL");
	check(V->modify_qp(qp, &rts, RTS_MASK) == 0, "RTR->RTS");
	{
		struct ibv_qp_attr q;
		struct ibv_qp_init_attr qi;

		r = V->query_qp(qp, &q, IBV_QP_STATE | IBV_QP_CAP, &qi);
		check(!r && q.qp_state == IBV_QPS_RTS && q.cap.max_send_wr == SQ_DEPTH &&
			      q.cap.max_send_sge == SQ_SGE && qi.qp_type == IBV_QPT_RC &&
			      q.dest_qp_num == ep->qpn[TQP_RW],
		      "query_qp: RTS, caps %u WR x %u SGE, dest qpn",
		      q.cap.max_send_wr, q.cap.max_send_sge);
	}
	a = (struct ibv_qp_attr){ .qp_state = IBV_QPS_INIT };
	check(V->modify_qp(qp, &a, IBV_QP_STATE) == EINVAL, "RTS->INIT: EINVAL");
	check(ibv_post_recv(qp, &rwr, &rbad) == EOPNOTSUPP && rbad == &rwr,
	      "post_recv: EOPNOTSUPP (RDMA READ/WRITE only)");
	check(ibv_req_notify_cq(in->cq, 0) == EOPNOTSUPP, "req_notify_cq: EOPNOTSUPP");
}

static void test_read_write(struct init *in, struct target_conn *tc)
{
	struct ibv_qp *qp = in->qp[TQP_RW];
	struct ibv_sge sge[3][3];
	struct ibv_send_wr wr[8], *bad = NULL;
	struct ibv_wc wc[8];
	uint8_t got[4096];
	bool ok = true;
	int i, j, n;
	uint64_t k, roff;

	/* READ: 3 WRs x 3 SGEs, only the last signaled. */
	memset(in->local, 0, 65536);
	for (i = 0; i < 3; i++) {
		for (j = 0; j < 3; j++)
			sge[i][j] = (struct ibv_sge){
				.addr = (uintptr_t)in->local + i * 4096 + j * 1000,
				.length = 100 + 10 * j,
				.lkey = in->lmr->lkey,
			};
		set_wr(&wr[i], 100 + i, IBV_WR_RDMA_READ, sge[i], 3,
		       tc->ep.addr[TMR0] + 5000 * i,
		       tc->ep.rkey[TMR0], i == 2 ? IBV_SEND_SIGNALED : 0,
		       i < 2 ? &wr[i + 1] : NULL);
	}
	check(ibv_post_send(qp, wr, &bad) == 0, "READ chain of 3 WRs x 3 SGEs posted");
	n = ibv_poll_cq(in->cq, 8, wc);
	check(n == 1 && wc[0].wr_id == 102 && wc[0].status == IBV_WC_SUCCESS &&
		      wc[0].opcode == IBV_WC_RDMA_READ && wc[0].byte_len == 330 &&
		      wc[0].qp_num == qp->qp_num && wc[0].vendor_err == 0,
	      "READ chain: one completion (the signaled one), byte_len 330, qp_num");
	for (i = 0; i < 3; i++) {
		roff = MR0_OFF + 5000 * i;
		for (j = 0; j < 3; j++) {
			uint8_t *p = in->local + i * 4096 + j * 1000;

			for (k = 0; k < 100 + 10 * (uint64_t)j; k++)
				ok &= p[k] == pat(roff + k);
			roff += 100 + 10 * j;
		}
	}
	check(ok, "READ chain: bytes scattered into the SGEs match the target's arena");

	/* WRITE: 2 WRs x 2 SGEs, both signaled. */
	for (k = 0; k < 8192; k++)
		in->local[k] = (uint8_t)(0xa5 ^ k);
	for (i = 0; i < 2; i++) {
		sge[i][0] = (struct ibv_sge){ .addr = (uintptr_t)in->local + 1000 * i,
					      .length = 300, .lkey = in->lmr->lkey };
		sge[i][1] = (struct ibv_sge){ .addr = (uintptr_t)in->local + 5000 + 1000 * i,
					      .length = 200, .lkey = in->lmr->lkey };
		set_wr(&wr[i], 200 + i, IBV_WR_RDMA_WRITE, sge[i], 2,
		       tc->ep.addr[TMR0] + 100000 + 500 * i, tc->ep.rkey[TMR0],
		       IBV_SEND_SIGNALED, i == 0 ? &wr[1] : NULL);
	}
	check(ibv_post_send(qp, wr, &bad) == 0, "WRITE chain of 2 WRs x 2 SGEs posted");
	n = ibv_poll_cq(in->cq, 8, wc);
	check(n == 2 && wc[0].wr_id == 200 && wc[1].wr_id == 201 &&
		      wc[0].status == IBV_WC_SUCCESS && wc[1].status == IBV_WC_SUCCESS &&
		      wc[0].opcode == IBV_WC_RDMA_WRITE && wc[0].byte_len == 500,
	      "WRITE chain: two completions in post order, opcode RDMA_WRITE");
	ok = target_dump(tc, 'D', MR0_OFF + 100000, 1000, got);
	for (i = 0; ok && i < 2; i++)
		for (k = 0; k < 500; k++) {
			uint64_t src = k < 300 ? 1000 * i + k : 5000 + 1000 * i + k - 300;

			ok &= got[500 * i + k] == (uint8_t)(0xa5 ^ src);
		}
	check(ok, "WRITE chain: the target's arena holds the gathered bytes (target CPU idle during the WRITE)");

	/* Batch polling: 8 signaled WRs, polled 3 + 3 + 2. */
	for (i = 0; i < 8; i++) {
		sge[0][0] = (struct ibv_sge){ .addr = (uintptr_t)in->local,
					      .length = 64, .lkey = in->lmr->lkey };
		set_wr(&wr[i], 300 + i, IBV_WR_RDMA_READ, sge[0], 1,
		       tc->ep.addr[TMR1] + 64 * i, tc->ep.rkey[TMR1],
		       IBV_SEND_SIGNALED, i < 7 ? &wr[i + 1] : NULL);
	}
	check(ibv_post_send(qp, wr, &bad) == 0, "8 signaled READs of a read-only MR posted");
	ok = ibv_poll_cq(in->cq, 3, wc) == 3 && wc[0].wr_id == 300 && wc[2].wr_id == 302;
	ok &= ibv_poll_cq(in->cq, 3, wc) == 3 && wc[0].wr_id == 303 && wc[2].wr_id == 305;
	ok &= ibv_poll_cq(in->cq, 3, wc) == 2 && wc[0].wr_id == 306 && wc[1].wr_id == 307;
	ok &= ibv_poll_cq(in->cq, 3, wc) == 0;
	check(ok, "batch polling: 3 + 3 + 2 in FIFO order, then empty");
}

static void test_dmabuf(struct init *in, struct target_conn *tc)
{
	struct ibv_qp *qp = in->qp[TQP_RW];
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 200,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr wr, *bad;
	struct ibv_wc wc;
	uint8_t got[200];
	bool ok = true;
	int k;

	check(tc->ep.addr[TMR_DMA] == DMA_IOVA, "reg_dmabuf_mr: mr->addr is the iova");
	set_wr(&wr, 400, IBV_WR_RDMA_READ, &sge, 1, DMA_IOVA + 100,
	       tc->ep.rkey[TMR_DMA], IBV_SEND_SIGNALED, NULL);
	ok = ibv_post_send(qp, &wr, &bad) == 0 && ibv_poll_cq(in->cq, 1, &wc) == 1 &&
	     wc.status == IBV_WC_SUCCESS;
	for (k = 0; ok && k < 200; k++)
		ok &= in->local[k] == pat2(DMA_OFF + 100 + k);
	check(ok, "READ of a dmabuf MR by iova (the target closed its fd)");
	for (k = 0; k < 200; k++)
		in->local[k] = (uint8_t)~k;
	set_wr(&wr, 401, IBV_WR_RDMA_WRITE, &sge, 1, DMA_IOVA + 1000,
	       tc->ep.rkey[TMR_DMA], IBV_SEND_SIGNALED, NULL);
	ok = ibv_post_send(qp, &wr, &bad) == 0 && ibv_poll_cq(in->cq, 1, &wc) == 1 &&
	     wc.status == IBV_WC_SUCCESS && target_dump(tc, 'd', DMA_OFF + 1000, 200, got);
	for (k = 0; ok && k < 200; k++)
		ok &= got[k] == (uint8_t)~k;
	check(ok, "WRITE to a dmabuf MR lands at the file offset of the iova");
}

static void test_post_errors(struct init *in, struct target_conn *tc)
{
	struct ibv_qp *qp = in->qp[TQP_RW];
	struct ibv_sge sge[SQ_SGE + 1];
	struct ibv_send_wr wr[SQ_DEPTH + 4], *bad;
	struct ibv_wc wc[SQ_DEPTH + 4];
	int i, r, n;

	for (i = 0; i <= SQ_SGE; i++)
		sge[i] = (struct ibv_sge){ .addr = (uintptr_t)in->local + 64 * i,
					   .length = 64, .lkey = in->lmr->lkey };
	for (i = 0; i < 4; i++)
		set_wr(&wr[i], 500 + i, IBV_WR_RDMA_READ, sge, 1, tc->ep.addr[TMR0],
		       tc->ep.rkey[TMR0], IBV_SEND_SIGNALED, i < 3 ? &wr[i + 1] : NULL);
	wr[2].opcode = IBV_WR_SEND;
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == EINVAL && bad == &wr[2] && n == 2 && wc[1].wr_id == 501,
	      "unsupported opcode (SEND) at WR 2: EINVAL, bad_wr = WR 2, WRs 0-1 done");
	wr[2].opcode = IBV_WR_RDMA_READ;
	wr[1].num_sge = SQ_SGE + 1;
	wr[1].sg_list = sge;
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == EINVAL && bad == &wr[1] && n == 1 && wc[0].wr_id == 500,
	      "num_sge %d > max_send_sge %d at WR 1: EINVAL, bad_wr = WR 1", SQ_SGE + 1,
	      SQ_SGE);
	wr[1].num_sge = 1;
	wr[1].opcode = IBV_WR_RDMA_WRITE;
	wr[1].send_flags |= IBV_SEND_INLINE;
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == EINVAL && bad == &wr[1] && n == 1,
	      "IBV_SEND_INLINE beyond max_inline_data (0) at WR 1: EINVAL, bad_wr = WR 1");
	wr[1].opcode = IBV_WR_RDMA_READ;
	wr[1].send_flags = IBV_SEND_SIGNALED;
	check(qp_state(qp) == IBV_QPS_RTS, "post errors leave the QP in RTS");

	/* The send queue holds SQ_DEPTH outstanding WRs. */
	for (i = 0; i < SQ_DEPTH + 4; i++)
		set_wr(&wr[i], 600 + i, IBV_WR_RDMA_READ, sge, 1, tc->ep.addr[TMR0],
		       tc->ep.rkey[TMR0], IBV_SEND_SIGNALED,
		       i < SQ_DEPTH + 3 ? &wr[i + 1] : NULL);
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	check(r == ENOMEM && bad == &wr[SQ_DEPTH],
	      "%d WRs on a send queue of %d: ENOMEM, bad_wr = WR %d", SQ_DEPTH + 4,
	      SQ_DEPTH, SQ_DEPTH);
	n = wait_wc(in->cq, wc, SQ_DEPTH, 100);
	check(n == SQ_DEPTH && wc[SQ_DEPTH - 1].wr_id == 600 + SQ_DEPTH - 1,
	      "the %d accepted WRs complete", SQ_DEPTH);
	/* Unsignaled WRs stay outstanding until a later signaled one is polled. */
	for (i = 0; i < SQ_DEPTH + 1; i++)
		wr[i].send_flags = i == SQ_DEPTH - 1 ? IBV_SEND_SIGNALED : 0;
	wr[SQ_DEPTH].next = NULL;
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	check(r == ENOMEM && bad == &wr[SQ_DEPTH],
	      "%d unsignaled + 1 signaled fill the queue: next WR ENOMEM", SQ_DEPTH - 1);
	bad = NULL;
	r = ibv_post_send(qp, &wr[SQ_DEPTH], &bad);
	check(r == ENOMEM && bad == &wr[SQ_DEPTH], "still ENOMEM before polling");
	n = ibv_poll_cq(in->cq, 8, wc);
	r = ibv_post_send(qp, &wr[SQ_DEPTH], &bad);
	check(n == 1 && r == 0,
	      "polling the signaled completion retires the unsignaled ones before it");
	wr[SQ_DEPTH].send_flags = IBV_SEND_SIGNALED;
	r = ibv_post_send(qp, &wr[SQ_DEPTH], &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == 0 && n == 1, "queue drained");
}

/* Posts one WR on qp, expects `status` and the QP in ERR, then a FLUSH. */
static void expect_error(struct init *in, struct ibv_qp *qp, struct ibv_send_wr *wr,
			 enum ibv_wc_status status, const char *what,
			 const struct endpoint *ep, uint32_t dqpn, unsigned int access)
{
	struct ibv_send_wr *bad = NULL;
	struct ibv_wc wc[2];
	int r, n;

	wr->send_flags = 0; /* errors complete even when unsignaled */
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 2, wc);
	check(r == 0 && n == 1 && wc[0].status == status && wc[0].wr_id == wr->wr_id &&
		      wc[0].qp_num == qp->qp_num && qp_state(qp) == IBV_QPS_ERR,
	      "%s: %s, QP in ERR", what, ibv_wc_status_str(status));
	if (!(r == 0 && n == 1))
		printf("     got r=%d n=%d status=%s\n", r, n,
		       n > 0 ? ibv_wc_status_str(wc[0].status) : "-");
	check(connect_qp(qp, &ep->gid, ep->lid, dqpn, access) == 0,
	      "  QP reset and reconnected");
}

static void test_completion_errors(struct init *in, struct target_conn *tc)
{
	struct ibv_qp *qp = in->qp[TQP_RW], *qro = in->qp[TQP_RO];
	const unsigned int acc = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 64,
			       .lkey = in->lmr->lkey };
	struct ibv_sge s2;
	struct ibv_send_wr wr[4], *bad;
	struct ibv_wc wc[8];
	const struct endpoint *ep = &tc->ep;
	uint32_t dq = ep->qpn[TQP_RW];
	int r, n, i;

	/* Local protection. */
	s2 = sge;
	s2.lkey ^= 0x1000;
	set_wr(&wr[0], 700, IBV_WR_RDMA_READ, &s2, 1, ep->addr[TMR0], ep->rkey[TMR0], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_LOC_PROT_ERR, "bad lkey", ep, dq, acc);
	s2 = sge;
	s2.addr = (uintptr_t)in->local + LOCAL_LEN - 32;
	set_wr(&wr[0], 701, IBV_WR_RDMA_READ, &s2, 1, ep->addr[TMR0], ep->rkey[TMR0], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_LOC_PROT_ERR, "local SGE past the MR's end", ep, dq,
		     acc);
	s2 = (struct ibv_sge){ .addr = (uintptr_t)in->ro, .length = 64, .lkey = in->romr->lkey };
	set_wr(&wr[0], 702, IBV_WR_RDMA_READ, &s2, 1, ep->addr[TMR0], ep->rkey[TMR0], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_LOC_PROT_ERR,
		     "READ into an MR without LOCAL_WRITE", ep, dq, acc);
	s2 = (struct ibv_sge){ .addr = (uintptr_t)in->other, .length = 64,
			       .lkey = in->othermr->lkey };
	set_wr(&wr[0], 703, IBV_WR_RDMA_WRITE, &s2, 1, ep->addr[TMR0], ep->rkey[TMR0], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_LOC_PROT_ERR, "local MR of another PD", ep, dq, acc);

	/* Remote access. */
	set_wr(&wr[0], 710, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0] ^ 0x1000,
	       0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR, "wrong rkey", ep, dq, acc);
	set_wr(&wr[0], 711, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0] & ~0x80000000u,
	       0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR, "the lkey used as rkey", ep, dq, acc);
	set_wr(&wr[0], 712, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0] + MR0_LEN - 32,
	       ep->rkey[TMR0], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR, "remote range past the MR's end", ep,
		     dq, acc);
	set_wr(&wr[0], 713, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0] - 8, ep->rkey[TMR0], 0,
	       NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR, "remote address before the MR", ep,
		     dq, acc);
	set_wr(&wr[0], 714, IBV_WR_RDMA_WRITE, &sge, 1, ep->addr[TMR1], ep->rkey[TMR1], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR,
		     "WRITE to an MR without REMOTE_WRITE", ep, dq, acc);
	set_wr(&wr[0], 715, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR2], ep->rkey[TMR2], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR,
		     "remote MR in another PD than the target QP", ep, dq, acc);
	set_wr(&wr[0], 716, IBV_WR_RDMA_WRITE, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0], 0, NULL);
	expect_error(in, qro, &wr[0], IBV_WC_REM_ACCESS_ERR,
		     "WRITE through a target QP without REMOTE_WRITE", ep, ep->qpn[TQP_RO],
		     IBV_ACCESS_REMOTE_READ);
	set_wr(&wr[0], 717, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
	       IBV_SEND_SIGNALED, NULL);
	r = ibv_post_send(qro, &wr[0], &bad);
	n = ibv_poll_cq(in->cq, 2, wc);
	check(r == 0 && n == 1 && wc[0].status == IBV_WC_SUCCESS,
	      "READ through the read-only target QP succeeds");

	/* Flush: [ok signaled, bad, ok, ok unsignaled] then a later post. */
	for (i = 0; i < 4; i++)
		set_wr(&wr[i], 720 + i, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0],
		       ep->rkey[TMR0], i == 3 ? 0 : IBV_SEND_SIGNALED, i < 3 ? &wr[i + 1] : NULL);
	wr[1].wr.rdma.rkey ^= 0x1000;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == 0 && n == 4 && wc[0].status == IBV_WC_SUCCESS &&
		      wc[1].status == IBV_WC_REM_ACCESS_ERR && wc[2].status == IBV_WC_WR_FLUSH_ERR &&
		      wc[3].status == IBV_WC_WR_FLUSH_ERR && wc[3].wr_id == 723,
	      "chain [ok, bad rkey, ok, ok unsignaled]: SUCCESS, REM_ACCESS, FLUSH, FLUSH");
	wr[0].next = NULL;
	r = ibv_post_send(qp, &wr[0], &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == 0 && n == 1 && wc[0].status == IBV_WC_WR_FLUSH_ERR && wc[0].wr_id == 720,
	      "a later post on the QP in ERR is accepted and flushed");
	check(connect_qp(qp, &ep->gid, ep->lid, dq, acc) == 0, "  QP reset and reconnected");

	/* Dereg on the target invalidates the rkey at once. */
	check(target_cmd(tc, 'U', TMR1) == 0, "target deregisters its read-only MR");
	set_wr(&wr[0], 730, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR1], ep->rkey[TMR1], 0, NULL);
	expect_error(in, qp, &wr[0], IBV_WC_REM_ACCESS_ERR, "READ with a deregistered rkey", ep, dq,
		     acc);
}

static void test_faults(struct init *in, struct target_conn *tc)
{
	struct ibv_qp *qp = in->qp[TQP_RW];
	const struct endpoint *ep = &tc->ep;
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 64,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr wr[3], *bad;
	struct ibv_wc wc[8];
	struct ibv_context fake = { 0 };
	int r, n, i;

	for (i = 0; i < 3; i++)
		set_wr(&wr[i], 800 + i, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
		       IBV_SEND_SIGNALED, i < 2 ? &wr[i + 1] : NULL);
	check(tq_emu_inject(in->ctx, TQ_EMU_FAULT_POST, 1, 1, ENOMEM) == 0,
	      "inject: next post fails with ENOMEM at WR 1");
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == ENOMEM && bad == &wr[1] && n == 1 && wc[0].wr_id == 800,
	      "injected post failure: ENOMEM, bad_wr = WR 1, WR 0 done");
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == 0 && n == 3, "the injection was used up: next post succeeds");
	check(tq_emu_inject(in->ctx, TQ_EMU_FAULT_POST, 99, 1, EAGAIN) == 0, "inject past the chain");
	bad = NULL;
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == EAGAIN && bad == &wr[2] && n == 2, "'after' past the chain's end hits the last WR");

	check(tq_emu_inject(in->ctx, TQ_EMU_FAULT_COMPLETION, 0, 1, IBV_WC_GENERAL_ERR) == 0,
	      "inject: next WR completes with GENERAL_ERR");
	r = ibv_post_send(qp, wr, &bad);
	n = ibv_poll_cq(in->cq, 8, wc);
	check(r == 0 && n == 3 && wc[0].status == IBV_WC_GENERAL_ERR &&
		      wc[1].status == IBV_WC_WR_FLUSH_ERR && wc[2].status == IBV_WC_WR_FLUSH_ERR &&
		      qp_state(qp) == IBV_QPS_ERR,
	      "injected error completion: GENERAL_ERR, then FLUSH, QP in ERR");
	check(connect_qp(qp, &ep->gid, ep->lid, ep->qpn[TQP_RW],
			 IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE) == 0,
	      "  QP reset and reconnected");
	errno = 0;
	check(tq_emu_inject(in->ctx, 42, 0, 1, 1) == -1 && errno == EINVAL,
	      "inject: unknown kind: -1, EINVAL");
	errno = 0;
	check(tq_emu_inject(&fake, TQ_EMU_FAULT_NONE, 0, 0, 0) == -1 && errno == EINVAL,
	      "inject: a context that is not emulated: -1, EINVAL");
}

/* A loopback pair inside this process, on a local memfd arena. */
struct loop {
	uint8_t *arena;
	struct ibv_mr *mr;
};

static void test_overrun(struct init *in, struct loop *lb)
{
	struct ibv_cq *small, *cq2;
	struct ibv_qp *a, *b;
	union ibv_gid gid;
	struct ibv_port_attr pa;
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 64,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr wr[6], *bad;
	struct ibv_wc wc[8];
	const unsigned int acc = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
	int i, r, n;

	V->query_gid(in->ctx, 1, 0, &gid);
	V->query_port(in->ctx, 1, &pa);
	small = V->create_cq(in->ctx, 4, NULL, NULL, 0);
	a = make_qp(in->pd, small, SQ_DEPTH);
	b = make_qp(in->pd, in->cq, SQ_DEPTH);
	check(small && small->cqe == 4 && a && b &&
		      !connect_qp(a, &gid, pa.lid, b->qp_num, acc) &&
		      !connect_qp(b, &gid, pa.lid, a->qp_num, acc),
	      "loopback QP pair in one process on a CQ of 4");
	for (i = 0; i < 6; i++)
		set_wr(&wr[i], 900 + i, IBV_WR_RDMA_WRITE, &sge, 1,
		       (uintptr_t)lb->arena + 64 * i, lb->mr->rkey, IBV_SEND_SIGNALED,
		       i < 5 ? &wr[i + 1] : NULL);
	r = ibv_post_send(a, wr, &bad);
	check(r == 0 && !memcmp(lb->arena, in->local, 64), "loopback WRITE moved the bytes");
	errno = 0;
	n = ibv_poll_cq(small, 8, wc);
	check(n == -1 && errno == EOVERFLOW, "6 completions into a CQ of 4: poll_cq -1, EOVERFLOW");
	check(qp_state(a) == IBV_QPS_ERR, "the QP on the overrun CQ is in ERR");
	check(V->destroy_cq(small) == EBUSY, "destroy_cq with a QP on it: EBUSY");
	check(!V->destroy_qp(a) && !V->destroy_cq(small), "destroy the QP and the overrun CQ");

	/* Injected overrun. */
	cq2 = V->create_cq(in->ctx, 64, NULL, NULL, 0);
	a = make_qp(in->pd, cq2, SQ_DEPTH);
	check(cq2 && a && !connect_qp(a, &gid, pa.lid, b->qp_num, acc) &&
		      !connect_qp(b, &gid, pa.lid, a->qp_num, acc),
	      "new loopback pair on a CQ of 64");
	wr[0].next = NULL;
	r = ibv_post_send(a, wr, &bad);
	n = ibv_poll_cq(cq2, 8, wc);
	check(r == 0 && n == 1 && wc[0].status == IBV_WC_SUCCESS, "it works before the injection");
	check(tq_emu_inject(in->ctx, TQ_EMU_FAULT_CQ_OVERRUN, 0, 0, 0) == 0,
	      "inject: CQs behave as full");
	r = ibv_post_send(a, wr, &bad);
	errno = 0;
	n = ibv_poll_cq(cq2, 8, wc);
	check(r == 0 && n == -1 && errno == EOVERFLOW && qp_state(a) == IBV_QPS_ERR,
	      "injected overrun: poll_cq -1 EOVERFLOW, QP in ERR");
	check(tq_emu_inject(in->ctx, TQ_EMU_FAULT_NONE, 0, 0, 0) == 0, "inject NONE clears");
	check(!V->destroy_qp(a) && !V->destroy_qp(b) && !V->destroy_cq(cq2),
	      "destroy the loopback QPs and CQ");
}

/* Several threads post and poll on their QPs sharing one CQ. */
#define NTHR 4
#define NOPS 2000

struct thr {
	struct ibv_qp *qp;
	struct ibv_cq *cq;
	uint8_t *src, *dst;
	uint32_t lkey, rkey;
	uint64_t raddr;
	int idx, errors;
};

static int thr_done[NTHR];

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	struct ibv_sge sge;
	struct ibv_send_wr wr, *bad;
	struct ibv_wc wc[16];
	int posted = 0, i, n, k;

	for (k = 0; k < 256; k++)
		t->src[k] = (uint8_t)(t->idx * 31 + k);
	while (__atomic_load_n(&thr_done[t->idx], __ATOMIC_ACQUIRE) < NOPS) {
		if (posted < NOPS &&
		    posted - __atomic_load_n(&thr_done[t->idx], __ATOMIC_ACQUIRE) < 8) {
			bool w = posted % 2 == 0;

			sge = (struct ibv_sge){ .addr = (uintptr_t)(w ? t->src : t->dst),
						.length = 256, .lkey = t->lkey };
			set_wr(&wr, (uint64_t)t->idx << 32 | (uint64_t)posted,
			       w ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ, &sge, 1, t->raddr,
			       t->rkey, IBV_SEND_SIGNALED, NULL);
			if (ibv_post_send(t->qp, &wr, &bad) == 0)
				posted++;
		}
		n = ibv_poll_cq(t->cq, 16, wc);
		if (n < 0) {
			t->errors++;
			break;
		}
		for (i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS)
				__atomic_add_fetch(&t->errors, 1, __ATOMIC_RELAXED);
			__atomic_add_fetch(&thr_done[wc[i].wr_id >> 32], 1, __ATOMIC_RELEASE);
		}
	}
	return NULL;
}

static void test_threads(struct init *in, struct loop *lb)
{
	struct ibv_cq *cq = V->create_cq(in->ctx, 256, NULL, NULL, 0);
	struct ibv_qp *a[NTHR], *b[NTHR];
	struct thr t[NTHR];
	pthread_t th[NTHR];
	union ibv_gid gid;
	struct ibv_port_attr pa;
	const unsigned int acc = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
	bool ok = cq != NULL;
	int i, errors = 0;

	V->query_gid(in->ctx, 1, 0, &gid);
	V->query_port(in->ctx, 1, &pa);
	for (i = 0; i < NTHR; i++) {
		a[i] = make_qp(in->pd, cq, SQ_DEPTH);
		b[i] = make_qp(in->pd, cq, SQ_DEPTH);
		ok &= a[i] && b[i] && !connect_qp(a[i], &gid, pa.lid, b[i]->qp_num, acc) &&
		      !connect_qp(b[i], &gid, pa.lid, a[i]->qp_num, acc);
		t[i] = (struct thr){ .qp = a[i], .cq = cq,
				     .src = in->local + 65536 + 1024 * i,
				     .dst = in->local + 131072 + 1024 * i,
				     .lkey = in->lmr->lkey, .rkey = lb->mr->rkey,
				     .raddr = (uintptr_t)lb->arena + 4096 * (i + 1), .idx = i };
	}
	check(ok, "%d loopback QP pairs sharing one CQ", NTHR);
	for (i = 0; ok && i < NTHR; i++)
		pthread_create(&th[i], NULL, thr_main, &t[i]);
	for (i = 0; ok && i < NTHR; i++) {
		pthread_join(th[i], NULL);
		errors += t[i].errors;
		ok &= thr_done[i] == NOPS && !memcmp(t[i].src, t[i].dst, 256);
	}
	check(ok && errors == 0,
	      "%d threads x %d WRITE/READ on their QPs, polling the shared CQ: all done, data intact",
	      NTHR, NOPS);
	for (i = 0; i < NTHR; i++) {
		if (a[i])
			V->destroy_qp(a[i]);
		if (b[i])
			V->destroy_qp(b[i]);
	}
	if (cq)
		V->destroy_cq(cq);
}

/* Lost packets: the first poll finds nothing; RETRY_EXC after the timeout. */
static void expect_retry(struct init *in, struct ibv_qp *qp, const struct endpoint *ep,
			 const char *what)
{
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 64,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr wr[2], *bad;
	struct ibv_wc wc[4];
	uint64_t t0, dt;
	int r, n0, n;

	set_wr(&wr[1], 1001, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
	       IBV_SEND_SIGNALED, NULL);
	set_wr(&wr[0], 1000, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
	       IBV_SEND_SIGNALED, &wr[1]);
	t0 = now_ns();
	r = ibv_post_send(qp, wr, &bad);
	n0 = ibv_poll_cq(in->cq, 4, wc);
	n = wait_wc(in->cq, wc, 2, 2000);
	dt = now_ns() - t0;
	check(r == 0 && n0 == 0 && n == 2 && wc[0].status == IBV_WC_RETRY_EXC_ERR &&
		      wc[1].status == IBV_WC_WR_FLUSH_ERR && dt >= RETRY_NS && dt < 1000000000ull,
	      "%s: nothing at first, RETRY_EXC after %.0f ms (timeout %.0f ms), then FLUSH", what,
	      dt / 1e6, RETRY_NS / 1e6);
}

/* A QP waiting out its timeout does not hold back another QP on its CQ. */
static void test_retry_other_qp(struct init *in, struct target_conn *tc)
{
	const struct endpoint *ep = &tc->ep;
	struct ibv_sge sge = { .addr = (uintptr_t)in->local, .length = 64,
			       .lkey = in->lmr->lkey };
	struct ibv_send_wr lost, live, *bad;
	struct ibv_wc wc[4];
	int r1, r2, n1, n2;

	check(connect_qp(in->qp[TQP_RO], &ep->gid, ep->lid, ep->qpn[TQP_RO],
			 IBV_ACCESS_REMOTE_READ) == 0,
	      "QP reconnected to the destroyed peer QP's number");
	set_wr(&lost, 1200, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
	       IBV_SEND_SIGNALED, NULL);
	set_wr(&live, 1201, IBV_WR_RDMA_READ, &sge, 1, ep->addr[TMR0], ep->rkey[TMR0],
	       IBV_SEND_SIGNALED, NULL);
	r1 = ibv_post_send(in->qp[TQP_RO], &lost, &bad);
	r2 = ibv_post_send(in->qp[TQP_RW], &live, &bad);
	n1 = ibv_poll_cq(in->cq, 4, wc);
	check(r1 == 0 && r2 == 0 && n1 == 1 && wc[0].wr_id == 1201 &&
		      wc[0].status == IBV_WC_SUCCESS,
	      "a live QP's completion passes a lost WR of another QP on the same CQ");
	n2 = wait_wc(in->cq, wc, 1, 2000);
	check(n2 == 1 && wc[0].wr_id == 1200 && wc[0].status == IBV_WC_RETRY_EXC_ERR,
	      "the lost WR completes RETRY_EXC later");
}

int main(void)
{
	const unsigned int acc = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
	struct init in = { 0 };
	struct target_conn tc = { 0 };
	struct loop lb = { 0 };
	struct tq_emu_counts c;
	struct ibv_port_attr pa;
	struct ibv_sge sge;
	struct ibv_send_wr wr, *bad;
	struct ibv_wc wc;
	uint8_t got[256];
	int status, i, lfd;
	bool ok;

	signal(SIGPIPE, SIG_IGN);
	V = tq_emu_verbs();
	test_devices();

	in.ctx = open_dev("emu0");
	check(in.ctx != NULL, "open emu0");
	if (!in.ctx)
		return 1;
	test_queries(&in);
	in.pd = V->alloc_pd(in.ctx);
	in.pd_other = V->alloc_pd(in.ctx);
	in.cq = V->create_cq(in.ctx, 64, NULL, NULL, 0);
	in.local = aligned_alloc(4096, LOCAL_LEN);
	in.ro = aligned_alloc(4096, 65536);
	in.other = aligned_alloc(4096, 65536);
	in.lmr = V->reg_mr(in.pd, in.local, LOCAL_LEN, IBV_ACCESS_LOCAL_WRITE);
	in.romr = V->reg_mr(in.pd, in.ro, 65536, 0);
	in.othermr = V->reg_mr(in.pd_other, in.other, 65536, IBV_ACCESS_LOCAL_WRITE);
	check(in.pd && in.pd_other && in.cq && in.lmr && in.romr && in.othermr &&
		      in.lmr->lkey && in.lmr->lkey != in.lmr->rkey &&
		      in.lmr->addr == in.local && in.lmr->length == LOCAL_LEN &&
		      in.lmr->pd == in.pd && in.lmr->context == in.ctx,
	      "PDs, CQ, local MRs on malloc'd memory (lkey 0x%x, rkey 0x%x)",
	      in.lmr ? in.lmr->lkey : 0, in.lmr ? in.lmr->rkey : 0);
	if (!in.lmr || !in.romr || !in.othermr || !in.cq)
		return 1;
	test_reg_refusals(&in);
	test_qp_refusals(&in);
	for (i = 0; i < TNQP; i++) {
		in.qp[i] = make_qp(in.pd, in.cq, SQ_DEPTH);
		in.ep.qpn[i] = in.qp[i] ? in.qp[i]->qp_num : 0;
	}
	check(in.qp[0] && in.qp[1] && in.qp[0]->qp_num != in.qp[1]->qp_num,
	      "two RC QPs with distinct qpns");
	V->query_gid(in.ctx, 1, 0, &in.ep.gid);
	V->query_port(in.ctx, 1, &pa);
	in.ep.lid = pa.lid;

	/* Loopback arena: a memfd of this process, remote-accessible. */
	lfd = memfd_create("loop-arena", MFD_CLOEXEC);
	if (lfd < 0 || ftruncate(lfd, 65536))
		return 1;
	lb.arena = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, lfd, 0);
	lb.mr = V->reg_mr(in.pd, lb.arena, 65536, IBV_ACCESS_LOCAL_WRITE | acc);
	check(lb.mr != NULL, "reg_mr with remote access on a memfd mapping");

	ok = start_target(&tc, &in.ep) == 0;
	check(ok, "target process %d started, endpoint exchanged", (int)tc.pid);
	test_state_machine(&in, in.qp[TQP_RW], &tc.ep);
	check(connect_qp(in.qp[TQP_RO], &tc.ep.gid, tc.ep.lid, tc.ep.qpn[TQP_RO],
			 IBV_ACCESS_REMOTE_READ) == 0,
	      "second QP connected");
	test_read_write(&in, &tc);
	test_dmabuf(&in, &tc);
	test_post_errors(&in, &tc);
	test_completion_errors(&in, &tc);
	test_faults(&in, &tc);
	test_overrun(&in, &lb);
	test_threads(&in, &lb);

	/* Peer QP destroyed: lost packets. */
	check(target_cmd(&tc, 'Q', TQP_RO) == 0, "target destroys its second QP");
	expect_retry(&in, in.qp[TQP_RO], &tc.ep, "READ to a destroyed peer QP");
	check(qp_state(in.qp[TQP_RO]) == IBV_QPS_ERR, "the QP is in ERR");
	test_retry_other_qp(&in, &tc);

	/* Peer process killed. */
	kill(tc.pid, SIGKILL);
	waitpid(tc.pid, &status, 0);
	close(tc.sock);
	check(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "target killed with SIGKILL");
	expect_retry(&in, in.qp[TQP_RW], &tc.ep, "READ to a killed peer");

	/* The peer restarts: a new process, a new endpoint. */
	ok = V->modify_qp(in.qp[TQP_RW], &(struct ibv_qp_attr){ .qp_state = IBV_QPS_RESET },
			  IBV_QP_STATE) == 0 &&
	     V->modify_qp(in.qp[TQP_RO], &(struct ibv_qp_attr){ .qp_state = IBV_QPS_RESET },
			  IBV_QP_STATE) == 0;
	tq_emu_counts(&c);
	check(ok && c.remote_maps == 0,
	      "both QPs reset: no QP talks to another process, mappings unmapped (%d left)",
	      c.remote_maps);
	ok = start_target(&tc, &in.ep) == 0;
	check(ok, "target restarted as process %d", (int)tc.pid);
	ok = connect_qp(in.qp[TQP_RW], &tc.ep.gid, tc.ep.lid, tc.ep.qpn[TQP_RW], acc) == 0 &&
	     connect_qp(in.qp[TQP_RO], &tc.ep.gid, tc.ep.lid, tc.ep.qpn[TQP_RO],
			IBV_ACCESS_REMOTE_READ) == 0;
	check(ok, "QPs re-established to the restarted target");
	sge = (struct ibv_sge){ .addr = (uintptr_t)in.local, .length = 256, .lkey = in.lmr->lkey };
	for (i = 0; i < 256; i++)
		in.local[i] = (uint8_t)(i ^ 0x3c);
	set_wr(&wr, 1100, IBV_WR_RDMA_WRITE, &sge, 1, tc.ep.addr[TMR0] + 4096, tc.ep.rkey[TMR0],
	       IBV_SEND_SIGNALED, NULL);
	ok = ibv_post_send(in.qp[TQP_RW], &wr, &bad) == 0 && ibv_poll_cq(in.cq, 1, &wc) == 1 &&
	     wc.status == IBV_WC_SUCCESS && target_dump(&tc, 'D', MR0_OFF + 4096, 256, got) &&
	     !memcmp(got, in.local, 256);
	check(ok, "WRITE to the restarted target");
	set_wr(&wr, 1101, IBV_WR_RDMA_READ, &sge, 1, tc.ep.addr[TMR1] + 10, tc.ep.rkey[TMR1],
	       IBV_SEND_SIGNALED, NULL);
	ok = ibv_post_send(in.qp[TQP_RO], &wr, &bad) == 0 && ibv_poll_cq(in.cq, 1, &wc) == 1 &&
	     wc.status == IBV_WC_SUCCESS;
	for (i = 0; ok && i < 256; i++)
		ok &= in.local[i] == pat(MR1_OFF + 10 + i);
	check(ok, "READ from the restarted target");

	/* Teardown, with the refusals of live children. */
	check(V->dealloc_pd(in.pd) == EBUSY, "dealloc_pd with live MRs and QPs: EBUSY");
	check(V->close_device(in.ctx) == EBUSY, "close_device with live objects: EBUSY");
	check(target_cmd(&tc, 'X', 0) == 'K',
	      "target tears down: its counts back to what it started with");
	waitpid(tc.pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "target exited 0");
	close(tc.sock);
	ok = !V->destroy_qp(in.qp[0]) && !V->destroy_qp(in.qp[1]) && !V->dereg_mr(in.lmr) &&
	     !V->dereg_mr(in.romr) && !V->dereg_mr(in.othermr) && !V->dereg_mr(lb.mr) &&
	     !V->destroy_cq(in.cq) && !V->dealloc_pd(in.pd) && !V->dealloc_pd(in.pd_other);
	check(ok, "destroy QPs, MRs, CQ, PDs");
	tq_emu_counts(&c);
	check(c.contexts == 1 && c.pds == 0 && c.mrs == 0 && c.cqs == 0 && c.qps == 0,
	      "counts before close_device: 1 context, nothing else");
	check(V->close_device(in.ctx) == 0, "close_device");
	tq_emu_counts(&c);
	check(!c.contexts && !c.pds && !c.mrs && !c.cqs && !c.qps && !c.remote_maps,
	      "counts back to zero (contexts %d pds %d mrs %d cqs %d qps %d remote_maps %d)",
	      c.contexts, c.pds, c.mrs, c.cqs, c.qps, c.remote_maps);
	munmap(lb.arena, 65536);
	close(lfd);
	free(in.local);
	free(in.ro);
	free(in.other);
	printf("%s: %d checks, %d failed\n", failures ? "FAIL" : "PASS", checks, failures);
	return failures ? 1 : 0;
}
