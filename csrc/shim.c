//go:build linux && cgo && rdma

// SPDX-License-Identifier: Apache-2.0
/*
 * shim.c — see shim.h. Two verbs providers sit behind struct tq_verbs:
 * libibverbs itself (hardware, through the kernel) and the emulated device
 * of emu.c. A device whose name starts with "emu" is the emulated one;
 * every other name is looked up in libibverbs.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static void tq_set_err(struct tq_err *err, const char *verb, int errnum)
{
	if (!err)
		return;
	strncpy(err->verb, verb, sizeof(err->verb) - 1);
	err->verb[sizeof(err->verb) - 1] = '\0';
	err->errnum = errnum ? errnum : EIO;
}

/* libibverbs: several verbs are macros or inline wrappers in verbs.h, so
 * each entry is a small function that calls the verb as a program would. */
static struct ibv_device **tq_hw_get_device_list(int *n)
{
	return ibv_get_device_list(n);
}

static void tq_hw_free_device_list(struct ibv_device **l)
{
	ibv_free_device_list(l);
}

static const char *tq_hw_get_device_name(struct ibv_device *dev)
{
	return ibv_get_device_name(dev);
}

static struct ibv_context *tq_hw_open_device(struct ibv_device *dev)
{
	return ibv_open_device(dev);
}

static int tq_hw_close_device(struct ibv_context *ctx)
{
	return ibv_close_device(ctx);
}

static int tq_hw_query_device(struct ibv_context *ctx, struct ibv_device_attr *attr)
{
	return ibv_query_device(ctx, attr);
}

static int tq_hw_query_port(struct ibv_context *ctx, uint8_t port, struct ibv_port_attr *attr)
{
	return ibv_query_port(ctx, port, attr);
}

static int tq_hw_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid)
{
	return ibv_query_gid(ctx, port, index, gid);
}

static struct ibv_pd *tq_hw_alloc_pd(struct ibv_context *ctx)
{
	return ibv_alloc_pd(ctx);
}

static int tq_hw_dealloc_pd(struct ibv_pd *pd)
{
	return ibv_dealloc_pd(pd);
}

static struct ibv_mr *tq_hw_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access)
{
	return ibv_reg_mr(pd, addr, len, access);
}

static struct ibv_mr *tq_hw_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t off, size_t len, uint64_t iova, int fd,
					  int access)
{
	return ibv_reg_dmabuf_mr(pd, off, len, iova, fd, access);
}

static int tq_hw_dereg_mr(struct ibv_mr *mr)
{
	return ibv_dereg_mr(mr);
}

static struct ibv_cq *tq_hw_create_cq(struct ibv_context *ctx, int cqe, void *cq_ctx, struct ibv_comp_channel *ch,
				      int vec)
{
	return ibv_create_cq(ctx, cqe, cq_ctx, ch, vec);
}

static int tq_hw_destroy_cq(struct ibv_cq *cq)
{
	return ibv_destroy_cq(cq);
}

static struct ibv_qp *tq_hw_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
	return ibv_create_qp(pd, attr);
}

static int tq_hw_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask)
{
	return ibv_modify_qp(qp, attr, mask);
}

static int tq_hw_query_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask, struct ibv_qp_init_attr *init)
{
	return ibv_query_qp(qp, attr, mask, init);
}

static int tq_hw_destroy_qp(struct ibv_qp *qp)
{
	return ibv_destroy_qp(qp);
}

static const struct tq_verbs tq_hw_verbs = {
	.name = "ibverbs",
	.get_device_list = tq_hw_get_device_list,
	.free_device_list = tq_hw_free_device_list,
	.get_device_name = tq_hw_get_device_name,
	.open_device = tq_hw_open_device,
	.close_device = tq_hw_close_device,
	.query_device = tq_hw_query_device,
	.query_port = tq_hw_query_port,
	.query_gid = tq_hw_query_gid,
	.alloc_pd = tq_hw_alloc_pd,
	.dealloc_pd = tq_hw_dealloc_pd,
	.reg_mr = tq_hw_reg_mr,
	.reg_dmabuf_mr = tq_hw_reg_dmabuf_mr,
	.dereg_mr = tq_hw_dereg_mr,
	.create_cq = tq_hw_create_cq,
	.destroy_cq = tq_hw_destroy_cq,
	.create_qp = tq_hw_create_qp,
	.modify_qp = tq_hw_modify_qp,
	.query_qp = tq_hw_query_qp,
	.destroy_qp = tq_hw_destroy_qp,
};

