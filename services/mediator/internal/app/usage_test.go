package app

import (
	"context"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestUsageAndQuotaRelease: a completed job frees its quota slot and is
// billed once, even when its completion is delivered twice.
func TestUsageAndQuotaRelease(t *testing.T) {
	m := startMediator(t, func(c *Config) { c.AdminAPIKey = adminKey })
	if code, b := m.do("PUT", "/v1/tenants/default/quota", adminKey, `{"maxConcurrentJobs":1}`, nil); code != 200 {
		t.Fatalf("quota: %d %s", code, b)
	}
	var job map[string]any
	if code, b := m.do("POST", "/v1/jobs", apiKey, jobBody, &job); code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	id := job["id"].(string)
	if code, _ := m.do("POST", "/v1/jobs", apiKey, jobBody, nil); code != 429 {
		t.Fatalf("second job at quota 1: %d", code)
	}
	for i, st := range []jobsv1.JobStatus{jobsv1.JobStatus_JOB_STATUS_RUNNING, jobsv1.JobStatus_JOB_STATUS_COMPLETED, jobsv1.JobStatus_JOB_STATUS_COMPLETED} {
		ev := &eventsv1.JobStatusChanged{JobId: id, Status: st, VerifiedQuantity: 12.5, Time: timestamppb.Now(),
			Execution: &jobsv1.Execution{Attempt: 1, Service: "medius-worker", Status: st}}
		// The repeated completion has another msg id: a redelivery the
		// de-duplication window would not catch.
		if err := bus.Publish(context.Background(), m.env.JS, bus.SubjectJobStatus(id), id+"-"+st.String()+string(rune('a'+i)), ev); err != nil {
			t.Fatal(err)
		}
	}
	testsupport.Eventually(t, 15*time.Second, "slot freed", func() bool {
		code, _ := m.do("POST", "/v1/jobs", apiKey, jobBody, nil)
		return code == 200
	})
	var usage struct {
		Jobs     int64
		Quantity float64
		Groups   []struct {
			Key      string
			Jobs     int64
			Quantity float64
		}
	}
	if code, b := m.do("GET", "/v1/usage?group_by=profile&from=2000-01-01", apiKey, "", &usage); code != 200 || usage.Jobs != 1 || usage.Quantity != 12.5 ||
		len(usage.Groups) != 1 || usage.Groups[0].Key != "ExtractTechnicalMetadata" {
		t.Fatalf("usage: %d %s", code, b)
	}
	if code, b := m.do("GET", "/v1/usage?group_by=week", apiKey, "", nil); code != 400 {
		t.Fatalf("bad group_by: %d %s", code, b)
	}
	if code, b := m.do("GET", "/v1/usage?from=yesterday", apiKey, "", nil); code != 400 {
		t.Fatalf("bad from: %d %s", code, b)
	}
	if code, _ := m.do("GET", "/v1/usage", adminKey, "", nil); code != 403 {
		t.Fatalf("admin usage: %d", code)
	}
}
