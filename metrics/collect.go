package metrics

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tqgo/tq/engine"
)

// The controller's and the units' figures, read at scrape time.

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descPartitions    = desc("tq_partitions", "Partitions the controller holds (those past MaxPartitionSeries have no tq_partition_ and tq_task_ series).")
	descRows          = desc("tq_partition_rows", "Active rows of a partition (written or being written).", "partition")
	descReserved      = desc("tq_partition_reserved_rows", "Pre-allocated rows of a partition not yet written.", "partition")
	descKeys          = desc("tq_partition_keys", "Keys of a partition (KV API).", "partition")
	descProduced      = desc("tq_partition_produced_rows", "Rows of a partition with at least one produced field.", "partition")
	descFields        = desc("tq_partition_fields", "Fields of a partition (those past MaxFieldSeries have no tq_partition_field_produced_rows series).", "partition")
	descFieldProduced = desc("tq_partition_field_produced_rows", "Rows of a partition in which a field is produced, for the first MaxFieldSeries (64) fields of the partition by name.", "partition", "field")
	descTasks         = desc("tq_partition_tasks", "Tasks a partition knows (those past MaxTaskSeries have no tq_task_ series).", "partition")
	descConsumed      = desc("tq_task_consumed_rows", "Rows of a partition a task has consumed, for the first MaxTaskSeries (64) tasks the partition knows by name (0 for one with nothing consumed).", "partition", "task")
	descHeld          = desc("tq_task_held_rows", "Of a task's consumed rows, those held fetches (a loader's, fetched ahead) hold, not settled yet: they may still come back (the tasks of tq_task_consumed_rows).", "partition", "task")
	descIndexes       = desc("tq_global_indexes", "Global row indexes: allocated to rows, or free for reuse.", "state")
	descUnits         = desc("tq_units", "Storage units registered with the controller, by state (alive: heartbeat within the timeout; dead: none, and the controller lists cells on it, lost; gone: none, holding no cells).", "state")
	descDraining      = desc("tq_unit_draining", "1 for a storage unit the controller reports draining (no new placements; tq unit drain), 0 for a live one that is not (a dead unit not draining has no series).", "unit")
	descBlocked       = desc("tq_fetches_blocked", "Fetches waiting for rows to be ready.")
	descCtrlConns     = desc("tq_controller_connections", "Connections the controller's wire server holds open.")
	descLogIndex      = desc("tq_journal_last_index", "Index of the last record in the controller's log.")
	descLogBytes      = desc("tq_journal_since_snapshot_bytes", "Controller log bytes written since the newest snapshot.")

	descCapacity     = desc("tq_unit_capacity_bytes", "A storage unit's capacity.", "unit")
	descUsed         = desc("tq_unit_used_bytes", "A storage unit's bytes in extents (reserved, committed, or freed but leased).", "unit")
	descMapped       = desc("tq_unit_mapped_bytes", "A storage unit's bytes of segments mapped.", "unit")
	descResBytes     = desc("tq_unit_reserved_bytes", "A storage unit's bytes in open reservations.", "unit")
	descSegments     = desc("tq_unit_segments", "A storage unit's segments.", "unit")
	descExtents      = desc("tq_unit_extents", "A storage unit's extents.", "unit")
	descReservations = desc("tq_unit_reservations", "A storage unit's open reservations.", "unit")
	descLeases       = desc("tq_unit_leases", "A storage unit's leases held by readers.", "unit")
	descQuarBytes    = desc("tq_unit_quarantined_bytes", "A storage unit's bytes in quarantine: those only the holds of same-host sessions that ended without a goodbye while their client lives keep out of reuse (their reservations, and leased extents whose cells were all freed), until it exits or the quarantine passes (counted in tq_unit_used_bytes).", "unit")
	descQuarSessions = desc("tq_unit_quarantined_sessions", "A storage unit's same-host sessions whose holds are in quarantine.", "unit")
	descUnitConns    = desc("tq_unit_connections", "Connections a storage unit's wire server holds open.", "unit")
	descDataBytes    = desc("tq_unit_data_bytes_total", "Column bytes a storage unit moved, by transport (tcp, unix: payloads; shm, rdma: extents committed or leased by a client that moves the bytes itself) and direction (write, read).", "unit", "transport", "direction")
	descDataOps      = desc("tq_unit_data_operations_total", "Column transfers a storage unit served, by transport and direction.", "unit", "transport", "direction")
)

type ctrlCollector struct{ r *Registry }

