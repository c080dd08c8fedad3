package main

import (
	"time"

	"github.com/tqgo/tq/engine"
)

// watchUnits logs each storage unit the controller registers, loses (no
// heartbeat within the timeout) or gets back, once per change, until
// the server closes. It checks every heartbeat interval, but no more
// often than every 100 ms: it only logs.
// A unit known from the durable state is not reported registered before
// it is heard from (see live); once its timeout passes unheard, it is
// reported never heard from.
func (s *server) watchUnits() {
	done := make(chan struct{})
	exited := make(chan struct{})
	s.closers = append(s.closers, func() error {
		close(done)
		<-exited
		return nil
	})
	go func() {
		defer close(exited)
		t := time.NewTicker(max(s.cfg.HeartbeatInterval, 100*time.Millisecond))
		defer t.Stop()
		alive := map[engine.UnitID]bool{}
		for {
			for _, u := range s.ctrlSrv.Units() {
				if u.Alive && !s.live(u) {
					continue // not heard from yet, within its timeout
				}
				was, known := alive[u.ID]
				switch {
				case !known && u.Alive:
					s.log.Info("storage unit registered", "unit", u.ID, "name", u.Name, "addrs", u.Addrs)
				case !known:
					s.log.Warn("storage unit not heard from since the controller started; its cells read as lost", "unit", u.ID, "name", u.Name)
				case known && was && !u.Alive:
					s.log.Warn("storage unit lost: no heartbeat; its cells read as lost", "unit", u.ID, "name", u.Name,
						"last_heartbeat", u.LastHeartbeat.Format(time.RFC3339Nano))
				case known && !was && u.Alive:
					s.log.Info("storage unit back", "unit", u.ID, "name", u.Name)
				}
				alive[u.ID] = u.Alive
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
}

// noteRecovered notes the units the controller knows from its durable
// state, with their last heartbeat: the controller's start. Call it
// before the controller serves.
func (s *server) noteRecovered() {
	s.recovered = map[engine.UnitID]time.Time{}
	for _, u := range s.ctrlSrv.Units() {
		s.recovered[u.ID] = u.LastHeartbeat
	}
}

// live reports whether unit u is alive by a registration or a heartbeat
// since the controller started. The units a restarted controller knows
// from its durable state are listed alive for one timeout though none
// has registered yet, so that they may come back (the controller's
// units.go): such a unit is live once its last heartbeat moves.
func (s *server) live(u engine.UnitInfo) bool {
	at, recovered := s.recovered[u.ID]
	return u.Alive && (!recovered || !u.LastHeartbeat.Equal(at))
}
