package processor_test

import (
	"slices"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
)

// A job's work items carry its locator roots, which its worker holds its
// locators to: as the job was created with them, an empty set kept
// distinct from none (a job from an older mediator, whose worker applies
// its own roots only); and a restart's roots, the tenant's when it was
// asked for, replace them for the restarted run, unless the restart came
// from a mediator that sends none.
func TestWorkItemsCarryLocatorRoots(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	acme := []string{"file:///srv/media/acme/"}
	for _, tc := range []struct {
		id    string
		roots *jobsv1.LocatorRoots
	}{
		{"job-roots", &jobsv1.LocatorRoots{Roots: acme}},
		{"job-no-roots", &jobsv1.LocatorRoots{}},
		{"job-old", nil},
	} {
		b.createJob(t, &jobsv1.Job{Id: tc.id, Status: jobsv1.JobStatus_JOB_STATUS_NEW, LocatorRoots: tc.roots})
		w := b.waitWorkItem(t, "probe", "work-"+tc.id+"-1")
		switch lr := w.GetLocatorRoots(); {
		case tc.roots == nil && lr != nil:
			t.Fatalf("%s: work item carries roots %v, want none", tc.id, lr)
		case tc.roots != nil && (lr == nil || !slices.Equal(lr.GetRoots(), tc.roots.GetRoots())):
			t.Fatalf("%s: work item carries roots %v, want %v", tc.id, lr, tc.roots)
		}
	}

	now := []string{"file:///srv/media/acme/", "s3://shared/acme/"}
	b.exec(t, update("job-roots", 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitFailed(t, "job-roots")
	b.publish(t, bus.SubjectJobRestart, "restart-job-roots-1-rev1",
		&eventsv1.JobRestartRequested{JobId: "job-roots", Tenant: "t1", Attempts: 1, LocatorRoots: &jobsv1.LocatorRoots{Roots: now}})
	if w := b.waitWorkItem(t, "probe", "work-job-roots-2"); !slices.Equal(w.GetLocatorRoots().GetRoots(), now) {
		t.Fatalf("restarted run's item carries roots %v, want the restart's %q", w.GetLocatorRoots(), now)
	}
	// A restart from an older mediator keeps the job's roots.
	b.exec(t, update("job-roots", 2, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitFailed(t, "job-roots")
	b.publish(t, bus.SubjectJobRestart, "restart-job-roots-2-rev2", &eventsv1.JobRestartRequested{JobId: "job-roots", Tenant: "t1", Attempts: 2})
	b.settled(t, processor.DurableRestart)
	if w := b.waitWorkItem(t, "probe", "work-job-roots-3"); !slices.Equal(w.GetLocatorRoots().GetRoots(), now) {
		t.Fatalf("item of a restart without roots carries %v, want the job's %q", w.GetLocatorRoots(), now)
	}
}

// waitFailed waits for the record of job id to be FAILED.
func (b *bundle) waitFailed(t *testing.T, id string) {
	t.Helper()
	waitFor(t, id+" FAILED", func() bool { return b.record(t, id).GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED })
}
