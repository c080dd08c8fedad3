// Package metrics exports a TQ process's figures to Prometheus: the
// controller's partitions, tasks, units and log, each storage unit's
// capacity and traffic, every wire server's requests, and the Go runtime
// and process collectors.
//
// Most figures are read when Prometheus scrapes ([controller.Controller.Stats],
// [storage.Unit.Stats], [storage.Server.DataBytes]): nothing is counted
// twice and the hot paths pay nothing for them. Only the requests are
// counted as they are answered, through a [wire.Observer] that costs a
// clock read, a histogram observation and two counter adds per request.
//
// Names follow Prometheus conventions (base units, _total for counters,
// _seconds, _bytes); labels take bounded values only: partitions, tasks,
// fields, unit ids, ops (those a peer sends without a name share the op
// "unknown"), networks, transports, error codes — never a key or a row.
// Names chosen by the workload get series up to a bound: the first
// [MaxPartitionSeries] partitions by name, and of each the first
// [MaxFieldSeries] fields and [MaxTaskSeries] tasks.
//
// Usage, as tq serve wires it:
//
//	reg := metrics.New()
//	ctrl, _ := controller.New(controller.Config{Dir: dir, OnJournalWrite: reg.OnJournalWrite})
//	srv := controller.NewServer(ctrl, controller.ServerConfig{Observer: reg.Observer(metrics.RoleController)})
//	reg.AddController(ctrl, srv)
//	us := storage.NewServer(unit, storage.ServerConfig{Observer: reg.Observer(metrics.RoleUnit)})
//	reg.AddUnit(unit, us)
//	http.Handle("/metrics", reg.Handler())
package metrics
