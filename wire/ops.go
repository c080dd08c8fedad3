package wire

import "fmt"

// Operations. Numbers are part of the protocol (wire/spec.md) and never
// reused. Requests and their replies carry the same op.
const (
	// Every connection.
	OpHello  Op = 1 // Hello → Hello; must be the first request
	OpPing   Op = 2 // Ping → Ping
	OpCancel Op = 3 // Cancel → no reply: cancel a request in flight on this connection

	// Client → controller (control plane): 16–47.
	OpInsert            Op = 16
	OpFetch             Op = 17
	OpForceFetch        Op = 18
	OpRowsMeta          Op = 19
	OpCommit            Op = 20
	OpResolveKeys       Op = 21
	OpKeysOf            Op = 22
	OpSetTags           Op = 23
	OpListKeys          Op = 24
	OpProductionStatus  Op = 25
	OpConsumptionStatus Op = 26
	OpResetConsumption  Op = 27
	OpClearRows         Op = 28
	OpClearKeys         Op = 29
	OpClearPartition    Op = 30
	OpPartitions        Op = 31
	OpStats             Op = 32
	OpFields            Op = 33
	OpUnits             Op = 34
	OpSaveCheckpoint    Op = 35
	OpLoadCheckpoint    Op = 36
	OpCommitKeys        Op = 37
	OpUnconsume         Op = 38
	OpClusterInfo       Op = 39
	OpCheckpoints       Op = 40
	OpDeleteTags        Op = 41
	OpCompareAndSetTag  Op = 42
	OpKeyChanges        Op = 43 // may wait: a long poll for keys changed after a cursor
	OpKVPut             Op = 44 // a KV put with its bytes, to a controller sharing its process with units
	OpKVGet             Op = 45 // a KV get answered with the bytes by such a controller
	OpMarkDone          Op = 46 // a producer will add no more rows to a partition
	OpKVSet             Op = 47 // KV_PUT of one opaque value of one key

	// Storage unit → controller: 48–63.
	OpRegister  Op = 48
	OpHeartbeat Op = 49
	OpUnitSync  Op = 50 // a unit's long poll for cells to free
	OpReconcile Op = 51

	// Cluster administration → controller: moving cells off a unit.
	OpDrainUnit Op = 52 // mark a unit draining (no new placements), or back in service
	OpUnitCells Op = 53 // a page of the cells located on a unit
	OpMoveCells Op = 54 // compare-and-set of cells' locations
	OpMoved     Op = 55 // where moved cells went

	// Client → controller, past 47: small values.
	OpKVGetValue  Op = 56 // KV_GET of one field of one key
	OpAcknowledge Op = 57 // the caller of a held fetch keeps its rows
	OpStatsPage   Op = 58 // a page of every partition's stats

	// Client → storage unit (data plane): 64–95.
	OpWrite     Op = 64
	OpRead      Op = 65
	OpFree      Op = 66
	OpUnitStats Op = 67

	// Client → storage unit on the same host (shared memory, unix sockets
	// only for SHM_SEGMENTS). Reservations and leases belong to the
	// connection that made them: when it ends, the unit aborts and
	// releases whatever it still holds — at once after SHM_GOODBYE or
	// once the client process is gone, else after a quarantine.
	OpShmSegments   Op = 68
	OpReserve       Op = 69
	OpReserveCommit Op = 70 // COMMIT of a reservation (op 20 is the controller's COMMIT)
	OpReserveAbort  Op = 71
	OpAcquire       Op = 72
	OpRelease       Op = 73
	OpShmGoodbye    Op = 76 // the client will touch none of the connection's holds again

	// Client → storage unit with an RDMA device: queue pairs and
	// registered segments. RESERVE, RESERVE_COMMIT, RESERVE_ABORT,
	// ACQUIRE and RELEASE then carry the control of RDMA transfers, on any
	// connection.
	OpRdmaConnect  Op = 74
	OpRdmaSegments Op = 75
)

var opNames = map[Op]string{
	OpHello: "HELLO", OpPing: "PING", OpCancel: "CANCEL",
	OpInsert: "INSERT", OpFetch: "FETCH", OpForceFetch: "FORCE_FETCH", OpRowsMeta: "ROWS_META",
	OpCommit: "COMMIT", OpResolveKeys: "RESOLVE_KEYS", OpKeysOf: "KEYS_OF", OpSetTags: "SET_TAGS",
	OpListKeys: "LIST_KEYS", OpProductionStatus: "PRODUCTION_STATUS", OpConsumptionStatus: "CONSUMPTION_STATUS",
	OpResetConsumption: "RESET_CONSUMPTION", OpClearRows: "CLEAR_ROWS", OpClearKeys: "CLEAR_KEYS",
	OpClearPartition: "CLEAR_PARTITION", OpPartitions: "PARTITIONS", OpStats: "STATS", OpFields: "FIELDS",
	OpUnits: "UNITS", OpSaveCheckpoint: "SAVE_CHECKPOINT", OpLoadCheckpoint: "LOAD_CHECKPOINT",
	OpCommitKeys: "COMMIT_KEYS", OpUnconsume: "UNCONSUME", OpClusterInfo: "CLUSTER_INFO", OpCheckpoints: "CHECKPOINTS",
	OpDeleteTags: "DELETE_TAGS", OpCompareAndSetTag: "COMPARE_AND_SET_TAG", OpKeyChanges: "KEY_CHANGES",
	OpKVPut: "KV_PUT", OpKVGet: "KV_GET", OpMarkDone: "MARK_DONE", OpKVSet: "KV_SET", OpKVGetValue: "KV_GET_VALUE",
	OpAcknowledge: "ACKNOWLEDGE", OpStatsPage: "STATS_PAGE",
	OpRegister: "REGISTER", OpHeartbeat: "HEARTBEAT", OpUnitSync: "UNIT_SYNC", OpReconcile: "RECONCILE",
	OpDrainUnit: "DRAIN_UNIT", OpUnitCells: "UNIT_CELLS", OpMoveCells: "MOVE_CELLS", OpMoved: "MOVED",
	OpWrite: "WRITE", OpRead: "READ", OpFree: "FREE", OpUnitStats: "UNIT_STATS",
	OpShmSegments: "SHM_SEGMENTS", OpReserve: "RESERVE", OpReserveCommit: "RESERVE_COMMIT",
	OpReserveAbort: "RESERVE_ABORT", OpAcquire: "ACQUIRE", OpRelease: "RELEASE", OpShmGoodbye: "SHM_GOODBYE",
	OpRdmaConnect: "RDMA_CONNECT", OpRdmaSegments: "RDMA_SEGMENTS",
}

func (o Op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("OP_%d", uint16(o))
}