static const struct tq_verbs *tq_verbs_for(const char *name)
{
	if (strncmp(name, "emu", 3) == 0)
		return tq_emu_verbs();
	return &tq_hw_verbs;
}

/* tq_list appends the devices of v to out[*n..max). */
static void tq_list(const struct tq_verbs *v, int emulated, struct tq_devinfo *out, int max, int *n)
{
	struct ibv_device **list;
	int num = 0;

	list = v->get_device_list(&num);
	if (!list)
		return; /* no kernel support, no devices: none to list */
	for (int i = 0; i < num && *n < max; i++) {
		strncpy(out[*n].name, v->get_device_name(list[i]), TQ_SHIM_NAME_LEN - 1);
		out[*n].name[TQ_SHIM_NAME_LEN - 1] = '\0';
		out[*n].emulated = emulated;
		(*n)++;
	}
	v->free_device_list(list);
}

int tq_shim_devices(struct tq_devinfo *out, int max, struct tq_err *err)
{
	int n = 0;

	(void)err;
	tq_list(&tq_hw_verbs, 0, out, max, &n);
	tq_list(tq_emu_verbs(), 1, out, max, &n);
	return n;
}

static uint8_t tq_rd_atom(int dev_max)
{
	if (dev_max < 0)
		return 0;
	return dev_max < TQ_SHIM_RD_ATOM ? (uint8_t)dev_max : TQ_SHIM_RD_ATOM;
}

struct tq_dev *tq_shim_open(const char *name, uint8_t port, uint8_t gid_index, struct tq_err *err)
{
	const struct tq_verbs *v = tq_verbs_for(name);
	struct ibv_device **list;
	struct ibv_device *dev = NULL;
	struct ibv_device_attr da;
	struct tq_dev *d;
	int num = 0, ret;

	d = calloc(1, sizeof(*d));
	if (!d) {
		tq_set_err(err, "calloc", ENOMEM);
		return NULL;
	}
	d->v = v;
	d->port = port;
	d->gid_index = gid_index;
	d->emulated = v != &tq_hw_verbs;
	strncpy(d->name, name, sizeof(d->name) - 1);

	list = v->get_device_list(&num);
	if (!list) {
		tq_set_err(err, "ibv_get_device_list", errno);
		goto err_free;
	}
	for (int i = 0; i < num; i++) {
		if (strcmp(v->get_device_name(list[i]), name) == 0) {
			dev = list[i];
			break;
		}
	}
	if (!dev) {
		tq_set_err(err, "ibv_get_device_list", ENODEV);
		goto err_list;
	}
	d->ctx = v->open_device(dev);
	if (!d->ctx) {
		tq_set_err(err, "ibv_open_device", errno);
		goto err_list;
	}
	memset(&da, 0, sizeof(da));
	ret = v->query_device(d->ctx, &da);
	if (ret) {
		tq_set_err(err, "ibv_query_device", ret > 0 ? ret : errno);
		goto err_close;
	}
	d->max_rd_atomic = tq_rd_atom(da.max_qp_init_rd_atom);
	d->max_dest_rd_atomic = tq_rd_atom(da.max_qp_rd_atom);
	d->pd = v->alloc_pd(d->ctx);
	if (!d->pd) {
		tq_set_err(err, "ibv_alloc_pd", errno);
		goto err_close;
	}
	v->free_device_list(list);
	return d;

err_close:
	v->close_device(d->ctx);
err_list:
	v->free_device_list(list);
err_free:
	free(d);
	return NULL;
}

/* A close that fails part way may be tried again: each handle is cleared
 * once freed, so it is freed once. */
int tq_shim_close(struct tq_dev *d, struct tq_err *err)
{
	int ret;

	if (d->pd) {
		ret = d->v->dealloc_pd(d->pd);
		if (ret) {
			tq_set_err(err, "ibv_dealloc_pd", ret > 0 ? ret : errno);
			return -1;
		}
		d->pd = NULL;
	}
	ret = d->v->close_device(d->ctx);
	if (ret) {
		tq_set_err(err, "ibv_close_device", ret > 0 ? ret : errno);
		return -1;
	}
	free(d);
	return 0;
}

