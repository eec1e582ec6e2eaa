package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
)

// Broker fans the ids of jobs changed by each committed batch out to SSE
// clients. It only sees the batches of its own Run: with several ledger
// instances behind a load balancer, a client sees the changes its instance
// applied (documented in the README).
type Broker struct {
	mu   sync.Mutex
	subs map[chan []string]struct{}
}

// NewBroker returns an empty broker.
func NewBroker() *Broker { return &Broker{subs: map[chan []string]struct{}{}} }

// Publish tells every subscriber which jobs changed. A slow subscriber
// misses the notice rather than slowing the projection down.
func (b *Broker) Publish(jobs []string) {
	if len(jobs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.subs {
		select {
		case c <- jobs:
		default:
		}
	}
}

// Subscribe returns a channel of changed job ids and its cancel function.
func (b *Broker) Subscribe() (<-chan []string, func()) {
	c := make(chan []string, 64)
	b.mu.Lock()
	b.subs[c] = struct{}{}
	b.mu.Unlock()
	return c, func() {
		b.mu.Lock()
		delete(b.subs, c)
		b.mu.Unlock()
	}
}

// handleStream serves Server-Sent Events: one "job" event carrying the job
// (with its packages) each time a batch changes it.
func handleStream(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fl, ok := w.(http.Flusher)
		if !ok {
			internalError(w, r, d.Log, errors.New("response writer cannot flush"))
			return
		}
		ch, cancel := d.Broker.Subscribe()
		defer cancel()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		_, _ = fmt.Fprint(w, ": ledger stream\nretry: 2000\n\n")
		fl.Flush()
		ping := time.NewTicker(15 * time.Second)
		defer ping.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-ping.C:
				_, _ = fmt.Fprint(w, ": ping\n\n")
				fl.Flush()
			case jobs := <-ch:
				for _, id := range jobs {
					job, err := d.Store.GetJob(r.Context(), id)
					if errors.Is(err, store.ErrNotFound) {
						continue
					}
					if err != nil {
						return // the client reconnects
					}
					b, _ := json.Marshal(job)
					if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil {
						return
					}
				}
				fl.Flush()
			}
		}
	})
}
