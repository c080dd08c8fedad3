package main

import (
	"time"

	"github.com/tqgo/tq/engine"
)

// watchUnits logs each storage unit the controller registers, loses (no
// heartbeat within the timeout) or gets back, once per change, until
// the server closes. It checks every heartbeat interval, but no more
// often than every 100 ms: it only logs.
//
// The units a restarted controller knows from its durable state are
// listed alive for one timeout, though none has registered yet (they may
// come back): called before the controller serves, it notes their last
// heartbeat, the controller's start, and counts one as heard from once
// that moves; until then it is not reported registered, and once its
// timeout passes it is reported never heard from.
func (s *server) watchUnits() {
	waiting := map[engine.UnitID]time.Time{}
	for _, u := range s.ctrlSrv.Units() {
		waiting[u.ID] = u.LastHeartbeat
	}
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
				if at, ok := waiting[u.ID]; ok {
					if u.Alive && u.LastHeartbeat.Equal(at) {
						continue // not heard from, within its timeout
					}
					delete(waiting, u.ID)
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
