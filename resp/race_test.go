package resp

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestGetRacesOverwrites: GETs of a key that SETs keep replacing never
// fail (the cell a GET looked up may be freed before it takes its lease:
// it looks again).
func TestGetRacesOverwrites(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := redis.NewClient(&redis.Options{Addr: e.addr})
			defer rc.Close()
			for i := range 3000 {
				if w%2 == 0 {
					if err := rc.Set(ctx, "k", fmt.Sprint(i), 0).Err(); err != nil {
						errs <- err
						return
					}
				} else if w == 1 {
					if err := rc.Get(ctx, "k").Err(); err != nil && err != redis.Nil {
						errs <- err
						return
					}
				} else if err := rc.MGet(ctx, "k", "nope", "k").Err(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
