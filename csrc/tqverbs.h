/*
 * tqverbs.h — the verbs TQ's shim calls, as a table of function pointers.
 *
 * The fast verbs (ibv_post_send, ibv_poll_cq, ibv_post_recv,
 * ibv_req_notify_cq) are inline in <infiniband/verbs.h>: they jump through
 * the ops table of the ibv_context that owns the QP or CQ, so whoever made
 * the context (a hardware provider inside libibverbs, or the emulated
 * device of emu.c) serves them. The other verbs are library functions; the
 * shim calls them through a struct tq_verbs, which is either libibverbs
 * itself (loaded with dlopen, see shim.c) or the emulated device's
 * (tq_emu_verbs below). The shim holds no policy: Go decides everything.
 */
#ifndef TQ_VERBS_H
#define TQ_VERBS_H

#include <stddef.h>
#include <stdint.h>
#include <infiniband/verbs.h>

struct tq_verbs {
	const char *name; /* "ibverbs" or "emulated" */
	struct ibv_device **(*get_device_list)(int *num_devices);
	void (*free_device_list)(struct ibv_device **list);
	const char *(*get_device_name)(struct ibv_device *device);
	struct ibv_context *(*open_device)(struct ibv_device *device);
	int (*close_device)(struct ibv_context *context);
	int (*query_device)(struct ibv_context *context, struct ibv_device_attr *attr);
	int (*query_port)(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *attr);
	int (*query_gid)(struct ibv_context *context, uint8_t port_num, int index, union ibv_gid *gid);
	struct ibv_pd *(*alloc_pd)(struct ibv_context *context);
	int (*dealloc_pd)(struct ibv_pd *pd);
	struct ibv_mr *(*reg_mr)(struct ibv_pd *pd, void *addr, size_t length, int access);
	/* NULL when the library predates it (rdma-core < 34). */
	struct ibv_mr *(*reg_dmabuf_mr)(struct ibv_pd *pd, uint64_t offset, size_t length,
					uint64_t iova, int fd, int access);
	int (*dereg_mr)(struct ibv_mr *mr);
	struct ibv_cq *(*create_cq)(struct ibv_context *context, int cqe, void *cq_context,
				    struct ibv_comp_channel *channel, int comp_vector);
	int (*destroy_cq)(struct ibv_cq *cq);
	struct ibv_qp *(*create_qp)(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
	int (*modify_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask);
	int (*query_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask,
			struct ibv_qp_init_attr *init_attr);
	int (*destroy_qp)(struct ibv_qp *qp);
};

/*
 * The emulated device (emu.c): devices named "emu0".."emu3", each with one
 * port. See emu.c for what it emulates and how.
 */
const struct tq_verbs *tq_emu_verbs(void);

/* Fault injection on an emulated context (returns 0, or -1 with errno
 * EINVAL for a context that is not emulated or a bad kind). */
enum tq_emu_fault {
	TQ_EMU_FAULT_NONE = 0,
	/* The next `count` calls of ibv_post_send fail with `err` (an errno,
	 * e.g. ENOMEM) at the WR with index `after` in their chain (0: the
	 * first; past the chain's end: the last), *bad_wr pointing at it;
	 * the WRs before it are posted. */
	TQ_EMU_FAULT_POST = 1,
	/* The next `count` work requests posted complete with status `err`
	 * (an enum ibv_wc_status, e.g. IBV_WC_GENERAL_ERR) without moving
	 * data; the QP goes to the error state as hardware does. */
	TQ_EMU_FAULT_COMPLETION = 2,
	/* Every CQ of the context behaves as if full: the next completion
	 * overruns it (see emu.c); `count`, `after` and `err` unused. */
	TQ_EMU_FAULT_CQ_OVERRUN = 3,
	/* The next `count` memory registrations (ibv_reg_mr,
	 * ibv_reg_dmabuf_mr) fail with errno `err` (e.g. ENOMEM, as past
	 * RLIMIT_MEMLOCK); `after` unused. */
	TQ_EMU_FAULT_REG_MR = 4,
};
int tq_emu_inject(struct ibv_context *context, int kind, int after, int count, int err);

/* Sets the emulated device name's max_qp_rd_atom (RDMA READs a QP serves
 * at once) and max_qp_init_rd_atom (READs a QP may have in flight) for the
 * contexts opened from now on in this process; 0: the default, 16. Returns
 * 0, or -1 with errno EINVAL for an unknown name or a value over 255. */
int tq_emu_set_rd_atom(const char *name, int rd_atom, int init_rd_atom);

/* Live objects of all emulated contexts of this process, for leak tests. */
struct tq_emu_counts {
	int contexts, pds, mrs, cqs, qps;
	int remote_maps; /* mappings of other processes' memory held */
};
void tq_emu_counts(struct tq_emu_counts *out);

#endif