func (c *ctrlCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPartitions, descRows, descReserved, descKeys, descProduced, descFields, descFieldProduced,
		descTasks, descConsumed, descHeld, descIndexes, descUnits, descDraining, descBlocked, descCtrlConns, descLogIndex, descLogBytes} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

// MaxFieldSeries bounds the fields of one partition that get a
// tq_partition_field_produced_rows series: the first ones by name. Fields
// are named by the workload (each field of a Redis hash is one, HSET),
// up to 65535 in a partition, and a series each would put that many in
// every scrape; tq_partition_fields counts them all.
const MaxFieldSeries = 64

// MaxTaskSeries bounds the tasks of one partition that get the
// tq_task_consumed_rows and tq_task_held_rows series: the first ones by
// name, as [MaxFieldSeries] does fields. Tasks are named by the workload,
// up to 1024 in a partition, two series each; tq_partition_tasks counts
// them all.
const MaxTaskSeries = 64

// MaxPartitionSeries bounds the partitions that get series of their own
// (tq_partition_rows and the rest of the tq_partition_ and tq_task_
// families): the first ones by name, as [MaxFieldSeries] does fields.
// Partitions are named by the workload (a Redis {tag} per user, a KV put
// to a new partition each), up to the controller's MaxPartitions (65536
// by default), and with up to MaxFieldSeries fields and MaxTaskSeries
// tasks each a partition has some 200 series: every scrape would hold
// millions. tq_partitions counts them all; RESP's INFO lists as many.
const MaxPartitionSeries = 1024

// maxLabelLen bounds a label value taken from a name (a partition, a
// task, a field), in bytes. Names have no bound of their own, and a
// Prometheus with label_value_length_limit set fails a whole scrape on
// one value past it.
const maxLabelLen = 200

// nameLabel is a name as a label value, one per name. A name that is
// not valid UTF-8 (the controller's Go API takes any string; wire and
// RESP names are checked) is Go-quoted, "\xff" for the byte 0xff, since
// MustNewConstMetric panics on it, and a panic in a collector ends the
// process. A name longer than maxLabelLen bytes keeps its first bytes and
// ends in "~" and a hash of the whole name, so that two long names that
// share a prefix stay two series. So does a valid name that could be
// taken for one of those two forms (it begins with a double quote, or
// ends in "~" and 16 hex digits): two names with one label would be two
// series of one name and labels, and the registry fails the whole scrape
// on that (a client could blind the dashboards by naming a partition
// after another's label).
func nameLabel(s string) string {
	base, keep := s, true
	switch {
	case !utf8.ValidString(s):
		base = strconv.Quote(s)
	case strings.HasPrefix(s, `"`) || hashedLabel(s):
		keep = false
	}
	if keep && len(base) <= maxLabelLen {
		return base
	}
	h := fnv.New64a()
	h.Write([]byte(s)) // the name's own bytes: base may be another name's
	suffix := fmt.Sprintf("~%016x", h.Sum64())
	cut := min(len(base), maxLabelLen-len(suffix))
	for cut > 0 && cut < len(base) && !utf8.RuneStart(base[cut]) {
		cut--
	}
	return base[:cut] + suffix
}