int tq_shim_query_port(struct tq_dev *d, struct tq_port_info *out, struct tq_err *err)
{
	struct ibv_port_attr pa;
	struct ibv_device_attr da;
	union ibv_gid gid;
	int ret;

	memset(&pa, 0, sizeof(pa));
	ret = d->v->query_port(d->ctx, d->port, &pa);
	if (ret) {
		tq_set_err(err, "ibv_query_port", ret > 0 ? ret : errno);
		return -1;
	}
	ret = d->v->query_gid(d->ctx, d->port, d->gid_index, &gid);
	if (ret) {
		tq_set_err(err, "ibv_query_gid", ret > 0 ? ret : errno);
		return -1;
	}
	memset(&da, 0, sizeof(da));
	ret = d->v->query_device(d->ctx, &da);
	if (ret) {
		tq_set_err(err, "ibv_query_device", ret > 0 ? ret : errno);
		return -1;
	}
	*out = (struct tq_port_info){
		.lid = pa.lid,
		.state = pa.state,
		.active_mtu = pa.active_mtu,
		.link_layer = pa.link_layer,
		.max_qp_wr = (uint32_t)da.max_qp_wr,
		.max_sge = (uint32_t)da.max_sge,
		.max_cqe = da.max_cqe,
	};
	memcpy(out->gid, gid.raw, sizeof(out->gid));
	return 0;
}

/* tq_no_pd fails a verb that needs the protection domain of a device
 * whose close freed it already. */
static int tq_no_pd(struct tq_dev *d, const char *verb, struct tq_err *err)
{
	if (d->pd)
		return 0;
	tq_set_err(err, verb, EBADF);
	return 1;
}

struct ibv_mr *tq_shim_reg_mr(struct tq_dev *d, void *addr, size_t len, int access, struct tq_err *err)
{
	struct ibv_mr *mr;

	if (tq_no_pd(d, "ibv_reg_mr", err))
		return NULL;
	mr = d->v->reg_mr(d->pd, addr, len, access);
	if (!mr)
		tq_set_err(err, "ibv_reg_mr", errno);
	return mr;
}

struct ibv_mr *tq_shim_reg_dmabuf_mr(struct tq_dev *d, int fd, uint64_t offset, size_t len, uint64_t iova,
				     int access, struct tq_err *err)
{
	struct ibv_mr *mr;

	if (tq_no_pd(d, "ibv_reg_dmabuf_mr", err))
		return NULL;
	if (!d->v->reg_dmabuf_mr) {
		tq_set_err(err, "ibv_reg_dmabuf_mr", EOPNOTSUPP);
		return NULL;
	}
	mr = d->v->reg_dmabuf_mr(d->pd, offset, len, iova, fd, access);
	if (!mr)
		tq_set_err(err, "ibv_reg_dmabuf_mr", errno);
	return mr;
}

int tq_shim_dereg_mr(struct tq_dev *d, struct ibv_mr *mr, struct tq_err *err)
{
	int ret = d->v->dereg_mr(mr);

	if (ret) {
		tq_set_err(err, "ibv_dereg_mr", ret > 0 ? ret : errno);
		return -1;
	}
	return 0;
}

struct ibv_cq *tq_shim_create_cq(struct tq_dev *d, int cqe, struct tq_err *err)
{
	struct ibv_cq *cq = d->v->create_cq(d->ctx, cqe, NULL, NULL, 0);

	if (!cq)
		tq_set_err(err, "ibv_create_cq", errno);
	return cq;
}

int tq_shim_destroy_cq(struct tq_dev *d, struct ibv_cq *cq, struct tq_err *err)
{
	int ret = d->v->destroy_cq(cq);

	if (ret) {
		tq_set_err(err, "ibv_destroy_cq", ret > 0 ? ret : errno);
		return -1;
	}
	return 0;
}

struct ibv_qp *tq_shim_create_qp(struct tq_dev *d, struct ibv_cq *cq, uint32_t max_wr, uint32_t max_sge,
				 struct tq_err *err)
{
	struct ibv_qp_init_attr attr = {
		.send_cq = cq,
		.recv_cq = cq,
		.cap = {
			.max_send_wr = max_wr,
			.max_recv_wr = 1,
			.max_send_sge = max_sge,
			.max_recv_sge = 1,
		},
		.qp_type = IBV_QPT_RC,
		.sq_sig_all = 0,
	};
	struct ibv_qp *qp;

