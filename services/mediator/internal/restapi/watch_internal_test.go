package restapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
)

// failingWatch stands in for jobapi.Server's Watch: the job once, then a
// failure whose text JSON must escape.
type failingWatch struct{}

func (failingWatch) Watch(_ context.Context, id string, send func(*jobsv1.Job) error) error {
	if err := send(&jobsv1.Job{Id: id, Status: jobsv1.JobStatus_JOB_STATUS_RUNNING}); err != nil {
		return err
	}
	return problem.Unavailable("store \"jobs\" gone \x01 — é", nil)
}

// A failure after the stream started ends it with an "error" event whose
// data is the problem JSON (RFC 7807), as GET would have answered it,
// whatever characters its detail holds.
func TestWatchErrorEventIsProblemJSON(t *testing.T) {
	a := &API{Watch: failingWatch{}}
	r := httptest.NewRequest(http.MethodGet, "/v1/jobs/j1/watch", nil)
	r.SetPathValue("id", "j1")
	w := httptest.NewRecorder()
	a.watch(w, r)
	body := w.Body.String()
	_, after, ok := strings.Cut(body, "event: error\ndata: ")
	if !ok {
		t.Fatalf("no error event in %q", body)
	}
	data, _, _ := strings.Cut(after, "\n")
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal([]byte(data), &p); err != nil {
		t.Fatalf("error event data %q is not JSON: %v", data, err)
	}
	if p.Status != http.StatusServiceUnavailable || p.Detail != "store \"jobs\" gone \x01 — é" || p.Type == "" || p.Title == "" {
		t.Fatalf("error event = %+v", p)
	}
}
