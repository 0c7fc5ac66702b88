package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// progressJob publishes, as the processor would, QUEUED, SCHEDULED, RUNNING
// at 30 and 70, then COMPLETED.
func progressJob(t *testing.T, m *mediator, id string) {
	t.Helper()
	for i := range progressSteps {
		progressStep(t, m, id, i)
	}
}

// progressSteps are the states progressJob publishes, in order.
var progressSteps = []struct {
	st jobsv1.JobStatus
	p  int32
}{{jobsv1.JobStatus_JOB_STATUS_QUEUED, 0}, {jobsv1.JobStatus_JOB_STATUS_SCHEDULED, 0},
	{jobsv1.JobStatus_JOB_STATUS_RUNNING, 30}, {jobsv1.JobStatus_JOB_STATUS_RUNNING, 70}, {jobsv1.JobStatus_JOB_STATUS_COMPLETED, 100}}

// progressStep publishes step i of progressSteps and waits until the job
// record shows it.
func progressStep(t *testing.T, m *mediator, id string, i int) {
	t.Helper()
	s := progressSteps[i]
	ev := &eventsv1.JobStatusChanged{JobId: id, Status: s.st, Progress: s.p, Time: timestamppb.Now(),
		Execution: &jobsv1.Execution{Attempt: 1, Service: "medius-worker", Status: s.st, Progress: s.p}}
	if err := bus.Publish(context.Background(), m.env.JS, bus.SubjectJobStatus(id), fmt.Sprintf("w-%s-%d-%d", id, s.st, s.p), ev); err != nil {
		t.Fatal(err)
	}
	// The processor reports over time; events published at once may
	// be applied in any order (the consumer is concurrent), and a late
	// RUNNING after COMPLETED is rightly dropped.
	testsupport.Eventually(t, 10*time.Second, "status applied", func() bool {
		var j struct {
			Status   string
			Progress int32
		}
		code, _ := m.do("GET", "/v1/jobs/"+id, apiKey, "", &j)
		return code == 200 && j.Status == s.st.String() && j.Progress == s.p
	})
}

const wantWatch = "NEW 0,QUEUED 0,SCHEDULED 0,RUNNING 30,RUNNING 70,COMPLETED 100"

func TestWatchSSE(t *testing.T) {
	m := startMediator(t, nil)
	var job map[string]any
	if code, b := m.do("POST", "/v1/jobs", apiKey, jobBody, &job); code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	id := job["id"].(string)

	// Another tenant's job, an unknown job: problem JSON, not a stream.
	if code, b := m.do("GET", "/v1/jobs/"+id+":watch", "", "", nil); code != 401 {
		t.Fatalf("no key: %d %s", code, b)
	}
	if code, b := m.do("GET", "/v1/jobs/0190b6f1-0000-7000-8000-000000000000:watch", apiKey, "", nil); code != 404 {
		t.Fatalf("unknown job: %d %s", code, b)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.cfg.HTTPAddr+"/v1/jobs/"+id+":watch", nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var seen []string
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "job":
			var j struct {
				Status   string `json:"status"`
				Progress int    `json:"progress"`
			}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &j); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, fmt.Sprintf("%s %d", strings.TrimPrefix(j.Status, "JOB_STATUS_"), j.Progress))
			// The next state once this one is seen: a watch follows the
			// record, whose bucket keeps its latest state only, so states
			// written faster than a watcher reads may be skipped.
			if next := len(seen) - 1; next < len(progressSteps) {
				progressStep(t, m, id, next)
			}
		case strings.HasPrefix(line, "data: ") && event == "end":
			if got := strings.Join(seen, ","); got != wantWatch {
				t.Fatalf("SSE saw %s, want %s", got, wantWatch)
			}
			return
		}
	}
	t.Fatalf("stream ended without end event (saw %v): %v", seen, sc.Err())
}

func TestWatchGRPC(t *testing.T) {
	m := startMediator(t, nil)
	var job map[string]any
	if code, b := m.do("POST", "/v1/jobs", apiKey, jobBody, &job); code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	id := job["id"].(string)
	conn, err := grpcx.Dial(m.cfg.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := jobsv1.NewJobServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Unauthenticated and unknown jobs fail the stream.
	st, err := cl.WatchJob(ctx, &jobsv1.WatchJobRequest{Id: id})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no key: %v", err)
	}
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
	st, err = cl.WatchJob(actx, &jobsv1.WatchJobRequest{Id: "0190b6f1-0000-7000-8000-000000000000"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unknown job: %v", err)
	}

	st, err = cl.WatchJob(actx, &jobsv1.WatchJobRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		j, err := st.Recv()
		if err != nil {
			if got := strings.Join(seen, ","); got != wantWatch {
				t.Fatalf("gRPC watch saw %s (then %v), want %s", got, err, wantWatch)
			}
			return
		}
		seen = append(seen, fmt.Sprintf("%s %d", strings.TrimPrefix(j.GetStatus().String(), "JOB_STATUS_"), j.GetProgress()))
		if next := len(seen) - 1; next < len(progressSteps) {
			progressStep(t, m, id, next) // once this state is seen, as in TestWatchSSE
		}
	}
}
