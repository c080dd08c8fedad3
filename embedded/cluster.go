package embedded

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// Config configures an in-process cluster. Its state lives in memory:
// Controller.Dir must be empty.
type Config struct {
	Controller controller.Config
	Storage    storage.Config
	Units      int // number of storage units; default 2
	Client     client.Config
}

// DefaultConfig returns two storage units with the storage package's
// default capacity, a sequential sampler and local-first placement.
func DefaultConfig() Config {
	return Config{
		Controller: controller.DefaultConfig(),
		Storage:    storage.DefaultConfig(),
		Units:      2,
		Client:     client.DefaultConfig(),
	}
}

// Cluster is a controller, storage units and a client in one process:
// TQ with nothing else to run.
type Cluster struct {
	Controller *controller.Controller
	Units      []*storage.Unit
	Client     *client.Client

	closed atomic.Bool // set by Close: Client's meta calls fail
}

// New starts an in-process cluster. Close it when done.
func New(cfg Config) (*Cluster, error) {
	if cfg.Units == 0 {
		cfg.Units = 2
	}
	if cfg.Units < 0 {
		return nil, fmt.Errorf("%d storage units: %w", cfg.Units, engine.ErrInvalid)
	}
	if cfg.Controller.Dir != "" {
		// Its units' bytes die with the process: a durable controller
		// would remember only cells that are lost (and this client does
		// not wait for the log).
		return nil, fmt.Errorf("an embedded cluster keeps its state in memory (controller Dir %q; run tq serve for a durable one): %w", cfg.Controller.Dir, engine.ErrInvalid)
	}
	ctrl, err := controller.New(cfg.Controller)
	if err != nil {
		return nil, err
	}
	e := &Cluster{Controller: ctrl}
	var dus []client.DataUnit
	for range cfg.Units {
		u, err := storage.NewUnit(0, cfg.Storage)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("start storage unit: %w", err)
		}
		e.Units = append(e.Units, u)
		// The controller hands out the ids, as it does to units that
		// register over the network.
		id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: client.HostID(), Name: "embedded", Capacity: cfg.Storage.Capacity}, true)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("register storage unit: %w", err)
		}
		u.SetID(id)
		dus = append(dus, Unit(u))
	}
	meta := Meta(ctrl, e.Units...).(localMeta)
	meta.closed = &e.closed
	if e.Client, err = client.New(meta, dus, cfg.Client); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Close stops the units and the controller; a fetch waiting for rows
// returns an error wrapping [engine.ErrClosed]. Later calls through
// Client fail with such an error: the controller's say the embedded
// cluster was closed (a give-back of fetched rows does nothing), a read
// or write names the unit. Views of the units' bytes (Client.GetView)
// must not be touched after Close (see [storage.Unit.Close]). Close is
// idempotent.
func (e *Cluster) Close() error {
	e.closed.Store(true)
	var errs []error
	for _, u := range e.Units {
		errs = append(errs, u.Close())
	}
	if e.Controller != nil {
		errs = append(errs, e.Controller.Close())
	}
	return errors.Join(errs...)
}