	if (tq_no_pd(d, "ibv_create_qp", err))
		return NULL;
	qp = d->v->create_qp(d->pd, &attr);
	if (!qp)
		tq_set_err(err, "ibv_create_qp", errno);
	return qp;
}

static int tq_modify(struct tq_dev *d, struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask, const char *verb,
		     struct tq_err *err)
{
	int ret = d->v->modify_qp(qp, attr, mask);

	if (ret) {
		tq_set_err(err, verb, ret > 0 ? ret : errno);
		return -1;
	}
	return 0;
}

int tq_shim_qp_init(struct tq_dev *d, struct ibv_qp *qp, int access, struct tq_err *err)
{
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_INIT,
		.pkey_index = 0,
		.port_num = d->port,
		.qp_access_flags = access,
	};

	return tq_modify(d, qp, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
			 "ibv_modify_qp(INIT)", err);
}

int tq_shim_qp_rtr(struct tq_dev *d, struct ibv_qp *qp, uint32_t dest_qpn, uint32_t rq_psn, uint16_t dlid,
		   const uint8_t *dgid, int mtu, uint8_t max_dest_rd_atomic, struct tq_err *err)
{
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_RTR,
		.path_mtu = mtu,
		.dest_qp_num = dest_qpn,
		.rq_psn = rq_psn,
		.max_dest_rd_atomic = max_dest_rd_atomic,
		.min_rnr_timer = 12,
		.ah_attr = {
			.is_global = 1,
			.dlid = dlid,
			.sl = 0,
			.src_path_bits = 0,
			.port_num = d->port,
			/* RoCE v2 packets are routed: a hop limit of 1
			 * would drop them at the first router. */
			.grh = {
				.hop_limit = 64,
				.sgid_index = d->gid_index,
			},
		},
	};

	memcpy(attr.ah_attr.grh.dgid.raw, dgid, 16);
	return tq_modify(d, qp, &attr,
			 IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
				 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
			 "ibv_modify_qp(RTR)", err);
}

int tq_shim_qp_rts(struct tq_dev *d, struct ibv_qp *qp, uint32_t sq_psn, uint8_t timeout, uint8_t retry_cnt,
		   uint8_t max_rd_atomic, struct tq_err *err)
{
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_RTS,
		.timeout = timeout,
		.retry_cnt = retry_cnt,
		.rnr_retry = 7,
		.sq_psn = sq_psn,
		.max_rd_atomic = max_rd_atomic,
	};

	return tq_modify(d, qp, &attr,
			 IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
				 IBV_QP_MAX_QP_RD_ATOMIC,
			 "ibv_modify_qp(RTS)", err);
}

int tq_shim_qp_error(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err)
{
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_ERR,
	};

	return tq_modify(d, qp, &attr, IBV_QP_STATE, "ibv_modify_qp(ERR)", err);
}

int tq_shim_qp_state(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err)
{
	struct ibv_qp_attr attr;
	struct ibv_qp_init_attr init;
	int ret;

	memset(&attr, 0, sizeof(attr));
	ret = d->v->query_qp(qp, &attr, IBV_QP_STATE, &init);
	if (ret) {
		tq_set_err(err, "ibv_query_qp", ret > 0 ? ret : errno);
		return -1;
	}
	return attr.qp_state;
}

int tq_shim_qp_rd_atomic(struct tq_dev *d, struct ibv_qp *qp, uint8_t *max_rd_atomic, uint8_t *max_dest_rd_atomic,
			 struct tq_err *err)
{
	struct ibv_qp_attr attr;
	struct ibv_qp_init_attr init;
	int ret;

	memset(&attr, 0, sizeof(attr));
	ret = d->v->query_qp(qp, &attr, IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_MAX_DEST_RD_ATOMIC, &init);
	if (ret) {
		tq_set_err(err, "ibv_query_qp", ret > 0 ? ret : errno);
		return -1;
	}
	*max_rd_atomic = attr.max_rd_atomic;
	*max_dest_rd_atomic = attr.max_dest_rd_atomic;
	return 0;
}

int tq_shim_qp_timeout(struct tq_dev *d, struct ibv_qp *qp, uint8_t *timeout, uint8_t *retry_cnt,
		       struct tq_err *err)
{
	struct ibv_qp_attr attr;
	struct ibv_qp_init_attr init;
	int ret;

