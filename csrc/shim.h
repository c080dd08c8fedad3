/*
 * shim.h — the thin C layer between Go (transport/rdma) and libibverbs.
 *
 * Every function is one crossing of cgo for a batch of work: post a chain
 * of work requests, poll a batch of completions. No policy lives here:
 * retries, timeouts, slicing and state belong to Go.
 *
 * Ownership. tq_shim_open returns a struct tq_dev the caller owns and
 * frees with tq_shim_close; the verbs objects made through a device (MRs,
 * CQs, QPs) are owned by the caller too and must be destroyed before the
 * device is closed. The shim never keeps a pointer it was handed: arrays
 * passed in (work requests, SGEs, completions) are read or written during
 * the call only. Memory registered with tq_shim_reg_mr must not be Go
 * memory (Go may move or free it); it is mmap'd or C-allocated.
 *
 * Errors. A failing call returns NULL or -1 and fills *err with the verb
 * that failed and its errno; completions carry their ibv_wc_status.
 */
#ifndef TQ_SHIM_H
#define TQ_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <infiniband/verbs.h>

#include "tqverbs.h"

#define TQ_SHIM_MAX_CHAIN 256 /* work requests per tq_shim_post call */
#define TQ_SHIM_MAX_SGE 1024 /* SGEs per tq_shim_post call, its WRs together */
#define TQ_SHIM_NAME_LEN 64
/* RDMA READs in flight per queue pair, each way, at most: the device's
 * limits (max_qp_init_rd_atom, max_qp_rd_atom) when they are lower. What a
 * connection uses is negotiated with the peer in Go (the lower of the
 * initiator's and the responder's) and passed to qp_rtr and qp_rts. */
#define TQ_SHIM_RD_ATOM 16

struct tq_err {
	char verb[32];
	int errnum;
};

struct tq_dev {
	const struct tq_verbs *v;
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	uint8_t port;
	uint8_t gid_index;	    /* the port's GID this side's queue pairs use */
	uint8_t max_rd_atomic;	    /* TQ_SHIM_RD_ATOM or max_qp_init_rd_atom, if lower */
	uint8_t max_dest_rd_atomic; /* TQ_SHIM_RD_ATOM or max_qp_rd_atom, if lower */
	int emulated;
	char name[TQ_SHIM_NAME_LEN];
};

struct tq_devinfo {
	char name[TQ_SHIM_NAME_LEN];
	int emulated;
};

struct tq_port_info {
	uint16_t lid;
	uint8_t gid[16]; /* at the device's gid_index */
	int state;	/* enum ibv_port_state */
	int active_mtu; /* enum ibv_mtu */
	int link_layer;
	uint32_t max_qp_wr;
	uint32_t max_sge;
	int max_cqe;
};

/* One work request of a chain; its SGEs are sges[first_sge .. +num_sge). */
struct tq_wr {
	uint64_t wr_id;
	uint64_t remote_addr;
	uint32_t rkey;
	uint32_t opcode; /* IBV_WR_RDMA_READ or IBV_WR_RDMA_WRITE */
	uint32_t signaled;
	uint32_t first_sge;
	uint32_t num_sge;
};

struct tq_sge {
	uint64_t addr;
	uint32_t length;
	uint32_t lkey;
};

struct tq_wc {
	uint64_t wr_id;
	uint32_t status; /* enum ibv_wc_status */
	uint32_t opcode;
	uint32_t byte_len;
	uint32_t qp_num;
	uint32_t vendor_err;
};

int tq_shim_devices(struct tq_devinfo *out, int max, struct tq_err *err);
struct tq_dev *tq_shim_open(const char *name, uint8_t port, uint8_t gid_index, struct tq_err *err);
int tq_shim_close(struct tq_dev *d, struct tq_err *err);
int tq_shim_query_port(struct tq_dev *d, struct tq_port_info *out, struct tq_err *err);

struct ibv_mr *tq_shim_reg_mr(struct tq_dev *d, void *addr, size_t len, int access, struct tq_err *err);
struct ibv_mr *tq_shim_reg_dmabuf_mr(struct tq_dev *d, int fd, uint64_t offset, size_t len, uint64_t iova,
				     int access, struct tq_err *err);
int tq_shim_dereg_mr(struct tq_dev *d, struct ibv_mr *mr, struct tq_err *err);

struct ibv_cq *tq_shim_create_cq(struct tq_dev *d, int cqe, struct tq_err *err);
int tq_shim_destroy_cq(struct tq_dev *d, struct ibv_cq *cq, struct tq_err *err);

struct ibv_qp *tq_shim_create_qp(struct tq_dev *d, struct ibv_cq *cq, uint32_t max_wr, uint32_t max_sge,
				 struct tq_err *err);
int tq_shim_qp_init(struct tq_dev *d, struct ibv_qp *qp, int access, struct tq_err *err);
int tq_shim_qp_rtr(struct tq_dev *d, struct ibv_qp *qp, uint32_t dest_qpn, uint32_t rq_psn, uint16_t dlid,
		   const uint8_t *dgid, int mtu, uint8_t max_dest_rd_atomic, struct tq_err *err);
int tq_shim_qp_rts(struct tq_dev *d, struct ibv_qp *qp, uint32_t sq_psn, uint8_t timeout, uint8_t retry_cnt,
		   uint8_t max_rd_atomic, struct tq_err *err);
int tq_shim_qp_error(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err);
int tq_shim_qp_state(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err);
/* The QP's max_rd_atomic and max_dest_rd_atomic, or -1 with *err. */
int tq_shim_qp_rd_atomic(struct tq_dev *d, struct ibv_qp *qp, uint8_t *max_rd_atomic, uint8_t *max_dest_rd_atomic,
			 struct tq_err *err);
/* The QP's local ACK timeout and retry count, or -1 with *err. */
int tq_shim_qp_timeout(struct tq_dev *d, struct ibv_qp *qp, uint8_t *timeout, uint8_t *retry_cnt,
		       struct tq_err *err);
int tq_shim_destroy_qp(struct tq_dev *d, struct ibv_qp *qp, struct tq_err *err);

/*
 * tq_shim_post posts n work requests as one chain with ibv_post_send. On
 * failure it returns -1, fills *err, and sets *bad to the index of the
 * first WR not posted (those before it were). A chain it refuses before
 * ibv_post_send (more than TQ_SHIM_MAX_CHAIN WRs or TQ_SHIM_MAX_SGE SGEs,
 * a WR naming SGEs past nsges, an opcode other than IBV_WR_RDMA_READ or
 * IBV_WR_RDMA_WRITE) is not posted at all: *bad is 0.
 */
int tq_shim_post(struct ibv_qp *qp, const struct tq_wr *wrs, int n, const struct tq_sge *sges, int nsges,
		 int *bad, struct tq_err *err);

/* tq_shim_poll polls up to n completions; returns how many, or -1. */
int tq_shim_poll(struct ibv_cq *cq, struct tq_wc *out, int n, struct tq_err *err);

const char *tq_shim_wc_status_str(int status);

#endif