// hashedLabel reports whether s ends as nameLabel's hashed form does: "~"
// and 16 lowercase hex digits.
func hashedLabel(s string) bool {
	const n = 1 + 16
	if len(s) < n || s[len(s)-n] != '~' {
		return false
	}
	for _, c := range []byte(s[len(s)-n+1:]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// labelSet keeps the label values one scrape gave a family: two names
// with one label (two long names whose hashes collide) must not fail the
// scrape, so the second is left out.
type labelSet map[string]struct{}

// add reports whether v is new, adding it.
func (ls labelSet) add(v string) bool {
	if _, ok := ls[v]; ok {
		return false
	}
	ls[v] = struct{}{}
	return true
}

func (c *ctrlCollector) Collect(ch chan<- prometheus.Metric) {
	ctrls, _ := c.r.sources()
	for _, s := range ctrls {
		parts := s.c.Partitions()
		gauge(ch, descPartitions, float64(len(parts)))
		// From the controller, not a partition's stats: with no partition
		// left the indexes they released still wait for reuse.
		allocated, free := s.c.Indexes()
		gauge(ch, descIndexes, float64(allocated), "allocated")
		gauge(ch, descIndexes, float64(free), "free")
		seenParts := labelSet{}
		for _, id := range parts { // by name
			if len(seenParts) == MaxPartitionSeries {
				break
			}
			st, err := s.c.Stats(id)
			if err != nil {
				continue // cleared since
			}
			p := nameLabel(id)
			if !seenParts.add(p) {
				continue
			}
			gauge(ch, descRows, float64(st.Rows), p)
			gauge(ch, descReserved, float64(st.Reserved), p)
			gauge(ch, descKeys, float64(st.Keys), p)
			gauge(ch, descProduced, float64(st.Produced), p)
			gauge(ch, descFields, float64(len(st.Fields)), p)
			seen := labelSet{}
			for _, f := range st.Fields[:min(len(st.Fields), MaxFieldSeries)] { // by name
				if name := nameLabel(f.Name); seen.add(name) {
					gauge(ch, descFieldProduced, float64(f.Produced), p, name)
				}
			}
			clear(seen)
			// Every task the partition knows, those with nothing consumed
			// too (Stats leaves them out): a series that vanished at 0
			// would drop the task from panels and alerts.
			tasks, err := s.c.Tasks(id)
			if err != nil {
				continue // cleared since
			}
			gauge(ch, descTasks, float64(len(tasks)), p)
			for _, t := range tasks[:min(len(tasks), MaxTaskSeries)] { // by name
				task := nameLabel(t.Task)
				if !seen.add(task) {
					continue
				}
				gauge(ch, descConsumed, float64(t.Consumed), p, task)
				gauge(ch, descHeld, float64(t.Held), p, task)
			}
		}
		gauge(ch, descBlocked, float64(s.c.BlockedFetches()))
		ci := s.c.Info()
		if ci.Durable {
			gauge(ch, descLogIndex, float64(ci.LogIndex))
			gauge(ch, descLogBytes, float64(ci.LogBytes))
		}
		if s.srv != nil {
			// A dead unit counts as dead while the partitions list cells
			// on it (their bytes lost), else as gone: dead units stay
			// listed until the registry fills, and one rolling update
			// would keep "dead" above 0 for good.
			var held map[engine.UnitID]int
			alive, dead, gone := 0, 0, 0
			for _, u := range s.srv.Units() {
				switch {
				case u.Alive:
					alive++
				default:
					if held == nil {
						held = s.c.CellsByUnit()
					}
					if held[u.ID] > 0 {
						dead++
					} else {
						gone++
					}
				}
				// A dead unit gets no series unless it drains: ids are
				// never reused and dead units stay listed until the
				// registry fills, so each restart of a unit process
				// would leave one behind for good.
				switch {
				case u.Draining:
					gauge(ch, descDraining, 1, strconv.FormatUint(uint64(u.ID), 10))
				case u.Alive:
					gauge(ch, descDraining, 0, strconv.FormatUint(uint64(u.ID), 10))
				}
			}
			gauge(ch, descUnits, float64(alive), "alive")
			gauge(ch, descUnits, float64(dead), "dead")
			gauge(ch, descUnits, float64(gone), "gone")
			gauge(ch, descCtrlConns, float64(s.srv.Conns()))
		}
	}
}

type unitCollector struct{ r *Registry }

func (c *unitCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCapacity, descUsed, descMapped, descResBytes, descSegments, descExtents,
		descReservations, descLeases, descQuarBytes, descQuarSessions, descUnitConns, descDataBytes, descDataOps} {
		ch <- d
	}
}

func (c *unitCollector) Collect(ch chan<- prometheus.Metric) {
	_, units := c.r.sources()
	for _, s := range units {
		id := strconv.FormatUint(uint64(s.u.ID()), 10)
		st := s.u.Stats()
		gauge(ch, descCapacity, float64(st.Capacity), id)
		gauge(ch, descUsed, float64(st.Used), id)
		gauge(ch, descMapped, float64(st.Mapped), id)
		gauge(ch, descResBytes, float64(st.Reserved), id)
		gauge(ch, descSegments, float64(st.Segments), id)
		gauge(ch, descExtents, float64(st.Extents), id)
		gauge(ch, descReservations, float64(st.OpenReservations), id)
		gauge(ch, descLeases, float64(st.Leases), id)
		gauge(ch, descQuarBytes, float64(st.Quarantined), id)
		gauge(ch, descQuarSessions, float64(st.QuarantinedSessions), id)
		if s.srv == nil {
			continue
		}
		gauge(ch, descUnitConns, float64(s.srv.Conns()), id)
		for _, d := range s.srv.DataBytes() {
			counter(ch, descDataBytes, float64(d.Written), id, d.Transport, "write")
			counter(ch, descDataBytes, float64(d.Read), id, d.Transport, "read")
			counter(ch, descDataOps, float64(d.Writes), id, d.Transport, "write")
			counter(ch, descDataOps, float64(d.Reads), id, d.Transport, "read")
		}
	}
}
