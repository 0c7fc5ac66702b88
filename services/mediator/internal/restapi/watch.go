package restapi

import (
	"context"
	"fmt"
	"net/http"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/protobuf/encoding/protojson"
)

// Watcher follows a job (jobapi.Server).
type Watcher interface {
	Watch(ctx context.Context, id string, send func(*jobsv1.Job) error) error
}

// sseKeepAlive is how often an idle stream gets a comment line, so proxies
// and load balancers do not cut it.
const sseKeepAlive = 15 * time.Second

// watch serves GET /v1/jobs/{id}:watch as Server-Sent Events: an event
// "job" with the job's JSON (as GET /v1/jobs/{id} shows it) now and after
// every change, then an event "end" once the job is terminal. Errors before
// the first event are problem JSON; later ones end the stream with an event
// "error" carrying the problem.
func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	flusher, ok := w.(http.Flusher)
	if !ok {
		problem.WriteError(ctx, w, fmt.Errorf("response writer cannot stream"))
		return
	}
	rc := http.NewResponseController(w)
	started := false
	ticker := time.NewTicker(sseKeepAlive)
	defer ticker.Stop()
	events := make(chan *jobsv1.Job)
	errc := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		errc <- a.Watch.Watch(wctx, r.PathValue("id"), func(j *jobsv1.Job) error {
			select {
			case events <- j:
				return nil
			case <-wctx.Done():
				return wctx.Err()
			}
		})
	}()
	marshal := protojson.MarshalOptions{EmitDefaultValues: true}
	for {
		select {
		case j := <-events:
			if !started {
				w.Header().Set("Content-Type", "text/event-stream")
				w.Header().Set("Cache-Control", "no-cache")
				w.Header().Set("X-Accel-Buffering", "no")
				w.WriteHeader(http.StatusOK)
				started = true
			}
			b, err := marshal.Marshal(j)
			if err != nil {
				return
			}
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := fmt.Fprintf(w, "event: job\nid: %d\ndata: %s\n\n", j.GetUpdateTime().AsTime().UnixNano(), b); err != nil {
				return
			}
			flusher.Flush()
		case err := <-errc:
			if !started {
				if err == nil {
					return
				}
				problem.WriteError(ctx, w, err)
				return
			}
			if err != nil && ctx.Err() == nil {
				fmt.Fprintf(w, "event: error\ndata: %s\n\n", problem.JSON(problem.FromError(ctx, err)))
			} else {
				fmt.Fprint(w, "event: end\ndata: {}\n\n")
			}
			flusher.Flush()
			return
		case <-ticker.C:
			if started {
				_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
				if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
					return
				}
				flusher.Flush()
			}
		}
	}
}