	memset(&attr, 0, sizeof(attr));
	ret = d->v->query_qp(qp, &attr, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT, &init);
	if (ret) {
		tq_set_err(err, "ibv_query_qp", ret > 0 ? ret : errno);
		return -1;
	}
	*timeout = attr.timeout;
	*retry_cnt = attr.retry_cnt;
	return 0;
}

int tq_shim_destroy_qp(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err)
{
	int ret = d->v->destroy_qp(qp);

	if (ret) {
		tq_set_err(err, "ibv_destroy_qp", ret > 0 ? ret : errno);
		return -1;
	}
	return 0;
}

int tq_shim_post(struct ibv_qp *qp, const struct tq_wr *wrs, int n, const struct tq_sge *sges, int nsges,
		 int *bad, struct tq_err *err)
{
	struct ibv_send_wr chain[TQ_SHIM_MAX_CHAIN];
	struct ibv_sge sg[TQ_SHIM_MAX_SGE];
	struct ibv_send_wr *bad_wr = NULL;
	int used = 0, ret;

	*bad = 0;
	if (n <= 0 || n > TQ_SHIM_MAX_CHAIN) {
		tq_set_err(err, "ibv_post_send", EINVAL);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const struct tq_wr *w = &wrs[i];

		/* Only w->remote_addr and w->rkey are carried (wr.rdma): any
		 * other opcode would run on fields left zero (a SEND waits for
		 * a receive never posted, BIND_MW has the provider follow a
		 * NULL wr.bind_mw.mw). Nothing is posted yet: *bad stays 0. */
		if (w->opcode != IBV_WR_RDMA_READ && w->opcode != IBV_WR_RDMA_WRITE) {
			tq_set_err(err, "ibv_post_send", EINVAL);
			return -1;
		}
		/* In 64 bits: a 32-bit sum wraps, and a huge first_sge or
		 * num_sge would pass and read or write out of bounds. Nothing
		 * is posted yet: *bad stays 0. */
		if ((uint64_t)w->first_sge + w->num_sge > (uint64_t)nsges ||
		    (uint64_t)used + w->num_sge > sizeof(sg) / sizeof(sg[0])) {
			tq_set_err(err, "ibv_post_send", EINVAL);
			return -1;
		}
		for (uint32_t k = 0; k < w->num_sge; k++) {
			const struct tq_sge *s = &sges[w->first_sge + k];

			sg[used + k] = (struct ibv_sge){
				.addr = s->addr,
				.length = s->length,
				.lkey = s->lkey,
			};
		}
		chain[i] = (struct ibv_send_wr){
			.wr_id = w->wr_id,
			.next = i + 1 < n ? &chain[i + 1] : NULL,
			.sg_list = &sg[used],
			.num_sge = (int)w->num_sge,
			.opcode = (enum ibv_wr_opcode)w->opcode,
			.send_flags = w->signaled ? IBV_SEND_SIGNALED : 0,
			.wr.rdma = {
				.remote_addr = w->remote_addr,
				.rkey = w->rkey,
			},
		};
		used += w->num_sge;
	}
	ret = ibv_post_send(qp, chain, &bad_wr);
	if (ret) {
		*bad = bad_wr ? (int)(bad_wr - chain) : 0;
		tq_set_err(err, "ibv_post_send", ret > 0 ? ret : errno);
		return -1;
	}
	return 0;
}

int tq_shim_poll(struct ibv_cq *cq, struct tq_wc *out, int n, struct tq_err *err)
{
	struct ibv_wc wc[64];
	int got;

	if (n > 64)
		n = 64;
	/* Providers need not set errno when polling fails (mlx5 does not):
	 * a stale one from an earlier call must not be reported. */
	errno = 0;
	got = ibv_poll_cq(cq, n, wc);
	if (got < 0) {
		tq_set_err(err, "ibv_poll_cq", errno ? errno : EIO);
		return -1;
	}
	for (int i = 0; i < got; i++) {
		out[i] = (struct tq_wc){
			.wr_id = wc[i].wr_id,
			.status = wc[i].status,
			.opcode = wc[i].opcode,
			.byte_len = wc[i].byte_len,
			.qp_num = wc[i].qp_num,
			.vendor_err = wc[i].vendor_err,
		};
	}
	return got;
}

const char *tq_shim_wc_status_str(int status)
{
	return ibv_wc_status_str((enum ibv_wc_status)status);
}
